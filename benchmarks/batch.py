"""Throughput of `inpaint_batch` (what the CLI's --batch-size runs) on 1 vs N devices.

    python benchmarks/batch.py [--devices 1,4] [--images 8] [--size 400x640]

The bundled model; N crops of examples/dune.png (resized) with LaMa 'medium' masks (seeds
0..N-1); RefineConfig(min_side 200, n_iters 5): two scales. Each device count runs in its own
process, on the CPU split into that many devices with
XLA_FLAGS=--xla_force_host_platform_device_count (the flag only affects the CPU backend; on a
GPU/TPU host every run uses the real devices): one pass to compile, then a timed pass. Prints
images/second and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EXAMPLE, report, run_worker  # noqa: E402


def inputs(n: int, h: int, w: int):
    from PIL import Image

    from jax_refine.masks import random_mask

    photo = Image.open(EXAMPLE).convert("RGB")
    images, masks = [], []
    for i in range(n):
        left = (i * 37) % (photo.width - w // 2)
        crop = photo.crop((left, 0, left + photo.width // 2, photo.height)).resize((w, h), Image.BICUBIC)
        images.append(np.asarray(crop))
        masks.append(random_mask(np.random.default_rng(i), h, w, "medium"))
    return images, masks


def worker(args) -> dict:
    import jax

    import jax_refine

    h, w = map(int, args.size.split("x"))
    images, masks = inputs(args.images, h, w)
    config = jax_refine.RefineConfig(min_side=200, n_iters=5)
    devices = jax.devices()
    model = jax_refine.default_model()
    jax_refine.inpaint_batch(images, masks, model, config=config, devices=devices)  # compile
    start = time.perf_counter()
    jax_refine.inpaint_batch(images, masks, model, config=config, devices=devices)
    seconds = time.perf_counter() - start
    return dict(devices=len(devices), platform=devices[0].platform, images=len(images), seconds=seconds,
                images_per_second=len(images) / seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,4")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", default="400x640", help="HxW of each image")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        report(worker(args))
        return
    rows = []
    for count in map(int, args.devices.split(",")):
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
        rows.append(run_worker(__file__, ["--worker", "--images", str(args.images), "--size", args.size],
                               env={"XLA_FLAGS": flags}))
        print(json.dumps(rows[-1]), flush=True)
    for row in rows[1:]:
        print(f"{row['devices']} vs {rows[0]['devices']} {row['platform']} devices: "
              f"{row['images_per_second'] / rows[0]['images_per_second']:.2f}x images/second")


if __name__ == "__main__":
    main()
