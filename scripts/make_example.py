#!/usr/bin/env python
"""Write the README's example: a held-out photo and a thick stroke mask, in examples/.

    python -m training.sources && python scripts/make_example.py

The photo is mate-backgrounds' nature/Dune.jpg (1680 x 1050, GPL-2+, see examples/README.md),
held out from training (data/manifest.json), resized (Lanczos) to 1024 px on its long side so
that the README's command runs in well under a minute on 2 CPU cores, saved as PNG; the mask
is an object-removal mask: round-ended strokes over three seed heads of the grass against the
sea and sky (the quality study uses LaMa's random stroke masks instead). Running it again
rewrites the same files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from jax_refine.masks import save_mask_png

ROOT = Path(__file__).resolve().parents[1]
PHOTO = "mate-backgrounds/Dune"
LONG_SIDE = 1024
# (x0, y0, x1, y1, width) in pixels of the 1024 x 640 photo: three seed heads
STROKES = [(703, 96, 622, 255, 30), (832, 148, 772, 272, 28), (924, 148, 832, 290, 30)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "examples")
    args = parser.parse_args()
    manifest = json.loads((args.data / "manifest.json").read_text())
    entry = next(p for p in manifest["photos"] if p["name"] == PHOTO)
    if entry["split"] != "heldout":
        raise SystemExit(f"{PHOTO} is a training photo; the example must be held out")
    photo = Image.open(args.data / entry["path"]).convert("RGB")
    scale = LONG_SIDE / max(photo.size)
    photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS)
    name = PHOTO.split("/")[-1].lower()
    args.out.mkdir(parents=True, exist_ok=True)
    photo.save(args.out / f"{name}.png", optimize=True)
    mask = Image.new("L", photo.size, 0)
    draw = ImageDraw.Draw(mask)
    for x0, y0, x1, y1, width in STROKES:
        draw.line((x0, y0, x1, y1), fill=255, width=width)
        for x, y in ((x0, y0), (x1, y1)):
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=255)
    mask = np.asarray(mask) > 0
    save_mask_png(mask, args.out / f"{name}_mask.png")
    print(f"wrote {args.out / name}.png and {name}_mask.png ({photo.width}x{photo.height}, "
          f"hole {mask.mean():.1%}) from {entry['path']} (sha256 {entry['sha256'][:12]}…)")


if __name__ == "__main__":
    main()
