"""Crop strategy for small holes in large images: which regions to inpaint.

`inpaint(..., crop_margin=m)` inpaints each group of nearby holes in its own crop, the hole's
bounding box grown by m pixels of context on every side, and pastes the fills back. On a 2-4K
photo with a few small holes this does a fraction of the work of the whole image; LaMa's
fill depends on the surrounding context, so m should be at least the hole's own size (the
crop then holds the hole and its surroundings up to about three times its extent).
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]  # (top, left, bottom, right), bottom/right exclusive


def hole_regions(hole: np.ndarray, margin: int, cell: int = 16) -> list[Box]:
    """Disjoint boxes covering every hole pixel of `hole` (H, W bool) with `margin` px of
    context on each side (clipped to the image), one per group of holes whose grown boxes
    overlap. Holes are grouped on a grid of cell x cell blocks (8-connected) first, so pixels
    of one stroke less than a cell apart stay together. Empty list for an empty hole."""
    if margin < 0:
        raise ValueError(f"crop margin must be >= 0, got {margin}")
    h, w = hole.shape
    ys, xs = np.nonzero(hole)
    if ys.size == 0:
        return []
    grid = np.zeros((-(-h // cell), -(-w // cell)), bool)
    grid[ys // cell, xs // cell] = True
    labels = _label_8_connected(grid)[ys // cell, xs // cell]
    n = labels.max() + 1
    top, left = np.full(n, h), np.full(n, w)
    bottom, right = np.zeros(n, int), np.zeros(n, int)
    np.minimum.at(top, labels, ys)
    np.minimum.at(left, labels, xs)
    np.maximum.at(bottom, labels, ys + 1)
    np.maximum.at(right, labels, xs + 1)
    boxes = [(max(t - margin, 0), max(l - margin, 0), min(b + margin, h), min(r + margin, w))
             for t, l, b, r in zip(top, left, bottom, right)]
    return _merge_overlapping(boxes)


def _label_8_connected(grid: np.ndarray) -> np.ndarray:
    """Component index (0, 1, ...) of every True cell of a small 2-D grid; -1 elsewhere."""
    labels = np.full(grid.shape, -1)
    count = 0
    for start in zip(*np.nonzero(grid)):
        if labels[start] >= 0:
            continue
        labels[start] = count
        stack = [start]
        while stack:
            y, x = stack.pop()
            for ny in range(max(y - 1, 0), min(y + 2, grid.shape[0])):
                for nx in range(max(x - 1, 0), min(x + 2, grid.shape[1])):
                    if grid[ny, nx] and labels[ny, nx] < 0:
                        labels[ny, nx] = count
                        stack.append((ny, nx))
        count += 1
    return labels


def _merge_overlapping(boxes: list[Box]) -> list[Box]:
    """Replace overlapping boxes by their union until all are disjoint; sorted top-left first."""
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(boxes)
