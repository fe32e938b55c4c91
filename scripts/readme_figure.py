#!/usr/bin/env python
"""Write the README's picture of the example: docs/example.png.

    pip install opencv-python-headless   # for the Telea panel (benchmark-only dependency)
    python scripts/readme_figure.py

Four panels of examples/dune.png, each downscaled to half size: the photo with the mask drawn
on it in red, what `jax_refine.inpaint(image, mask)` returns (the bundled model, its own
default settings), OpenCV's `cv2.inpaint(..., 3, cv2.INPAINT_TELEA)`, and the photo. Prints
the time of the inpaint call (compilation included, as the README's command pays it).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

import jax_refine

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("input and mask", "jax-refine (bundled model)", "OpenCV Telea", "photo")


def main() -> None:
    jax_refine.configure_cpu()  # XLA's fast CPU conv path, before the first JAX computation
    image = np.asarray(Image.open(ROOT / "examples" / "dune.png").convert("RGB"))
    hole = np.asarray(Image.open(ROOT / "examples" / "dune_mask.png").convert("L")) > 127
    start = time.perf_counter()
    ours = jax_refine.inpaint(image, hole)
    print(f"jax_refine.inpaint: {time.perf_counter() - start:.1f} s")
    telea = cv2.inpaint(image, hole.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
    marked = np.where(hole[..., None], np.array([230, 30, 30], np.uint8), image)
    h, w = image.shape[0] // 2, image.shape[1] // 2
    panels = [Image.fromarray(x).resize((w, h), Image.Resampling.LANCZOS) for x in (marked, ours, telea, image)]
    label_h, gap = 22, 6
    sheet = Image.new("RGB", (2 * w + gap, 2 * (h + label_h) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (panel, label) in enumerate(zip(panels, LABELS)):
        x, y = (k % 2) * (w + gap), (k // 2) * (h + label_h + gap)
        draw.text((x + 4, y + 5), label, fill="black")
        sheet.paste(panel, (x, y + label_h))
    out = ROOT / "docs" / "example.png"
    sheet.save(out, optimize=True)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
