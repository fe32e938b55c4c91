"""Inpaint a LaMa-layout folder (x.png + x_mask.png) on every host of a TPU pod (or one machine).

    # on each host of the pod, the same command (Cloud TPU sets up the coordinator):
    python examples/multihost.py IN_DIR OUT_DIR --model big-lama --distributed
    # one machine, all its devices:
    python examples/multihost.py IN_DIR OUT_DIR

Each process takes every process_count-th image (sorted by name, starting at its
process_index) and runs `jax_refine.inpaint_batch` data-parallel over its *local* devices, so
hosts never exchange data; results are written atomically to OUT_DIR. With --distributed,
`jax.distributed.initialize()` is called first (arguments from the environment, as on Cloud
TPU; pass --coordinator/--num-processes/--process-id elsewhere).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
from PIL import Image

import jax_refine
from jax_refine.cli import save_atomic


def pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(image, mask) for every `x_mask*.png` whose `x.png` exists, sorted by name."""
    found = []
    for mask in sorted(folder.glob("*_mask*.png")):
        image = mask.with_name(mask.name.split("_mask")[0] + ".png")
        if image.exists():
            found.append((image, mask))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--model", help="converted checkpoint directory (default: the bundled model)")
    parser.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first")
    parser.add_argument("--coordinator", help="host:port of process 0 (not needed on Cloud TPU)")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--batch-per-device", type=int, default=1)
    args = parser.parse_args()
    if args.distributed:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    devices = jax.local_devices()
    mine = pairs(args.input)[jax.process_index()::jax.process_count()]
    args.output.mkdir(parents=True, exist_ok=True)
    model = jax_refine.load(args.model) if args.model else jax_refine.default_model()
    step = args.batch_per_device * len(devices)
    print(f"process {jax.process_index()}/{jax.process_count()}: {len(mine)} images on {len(devices)} devices")
    for start in range(0, len(mine), step):
        chunk = mine[start:start + step]
        images = [np.asarray(Image.open(image).convert("RGB")) for image, _ in chunk]
        masks = [np.asarray(Image.open(mask).convert("L")) for _, mask in chunk]
        results = jax_refine.inpaint_batch(images, masks, model, devices=devices, batch_size=step)
        for (image, _), result in zip(chunk, results):
            save_atomic(Image.fromarray(result), args.output / image.name)
            print(f"  {image.name}")


if __name__ == "__main__":
    main()
