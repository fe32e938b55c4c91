"""Folder throughput with the pipelined loader against the compute-only rate on the same images.

    python benchmarks/pipeline.py [--images 6] [--size 320x512] [--batch-size 2] [--rounds 6]
                                  [--refine] [--device-cores K]

A LaMa-layout folder of N PNG crops of examples/dune.png (LaMa 'medium' masks, seeds 0..N-1)
is inpainted by the bundled model (plain prediction; --refine: min_side 160, n_iters 5) in
three ways, in one process after one batch has compiled the programs:
  compute    the devices alone: the job's batches, decoded beforehand, through the same
             compute step as the job (jobs._Runner.compute), nothing read or written;
  pipelined  the job (jobs.run_items, what `jax-refine inpaint DIR -o OUT` runs): headers,
             decoding ahead and encoding/writing behind on worker threads;
  serial     decode, compute and write in turn on one thread (the CLI before the pipeline).
Each round runs the three once, in a rotating order, so a shared machine's changing load falls
on all of them; per pass it prints images/s and the peak RSS during the pass (sampled every
5 ms), per round the ratios to compute-only, and at the end their medians.

On a CPU-only machine the "devices" are the host's own cores, so decoding and writing compete
with the computation for them. --device-cores K approximates an accelerator host: XLA's thread
pool starts pinned to the first K cores, the Python threads (the job's worker threads, the
main thread) then run on the other cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def pin_devices(cores: int) -> None:
    """Start JAX's CPU backend with its threads on the first `cores` cores, then move this
    (Python) thread, and the threads it starts later, to the remaining ones."""
    import jax

    every = sorted(os.sched_getaffinity(0))
    if not 0 < cores < len(every):
        sys.exit(f"--device-cores must be between 1 and {len(every) - 1} on this machine")
    os.sched_setaffinity(0, every[:cores])
    jax.devices()  # XLA's thread pool is created now, with this affinity
    os.sched_setaffinity(0, every[cores:])


class Passes:
    """The three ways to inpaint the folder `source` into `out` (see the module docstring)."""

    def __init__(self, source: Path, out: Path, args):
        from jax_refine import RefineConfig, files, jobs
        from jax_refine.api import default_model

        self.files, self.jobs = files, jobs
        self.model = default_model()
        config = RefineConfig(min_side=160, n_iters=5)
        self.settings = jobs.JobSettings(method=args.method, config=config, batch_size=args.batch_size, overwrite=True)
        self.items = files.find_items(source, None, out).items
        sizes = {i: files.item_size(item) for i, item in enumerate(self.items)}
        self.batches = [[self.items[i] for i in batch]
                        for batch in jobs.plan_batches(self.items, sizes, self.settings, self.model)]
        self.runner = jobs._Runner(self.settings, self.model, None,
                                   jobs.Reporter(len(self.items), verbose=False, outer_bar=False))
        self.runner.compute(self.opened(self.batches[0]))  # compile every program of this size
        self.decoded = [self.opened(batch) for batch in self.batches]

    def opened(self, batch):
        return [(item, self.files.open_image(item.image), self.files.open_image(item.mask, "mask")) for item in batch]

    def compute(self):
        for batch in self.decoded:
            self.runner.compute(batch)

    def pipelined(self):
        summary = self.jobs.run_items(self.items, self.model, self.settings)
        assert summary.done == len(self.items), summary

    def serial(self):
        for batch in self.batches:
            for item, result, _, _ in self.runner.compute(self.opened(batch)):
                self.files.save_atomic(result, item.output, item.image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--size", default="320x512", help="HxW of each image")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--refine", dest="method", action="store_const", const="refine", default="plain",
                        help="two-scale refinement instead of plain prediction")
    parser.add_argument("--device-cores", type=int, help="pin XLA's threads to this many cores, Python to the rest")
    args = parser.parse_args()
    if args.device_cores:
        pin_devices(args.device_cores)
    h, w = map(int, args.size.split("x"))
    ratios = {mode: [] for mode in MODES[1:]}
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp) / "in", args.images, h, w)
        passes = Passes(Path(tmp) / "in", Path(tmp) / "out", args)
        for round_ in range(args.rounds):
            rates = {}
            for mode in MODES[round_ % 3:] + MODES[:round_ % 3]:
                with PeakRSS() as rss:
                    start = time.perf_counter()
                    getattr(passes, mode)()
                    seconds = time.perf_counter() - start
                rates[mode] = args.images / seconds
                print(f"round {round_ + 1} {mode:9s}: {args.images} images in {seconds:.1f} s, "
                      f"{rates[mode]:.3f} images/s, peak RSS {rss.peak / 2**30:.2f} GiB", flush=True)
            for mode in ratios:
                ratios[mode].append(rates[mode] / rates["compute"])
            print(f"round {round_ + 1} ratios to compute-only: "
                  + ", ".join(f"{mode} {ratios[mode][-1]:.3f}" for mode in ratios), flush=True)
    print("median ratios to compute-only: "
          + ", ".join(f"{mode} {statistics.median(values):.3f} (range {min(values):.3f}-{max(values):.3f})"
                      for mode, values in ratios.items()))


if __name__ == "__main__":
    import jax_refine

    jax_refine.configure_cpu()  # XLA's fast CPU conv path, before JAX starts (as the CLI does)
    main()
