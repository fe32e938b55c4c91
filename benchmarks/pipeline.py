"""Folder throughput with the pipelined loader against the compute-only rate on the same images.

    python benchmarks/pipeline.py [--images 8] [--size 400x640] [--batch-size 2] [--rounds 2] [--refine]

A LaMa-layout folder of N PNG crops of examples/dune.png (LaMa 'medium' masks, seeds 0..N-1)
is inpainted by the bundled model (plain prediction; --refine: min_side 200, n_iters 5) in
three ways, each in its own process (one batch first to compile, then the timed pass):
  compute    the devices alone: the job's batches, decoded beforehand, through the same
             compute step as the job (jobs._Runner.compute), nothing read or written;
  pipelined  the job (jobs.run_items, what `jax-refine inpaint DIR -o OUT` runs): headers,
             decoding ahead and encoding/writing behind on worker threads;
  serial     decode, compute and write in turn on one thread (the CLI before the pipeline).
The modes alternate, round after round, so a shared machine's load falls on all of them.
Prints per run images/s and the peak RSS during the timed pass (sampled every 5 ms), then per
round the ratios to compute-only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODES = ("compute", "pipelined", "serial")


def make_folder(folder: Path, n: int, h: int, w: int) -> None:
    from PIL import Image

    from jax_refine.masks import random_mask, save_mask_png

    photo = Image.open(ROOT / "examples" / "dune.png").convert("RGB")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        left = (i * 37) % (photo.width - w // 2)
        crop = photo.crop((left, 0, left + photo.width // 2, photo.height)).resize((w, h), Image.BICUBIC)
        crop.save(folder / f"photo{i:03d}.png")
        save_mask_png(random_mask(np.random.default_rng(i), h, w, "medium"), folder / f"photo{i:03d}_mask.png")


class PeakRSS:
    """The largest resident set size (bytes) while the block runs, sampled every 5 ms."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def worker(args) -> dict:
    from jax_refine import RefineConfig, files, jobs
    from jax_refine.api import default_model

    model = default_model()
    config = RefineConfig(min_side=200, n_iters=5)
    settings = jobs.JobSettings(refine=args.refine, config=config, batch_size=args.batch_size, overwrite=True)
    items, _, _ = files.find_items(args.folder, None, args.out)
    sizes = {i: files.item_size(item) for i, item in enumerate(items)}
    batches = [[items[i] for i in batch] for batch in jobs.plan_batches(items, sizes, settings, model)]
    quiet = jobs.Reporter(len(items), verbose=False, outer_bar=False)
    runner = jobs._Runner(settings, model, None, quiet)

    def opened(batch):
        return [(item, files.open_image(item.image), files.open_image(item.mask, "mask")) for item in batch]

    runner.compute(opened(batches[0]))  # compile every program of this size
    if args.mode == "compute":
        decoded = [opened(batch) for batch in batches]
        with PeakRSS() as rss:
            start = time.perf_counter()
            for batch in decoded:
                runner.compute(batch)
    elif args.mode == "pipelined":
        with PeakRSS() as rss:
            start = time.perf_counter()
            summary = jobs.run_items(items, model, settings)
        assert summary.done == len(items), summary
    else:
        with PeakRSS() as rss:
            start = time.perf_counter()
            for batch in batches:
                for item, image, result, _, _ in runner.compute(opened(batch)):
                    files.save_atomic(result, item.output, image.info.get("icc_profile"))
    seconds = time.perf_counter() - start
    return dict(mode=args.mode, images=len(items), seconds=seconds, images_per_second=len(items) / seconds,
                peak_rss_gib=rss.peak / 2**30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", default="400x640", help="HxW of each image")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--refine", action="store_true", help="two-scale refinement instead of plain prediction")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    h, w = map(int, args.size.split("x"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ratios = {mode: [] for mode in MODES[1:]}
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp) / "in", args.images, h, w)
        for round_ in range(args.rounds):
            rates = {}
            for mode in MODES:
                command = [sys.executable, __file__, "--worker", "--mode", mode, "--folder", f"{tmp}/in",
                           "--out", f"{tmp}/out-{mode}", "--batch-size", str(args.batch_size)]
                done = subprocess.run(command + (["--refine"] if args.refine else []), env=env,
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(done.stderr[-3000:])
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rates[mode] = row["images_per_second"]
                print(f"round {round_ + 1} {mode:9s}: {row['images']} images in {row['seconds']:.1f} s, "
                      f"{row['images_per_second']:.3f} images/s, peak RSS {row['peak_rss_gib']:.2f} GiB", flush=True)
            for mode in ratios:
                ratios[mode].append(rates[mode] / rates["compute"])
            print(f"round {round_ + 1} ratios to compute-only: "
                  + ", ".join(f"{mode} {ratios[mode][-1]:.3f}" for mode in ratios), flush=True)
    print("median ratios to compute-only: "
          + ", ".join(f"{mode} {statistics.median(values):.3f}" for mode, values in ratios.items()))


if __name__ == "__main__":
    main()
