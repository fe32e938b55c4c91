"""The README's main command twice: from an empty compilation cache, then from the same cache.

    python benchmarks/startup.py                      # examples/dune.png, the bundled model
    python benchmarks/startup.py --runs 3 -- --model big-lama   # extra arguments go to the command

Each run is a fresh process running `jax-refine inpaint examples/dune.png
examples/dune_mask.png -o OUT` (the executable's entry point `cli.command`, called by a small
wrapper that times it) with JAX_REFINE_HOME set to a new temporary folder, so the default compilation
cache `$JAX_REFINE_HOME/xla` is empty for the first run and full for the later ones.

A run's wall-clock time (seen from this process) is split into
  start    interpreter start and `import jax_refine.cli`;
  load     loading the model (`checkpoint.load`), less the tracing inside it;
  compile  JAX's tracing, lowering, and XLA compilation or loading from the cache: the union
           of the time spans `jax.monitoring` reports, so nested traces count once;
           also shown as its three parts;
  compute  the rest of the command: reading the images, running the programs, writing the PNG;
  exit     interpreter shutdown.
The last line is the ratio of the second run's total to the first's, and what it would be
if the second run compiled, lowered and traced nothing at all (no cache can do better).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = "RESULT "
SPANS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
         "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
         "/jax/core/compile/backend_compile_duration": "xla"}
COLUMNS = ("total", "start", "load", "compile", "trace", "lower", "xla", "compute", "exit")


def union(spans: list[tuple[float, float]], lo: float = -float("inf"), hi: float = float("inf")) -> float:
    """Length of the union of the intervals `spans`, clipped to [lo, hi]."""
    total, end = 0.0, -float("inf")
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in spans):
        if b > max(a, end):
            total += b - max(a, end)
            end = b
    return total


def worker(argv: list[str]) -> None:
    """Run the command in this process and report its phases (seconds since the parent's start)."""
    t0 = float(os.environ["STARTUP_T0"])
    import jax

    import jax_refine.cli as cli
    from jax_refine import checkpoint

    imported = time.time()
    spans, hits = {name: [] for name in SPANS.values()}, []
    jax.monitoring.register_event_time_span_listener(
        lambda event, start, end, **_: spans[SPANS[event]].append((start, end)) if event in SPANS else None)
    jax.monitoring.register_event_listener(
        lambda event, **_: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
    loads, load = [], checkpoint.load

    def timed_load(path):
        start = time.time()
        try:
            return load(path)
        finally:
            loads.append((start, time.time()))

    checkpoint.load = timed_load
    status = cli.command(argv)  # the executable's entry point, as `jax-refine` runs it
    ended = time.time()
    every = [s for parts in spans.values() for s in parts]
    compile_s = union(every)
    load_s = sum(b - a - union(every, a, b) for a, b in loads)
    print(RESULT + json.dumps(dict(
        status=status, start=imported - t0, main_end=ended - t0, load=load_s, compile=compile_s,
        compute=ended - imported - compile_s - load_s, cache_hits=len(hits),
        **{name: union(parts) for name, parts in spans.items()})), flush=True)


def run(argv: list[str], home: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_REFINE_HOME=str(home), STARTUP_T0=repr(time.time()))
    env.pop("JAX_REFINE_COMPILATION_CACHE", None)
    t0 = float(env["STARTUP_T0"])
    done = subprocess.run([sys.executable, __file__, "--worker", *argv], env=env, capture_output=True, text=True)
    total = time.time() - t0
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        sys.exit(f"the command failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len(RESULT):])
    if result["status"] != 0:
        sys.exit(f"the command exited with {result['status']}:\n{done.stderr[-3000:]}")
    return dict(result, total=total, exit=total - result["main_end"])


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs in all, the first from an empty cache")
    parser.add_argument("--image", type=Path, default=ROOT / "examples" / "dune.png")
    parser.add_argument("--mask", type=Path, default=ROOT / "examples" / "dune_mask.png")
    parser.add_argument("extra", nargs="*", help="more arguments for the command (after --)")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    with tempfile.TemporaryDirectory() as tmp:
        command = ["inpaint", str(args.image), str(args.mask), "-o"]
        print(f"jax-refine inpaint {args.image.name} {args.mask.name} -o OUT {' '.join(args.extra)}".rstrip()
              + ", JAX_REFINE_HOME empty at first (seconds)")
        print(f"{'run':<6}" + "".join(f"{c:>9}" for c in COLUMNS) + f"{'hits':>6}")
        rows = []
        for i in range(args.runs):
            rows.append(run([*command, str(Path(tmp) / f"out{i}.png"), *args.extra], Path(tmp) / "home"))
            print(f"{i + 1:<6}" + "".join(f"{rows[-1][c]:9.2f}" for c in COLUMNS) + f"{rows[-1]['cache_hits']:6d}",
                  flush=True)
        size = sum(p.stat().st_size for p in (Path(tmp) / "home" / "xla").glob("*"))
    first, second = rows[0]["total"], rows[1]["total"]
    print(f"cache: {size / 2**20:.1f} MiB; second / first run: {second / first:.2f} "
          "(target: at most 0.5 on an idle machine); "
          f"with no compile at all in the second run (the limit of any cache): {(second - rows[1]['compile']) / first:.2f}")


if __name__ == "__main__":
    main()
