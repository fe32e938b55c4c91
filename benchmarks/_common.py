"""What the benchmarks share: the repository root, the test photo and mask, peak RSS, compile
time, and running one variant in a fresh process (so that its peak memory is its own).

Importing it sets XLA's CPU conv flag (`jax_refine.configure_cpu`, as the CLI does) before any
benchmark starts JAX; the workers it starts inherit it."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

import jax_refine

jax_refine.configure_cpu()

ROOT = Path(__file__).resolve().parents[1]
# a 2560x1600 photo from the training sources (python -m training.sources); examples/dune.png otherwise
GARDEN = ROOT / "data" / "photos" / "mate-backgrounds" / "Garden.jpg"
EXAMPLE = ROOT / "examples" / "dune.png"
RESULT = "RESULT "  # a worker's last stdout line: RESULT {json}


def default_photo() -> Path:
    return GARDEN if GARDEN.exists() else EXAMPLE


def square_inputs(image_path: Path, size: int, kind: str = "thick", seed: int = 0):
    """The photo's centre square resized to size (PIL bicubic) and LaMa's `kind` stroke mask:
    (image (size, size, 3) float32 in [0, 1], mask (size, size) float32 {0, 1})."""
    from PIL import Image

    from jax_refine.masks import random_mask

    photo = Image.open(image_path).convert("RGB")
    side = min(photo.size)
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    photo = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    mask = random_mask(np.random.default_rng(seed), size, size, kind)
    return np.asarray(photo, np.float32) / 255, mask.astype(np.float32)


def peak_rss_gib() -> float:
    """This process's peak resident memory so far: Linux's VmHWM (ru_maxrss would include the
    parent's resident set at fork, which Linux carries across exec), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return int(f.read().split("VmHWM:")[1].split()[0]) / 2**20
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20)


def compile_seconds() -> dict:
    """Registers a listener summing JAX's trace, lowering and compile durations; returns the
    dict whose "s" holds the running total."""
    import jax

    total = {"s": 0.0}

    def listener(event, duration, **_):
        if event.startswith("/jax/core/compile/"):
            total["s"] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    return total


def report(result: dict) -> None:
    """A worker's answer to `run_worker`."""
    print(RESULT + json.dumps(result), flush=True)


def worker_result(script: str, args: list[str], env: dict | None = None, timeout: float | None = None):
    """Runs `python script args` in a fresh process, killed after `timeout` seconds: returns
    (the last dict it `report`ed or None, its exit status (None: timed out), its stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    try:
        done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env,
                              timeout=timeout)
        stdout, status, stderr = done.stdout, done.returncode, done.stderr
    except subprocess.TimeoutExpired as e:  # what it reported before it was killed still counts
        stdout, stderr = (x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (e.stdout, e.stderr))
        status = None
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT)]
    return (json.loads(lines[-1][len(RESULT):]) if lines else None), status, stderr


def run_worker(script: str, args: list[str], env: dict | None = None) -> dict:
    """Runs `python script args` in a fresh process and returns the dict it `report`ed;
    exits with the worker's stderr tail if it failed."""
    result, status, stderr = worker_result(script, args, env)
    if status != 0 or result is None:
        sys.exit(f"{Path(script).name} {' '.join(args)} failed (exit {status}):\n{stderr[-3000:]}")
    return result
