"""LaMa-style random brush-stroke masks: thin, medium and thick (docs/lama.md §8).

    rng = np.random.default_rng(0)
    hole = random_mask(rng, 256, 256, "thick")      # bool (256, 256), True = hole
    save_mask_png(hole, "photo_mask.png")            # 0/255 PNG, white = hole

LaMa draws its evaluation masks with these parameters (values for 512-px images):

| kind   | strokes | max width | max length | max angle | boxes (added with probability 0.3) |
| ------ | ------- | --------- | ---------- | --------- | ---------------------------------- |
| thin   | 4-70    | 20        | 100        | 4         | none                               |
| medium | 4-10    | 100       | 200        | 4         | 1-5 boxes of 30-150 px, margin 0   |
| thick  | 1-5     | 250       | 450        | 4         | 1-4 boxes of 30-300 px, margin 10  |

A stroke starts at a uniformly random pixel and has 1-5 segments. Each segment turns to
angle = 0.01 + randint(max_angle) radians (2*pi - angle on every other stroke), has length
10 + randint(max_len) and width 5 + randint(max_width), and is drawn as a thick line with
round ends; the next segment starts where the last one ended (clipped to the image).

Sizes: lengths, widths, box sides and margins are scaled by s = sqrt(h * w) / 512 (the
geometric mean of the sides, so the covered fraction barely depends on the aspect ratio);
stroke and box counts are not scaled. A mask whose hole covers more than half the image (or
nothing) is drawn again.

Boxes follow LaMa's parameters literally: with the kind's probability, boxes are *added* to the
strokes. (LaMa's MixedMaskGenerator instead picks strokes or boxes per mask with
probabilities proportional to 1 and 0.3; the two differ only in how often a mask is boxes
alone.)

Everything is a pure function of the numpy Generator passed in: the same seed gives the
same mask on every machine.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Literal

import numpy as np

MaskKind = Literal["thin", "medium", "thick"]
KINDS: tuple[MaskKind, ...] = ("thin", "medium", "thick")
REFERENCE_SIDE = 512
MAX_HOLE_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class MaskParams:
    """One row of the table above (sizes in pixels at 512 x 512)."""

    min_strokes: int
    max_strokes: int
    max_width: int
    max_length: int
    max_angle: int
    box_probability: float = 0.0
    min_boxes: int = 0
    max_boxes: int = 0
    min_box_side: int = 0
    max_box_side: int = 0
    box_margin: int = 0


PARAMS: dict[str, MaskParams] = {
    "thin": MaskParams(4, 70, 20, 100, 4),
    "medium": MaskParams(4, 10, 100, 200, 4, 0.3, 1, 5, 30, 150, 0),
    "thick": MaskParams(1, 5, 250, 450, 4, 0.3, 1, 4, 30, 300, 10),
}


def random_mask(rng: np.random.Generator, h: int, w: int, kind: MaskKind, *, max_tries: int = 100) -> np.ndarray:
    """A random LaMa-style hole mask: bool (h, w), True = hole, 0 < hole fraction <= 0.5.

    Args:
      rng: the source of randomness (advanced by this call).
      h, w: mask size in pixels.
      kind: 'thin', 'medium' or 'thick'.
      max_tries: redraws allowed for masks covering more than half the image.
    """
    if kind not in PARAMS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if h < 1 or w < 1:
        raise ValueError(f"mask size must be positive, got {h}x{w}")
    for _ in range(max_tries):
        mask = _draw(rng, h, w, PARAMS[kind])
        if 0 < mask.mean() <= MAX_HOLE_FRACTION:
            return mask
    raise RuntimeError(f"no {kind} mask with a hole fraction in (0, {MAX_HOLE_FRACTION}] after {max_tries} tries")


def _draw(rng: np.random.Generator, h: int, w: int, p: MaskParams) -> np.ndarray:
    from PIL import Image, ImageDraw

    scale = math.sqrt(h * w) / REFERENCE_SIDE
    image = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(image)
    for stroke in range(rng.integers(p.min_strokes, p.max_strokes + 1)):
        x, y = int(rng.integers(w)), int(rng.integers(h))
        for _ in range(1 + rng.integers(5)):
            angle = 0.01 + rng.integers(p.max_angle)
            if stroke % 2 == 0:
                angle = 2 * math.pi - angle
            length = (10 + rng.integers(p.max_length)) * scale
            width = max(1, round((5 + rng.integers(p.max_width)) * scale))
            end_x = int(np.clip(x + length * math.sin(angle), 0, w))
            end_y = int(np.clip(y + length * math.cos(angle), 0, h))
            _thick_line(draw, (x, y), (end_x, end_y), width)
            x, y = end_x, end_y
    if p.box_probability and rng.random() < p.box_probability:
        margin = round(p.box_margin * scale)
        for _ in range(rng.integers(p.min_boxes, p.max_boxes + 1)):
            bw, bh = (_box_side(rng, p, scale, limit) for limit in (w - 2 * margin, h - 2 * margin))
            if bw < 1 or bh < 1:
                continue  # the image is too small for a box with this margin
            left = int(rng.integers(margin, w - margin - bw + 1))
            top = int(rng.integers(margin, h - margin - bh + 1))
            draw.rectangle((left, top, left + bw - 1, top + bh - 1), fill=255)
    return np.asarray(image) > 0


def _box_side(rng, p: MaskParams, scale: float, limit: int) -> int:
    side = round(rng.integers(p.min_box_side, p.max_box_side + 1) * scale)
    return min(max(side, 1), limit)


def _thick_line(draw, start, end, width: int) -> None:
    """A line `width` px wide with round ends (discs at both end points), as cv2.line draws."""
    draw.line((start, end), fill=255, width=width)
    r = width / 2
    for x, y in (start, end):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)


def save_mask_png(mask: np.ndarray, path: str | os.PathLike) -> None:
    """Write a mask as an 8-bit PNG: 255 where `mask` is nonzero (hole), 0 elsewhere."""
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    Image.fromarray(np.where(mask != 0, 255, 0).astype(np.uint8), "L").save(path, format="PNG")
