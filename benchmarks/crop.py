"""Crop strategy vs whole-image refinement on the quality study's photos (small holes).

    python benchmarks/crop.py [--size 2048] [--margin 128]

Each held-out photo (data/manifest.json) at --size px on its long side, with two elliptical
holes of 60-100 px (a fixed seed per photo), is inpainted with the bundled model by
`inpaint(method="refine")` on the whole image (defaults) and by `inpaint(crop_margin=M)`. Prints per photo the hole PSNR of both against the photo, the PSNR between
the two results (hole pixels) and both times (compilation excluded by warm-up calls).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from quality import case_inputs, heldout_photos, hole_psnr  # noqa: E402


def small_holes(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(2):
        rx, ry = rng.integers(30, 50, size=2)
        cx, cy = rng.integers(200, w - 200), rng.integers(200, h - 200)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    return np.asarray(mask) > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--margin", type=int, default=128)
    args = parser.parse_args()
    import jax_refine

    model = jax_refine.default_model()
    print("| photo | hole % | whole: PSNR dB, s | crop: PSNR dB, s | crop vs whole PSNR dB | speed-up |")
    print("|---|---|---|---|---|---|")
    for index, photo in enumerate(heldout_photos(args.data, None)):
        image, _ = case_inputs(args.data, photo, args.size, "thin")
        hole = small_holes(*image.shape[:2], seed=index)
        runs = {}
        for name, margin in (("whole", None), ("crop", args.margin)):
            if margin is not None or index == 0:  # compile (every photo has the same size; crops differ)
                jax_refine.inpaint(image, hole, model, crop_margin=margin)
            start = time.perf_counter()
            runs[name] = (jax_refine.inpaint(image, hole, model, crop_margin=margin), time.perf_counter() - start)
        (whole, t_whole), (crop, t_crop) = runs["whole"], runs["crop"]
        print(f"| {photo['name'].split('/')[-1]} | {100 * hole.mean():.2f} | {hole_psnr(whole, image, hole):.2f}, {t_whole:.1f} | "
              f"{hole_psnr(crop, image, hole):.2f}, {t_crop:.1f} | {hole_psnr(crop, whole, hole):.1f} | {t_whole / t_crop:.0f}x |",
              flush=True)


if __name__ == "__main__":
    import jax_refine

    jax_refine.configure_cpu()  # XLA's fast CPU conv path, before JAX starts (as the CLI does)
    main()
