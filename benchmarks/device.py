"""Speed and memory of jax-refine on this machine's backend (GPU, TPU or CPU), against
`jax_refine.estimate` and, where torch has CUDA, the PyTorch reference on the same GPU.

    python benchmarks/device.py --out results.json [--budget-s 420] [--sizes 1024,2048,4096]
                                [--detail-size 2048] [--estimate-size 4096] [--model big|tiny]

Big-LaMa (or --model tiny: TINY_LAMA) with random weights made here (no download); the
photo's centre square resized to S x S and LaMa's 'thick' mask (seed 0), as the other
benchmarks. Rows, smallest sizes first, the largest last:
  - per size S: refinement (RefineConfig defaults, n_iters 15, px_budget S*S: refined at full
    resolution) and plain prediction (the same pipeline with one scale), float32 and bfloat16;
  - at --detail-size: refinement with every other remat policy and the other kernel path
    (`ops.KERNELS`), float32;
  - where torch has CUDA (--torch auto) or always (--torch on): tests/reference/lama_torch.py's
    prediction and refinement, float32, on the same device;
  - at --estimate-size: the refinement's `estimate` only (nothing runs) for every remat policy
    and dtype not measured there.
Each row runs in a fresh process, so that its peak memory is its own: JAX's device
`peak_bytes_in_use`, or where the backend keeps no statistics (CPU) the process's peak RSS
(the row says which); torch's `torch.cuda.max_memory_allocated`. Compile time is the
trace/lower/compile time JAX reports (the estimate compiles the programs the run then uses);
steady-state time is the median of the calls after the first (up to --repeats, fewer where
they would take over --repeat-s together). bfloat16 rows give the PSNR of their result
against the float32 row's inside the hole; torch rows their time and memory over JAX's.

--budget-s bounds the whole run: a row is started only while time is left and its minimum
time, extrapolated from the nearest smaller finished row of its kind, fits; a row still running
when the time is up is stopped and reported. Rows not run are in the table, marked. An
out-of-memory error is a row's result, not a crash. Prints a markdown table for BENCHMARKS.md
and writes the JSON to --out (after every row) and the table next to it (.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (ROOT, compile_seconds, default_photo, peak_rss_gib, report, square_inputs,  # noqa: E402
                     worker_result)

from jax_refine.model import REMAT_POLICIES  # noqa: E402  (no backend starts here: only workers use one)
from jax_refine.plan import COMPUTE_DTYPES, RefineConfig  # noqa: E402

MODELS = {"big": "BIG_LAMA", "tiny": "TINY_LAMA"}
DEFAULT_REMAT = RefineConfig().remat
GIB = 2.0**30
MARGIN = 1.25  # a row starts only if 1.25x its extrapolated minimum time is left (`minimum_seconds`)
# JAX preallocates 75 % of an accelerator's memory by default; a row may use nearly all of it
WORKER_ENV = {"XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")}


@dataclasses.dataclass(frozen=True)
class Row:
    """One measurement: a framework's method at size x size with a dtype, remat policy and kernel path."""

    framework: str            # jax | torch
    method: str               # predict | refine
    size: int
    dtype: str = "float32"
    remat: str | None = None  # refine only
    kernels: str | None = None  # jax only: ops.KERNELS
    estimate_only: bool = False

    @property
    def name(self) -> str:
        return "-".join(str(x) for x in (self.framework, self.method, self.size, self.dtype, self.remat, self.kernels))


def plan(sizes, detail_size, estimate_size, kernels, torch_rows) -> list[Row]:
    """The rows in the order they run. kernels: (the backend's default path, the other)."""
    default, other = kernels
    rows = []
    for size in sorted(sizes):
        refine = Row("jax", "refine", size, remat=DEFAULT_REMAT, kernels=default)
        rows += [refine, Row("torch", "refine", size)] if torch_rows else [refine]
        rows.append(dataclasses.replace(refine, dtype="bfloat16"))
        if size == detail_size:
            rows += [dataclasses.replace(refine, remat=remat) for remat in REMAT_POLICIES if remat != DEFAULT_REMAT]
            rows.append(dataclasses.replace(refine, kernels=other))
        rows += [Row("jax", "predict", size, dtype, kernels=default) for dtype in COMPUTE_DTYPES]
        rows += [Row("torch", "predict", size)] if torch_rows else []
    for dtype in COMPUTE_DTYPES:
        for remat in REMAT_POLICIES:
            row = Row("jax", "refine", estimate_size, dtype, remat, default)
            if row not in rows:
                rows.append(dataclasses.replace(row, estimate_only=True))
    return rows


# --------------------------------------------------------------------------------------
# Workers (each in its own process)
# --------------------------------------------------------------------------------------


def lama_config(model: str):
    import jax_refine

    return getattr(jax_refine, MODELS[model])


def refine_config(row: Row, args):
    """Refinement at full resolution (px_budget = size^2); prediction is the same pipeline with one scale."""
    fields = dict(px_budget=row.size**2, n_iters=args.n_iters, min_side=args.min_side, compute_dtype=row.dtype)
    return RefineConfig(**fields, **(dict(remat=row.remat) if row.method == "refine" else dict(max_scales=1)))


def random_model(model: str, kernels: str):
    """A generator of `model`'s configuration with random weights, in inference mode. Each
    residual block's last BatchNorm is scaled by 0.1, as tests/reference's `randomize` does
    (without it, 18 blocks saturate Big-LaMa's sigmoid output: the dtype comparison would
    compare zeros and ones)."""
    from flax import nnx

    import jax_refine
    from jax_refine.model import eval_mode

    generator = jax_refine.Lama(lama_config(model), rngs=nnx.Rngs(0), kernels=kernels)
    for bn in (generator.blocks.conv2.bn_l, generator.blocks.conv2.bn_g):
        bn.scale[...] = 0.1 * bn.scale[...]
    return eval_mode(generator)


def is_out_of_memory(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return any(s in text for s in ("resource_exhausted", "out of memory", "outofmemory"))


def probe(args) -> dict:
    """The machine: backend, device, versions, default kernels, whether torch has CUDA."""
    import importlib.metadata

    import jax

    from jax_refine import ops

    device = jax.devices()[0]
    info = dict(backend=jax.default_backend(), device=device.device_kind, device_count=jax.device_count(),
                python=platform.python_version(), memory_stats=device.memory_stats() is not None,
                kernels=[ops.default_kernels()] + [k for k in ops.KERNELS if k != ops.default_kernels()],
                **{name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax")})
    if args.torch != "off":
        try:
            import torch
        except ImportError:
            info.update(torch=None, torch_cuda=False)
        else:
            info.update(torch=torch.__version__, torch_cuda=torch.cuda.is_available())
            if torch.cuda.is_available():
                info.update(torch_device=torch.cuda.get_device_name(0))
    return info


def timed_calls(call, result: dict, args) -> None:
    """Calls `call` once (the first call: compilation, warm-up), then up to args.repeats more
    times while they fit before args.deadline and args.repeat_s; fills result's times, reporting
    after each call (a row stopped by the budget keeps what it measured)."""
    start = time.perf_counter()
    call()
    result.update(first_call_s=time.perf_counter() - start)
    report(result)
    times = []
    while len(times) < args.repeats and (not times or sum(times) + times[-1] <= args.repeat_s) \
            and time.time() + (times[-1] if times else result["first_call_s"]) < args.deadline:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        result.update(steady_s=statistics.median(times), repeats=len(times))
        report(result)


def run_jax(row: Row, args, result: dict, started: float) -> None:
    import jax

    import jax_refine
    from jax_refine import refine

    model, config = random_model(args.model, row.kernels), refine_config(row, args)
    image, mask = square_inputs(args.image, row.size)
    result.update(setup_s=time.perf_counter() - started, steady_s=None, repeats=0)
    compiled = compile_seconds()
    est = jax_refine.estimate((row.size, row.size), model, config=config)  # compiles what the run uses
    result.update(estimate_bytes=est.peak_bytes, estimate_program_bytes=est.program_bytes, compile_s=compiled["s"])
    report(result)
    output = {}

    def call():  # on_iteration: the programs `estimate` compiled report progress (one callback each iteration)
        output["out"], scales = refine.multiscale(model, image[None], mask[None, ..., None], config,
                                                  on_iteration=lambda *_: None)
        output["scales"] = [[s.size[0], s.iterations, round(s.seconds, 3)] for s in scales]

    timed_calls(call, result, args)
    stats = jax.devices()[0].memory_stats() or {}  # none on CPU
    peak, kind = (stats["peak_bytes_in_use"], "device") if "peak_bytes_in_use" in stats else \
        (peak_rss_gib() * GIB, "RSS")
    np.save(args.work / f"{row.name}.npy", output["out"][0][mask > 0.5])  # the hole, for the dtype comparison
    result.update(compile_s=compiled["s"], peak_bytes=int(peak), memory_kind=kind, scales=output["scales"])


def run_torch(row: Row, args, result: dict, started: float) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from reference import lama_torch

    config = lama_config(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = lama_torch.randomize(lama_torch.FFCResNetGenerator(
        ngf=config.ngf, n_downsampling=config.n_downsampling, n_blocks=config.n_blocks, ratio=config.ratio)).eval()
    model = model.to(device)
    image, mask = square_inputs(args.image, row.size)
    result.update(setup_s=time.perf_counter() - started, compile_s=0.0, steady_s=None, repeats=0)
    output = {}

    def call():
        if row.method == "refine":
            output["out"], _ = lama_torch.refine(model, image, mask, n_iters=args.n_iters, min_side=args.min_side,
                                                 px_budget=row.size**2)
        else:
            output["out"], _ = lama_torch.predict(model, image, mask)

    timed_calls(call, result, args)
    cuda = device == "cuda"
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_gib() * GIB
    np.save(args.work / f"{row.name}.npy", output["out"][mask > 0.5])
    result.update(peak_bytes=int(peak), memory_kind="torch" if cuda else "RSS")


def run_estimates(rows: list[Row], args, result: dict, started: float) -> None:
    """`estimate` of each row (nothing runs) into result["rows"], while the next one is expected
    to end before the deadline (the first: in args.expect_s seconds)."""
    import jax_refine

    model = random_model(args.model, rows[0].kernels)
    result.update(rows={}, setup_s=time.perf_counter() - started)
    expected = args.expect_s
    for row in rows:
        if time.time() + expected > args.deadline:
            break
        start = time.perf_counter()
        est = jax_refine.estimate((row.size, row.size), model, config=refine_config(row, args))
        expected = time.perf_counter() - start
        result["rows"][row.name] = dict(estimate_bytes=est.peak_bytes, estimate_program_bytes=est.program_bytes,
                                        compile_s=expected)
        report(result)


def worker(args) -> None:
    """One worker process: the probe, one row, or the estimate-only rows; reports its result
    (partial results as it goes), an out-of-memory error as the row's status."""
    started = time.perf_counter()
    if args.worker == "probe":
        report(probe(args))
        return
    rows, result = [Row(**r) for r in json.loads(args.rows)], {}
    run = run_estimates if args.worker == "estimates" else run_torch if rows[0].framework == "torch" else run_jax
    try:
        run(rows if args.worker == "estimates" else rows[0], args, result, started)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        result.update(status="out of memory", error=str(e)[:500])
    report(dict(result, done=True))


# --------------------------------------------------------------------------------------
# The run: rows within the budget, the table, the JSON
# --------------------------------------------------------------------------------------


def as_json(rows: list[Row]) -> str:
    return json.dumps([dataclasses.asdict(row) for row in rows])


def minimum_seconds(row: Row, finished: list[dict]) -> float | None:
    """The least time `row` can take, from the nearest finished row of its framework and method at
    the same or a smaller size: its setup and compile time plus two calls (the first and one
    repeat) scaled by pixels, times MARGIN. None without such a row."""
    kin = [r for r in finished if r["framework"] == row.framework and r["method"] == row.method
           and r.get("steady_s") and r["size"] <= row.size]
    if not kin:
        return None
    ref = max(kin, key=lambda r: r["size"])
    return MARGIN * (ref["setup_s"] + ref["compile_s"] + 2 * ref["steady_s"] * (row.size / ref["size"]) ** 2)


def outcome(result: dict | None, status: int | None, stderr: str, seconds: float) -> dict:
    """A worker's answer as a row's fields: its measurements and a status."""
    result = dict(result or {})
    if status is None:
        result["status"] = f"stopped at the budget after {seconds:.0f} s"
    elif result.get("done"):
        result.setdefault("status", "measured")
    else:
        oom = status == -9 or is_out_of_memory(RuntimeError(stderr[-5000:]))
        result.update(status="out of memory" if oom else f"failed (exit {status})", error=stderr[-2000:])
    result.pop("done", None)
    return result


def hole_psnr(a: Path, b: Path) -> float | None:
    """PSNR (dB, range 1) between two saved hole-pixel arrays; None when identical."""
    mse = float(np.mean((np.load(a).astype(np.float64) - np.load(b)) ** 2))
    return None if mse == 0 else 10 * math.log10(1 / mse)


def compare(results: list[dict], work: Path) -> None:
    """bfloat16 rows: hole PSNR against their float32 row; torch rows: time and memory over JAX's."""
    by_key = {(r["framework"], r["method"], r["size"], r["dtype"], r["remat"], r["kernels"]): r for r in results}
    kernels = next((r["kernels"] for r in results if r["framework"] == "jax"), None)
    for r in results:
        if r["dtype"] == "bfloat16" and r.get("peak_bytes"):
            base = by_key.get((r["framework"], r["method"], r["size"], "float32", r["remat"], r["kernels"]))
            if base and base.get("peak_bytes"):
                r["hole_psnr_vs_float32_db"] = hole_psnr(work / f"{r['name']}.npy", work / f"{base['name']}.npy")
        if r["framework"] == "torch" and r.get("steady_s"):
            remat = DEFAULT_REMAT if r["method"] == "refine" else None
            jax_row = by_key.get(("jax", r["method"], r["size"], "float32", remat, kernels))
            if jax_row and jax_row.get("steady_s"):
                r["torch_over_jax"] = dict(time=r["steady_s"] / jax_row["steady_s"],
                                           memory=r["peak_bytes"] / jax_row["peak_bytes"])


def table(machine: dict, settings: dict, results: list[dict]) -> str:
    def num(x, fmt):
        return "" if x is None else format(x, fmt)

    lines = [f"{machine.get('device', '?')} ({machine.get('backend', '?')}), jax {machine.get('jax')}, "
             f"jaxlib {machine.get('jaxlib')}, Python {machine.get('python')}"
             + (f", torch {machine['torch']}" if machine.get("torch") else "")
             + f"; {settings['model']} (random weights), n_iters {settings['n_iters']}, min_side "
               f"{settings['min_side']}, refinement at full resolution; {settings['date']}",
             "",
             "| size | run | dtype | remat | kernels | status | compile s | first call s | steady s (n) | "
             "peak GiB | estimate GiB (est / peak) | program GiB | bf16 hole PSNR dB | torch / jax time, memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        peak, est, vs = r.get("peak_bytes"), r.get("estimate_bytes"), r.get("torch_over_jax")
        steady = f"{r['steady_s']:.2f} ({r['repeats']})" if r.get("steady_s") else ""
        memory = f"{peak / GIB:.2f} {r['memory_kind']}" if peak else ""
        estimate = (f"{est / GIB:.2f}" + (f" ({est / peak:.2f})" if peak else "")) if est else ""
        program = num(r.get("estimate_program_bytes") and r["estimate_program_bytes"] / GIB, ".2f")
        psnr = r.get("hole_psnr_vs_float32_db")
        psnr = "identical" if psnr is None and "hole_psnr_vs_float32_db" in r else num(psnr, ".1f")
        torch_vs = f"{vs['time']:.2f}x, {vs['memory']:.2f}x" if vs else ""
        lines.append(f"| {r['size']}² | {r['framework']} {r['method']} | {r['dtype']} | {r['remat'] or '–'} | "
                     f"{r['kernels'] or '–'} | {r['status']} | {num(r.get('compile_s'), '.1f')} | "
                     f"{num(r.get('first_call_s'), '.2f')} | {steady} | {memory} | {estimate} | {program} | {psnr} | "
                     f"{torch_vs} |")
    lines += ["", "peak: device = JAX's peak_bytes_in_use; RSS = the process's peak resident memory (no device "
              "statistics on this backend); torch = torch.cuda.max_memory_allocated. estimate: jax_refine.estimate's "
              "peak_bytes (on CPU: resident memory + program + host images; on an accelerator: weights + program); "
              "program: its largest program's working set."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("device-results.json"))
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--sizes", default="1024,2048,4096", help='measured sizes ("": estimates only)')
    parser.add_argument("--detail-size", type=int, default=2048, help="size of the remat and kernel rows")
    parser.add_argument("--estimate-size", type=int, help="size of the estimate-only rows (default: the largest)")
    parser.add_argument("--model", choices=sorted(MODELS), default="big")
    parser.add_argument("--n-iters", type=int, default=15)
    parser.add_argument("--min-side", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeat-s", type=float, default=20.0, help="no further repeat once they took this long")
    parser.add_argument("--torch", choices=("auto", "on", "off"), default="auto",
                        help="PyTorch reference rows: auto = where torch has CUDA")
    parser.add_argument("--image", type=Path, default=default_photo())
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a worker process: probe | row | estimates
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--expect-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]  # none: the estimate-only rows alone
    if not (sizes or args.estimate_size):
        parser.error("give --sizes, --estimate-size or both")
    start, deadline = time.monotonic(), time.time() + args.budget_s
    common = ["--model", args.model, "--n-iters", str(args.n_iters), "--min-side", str(args.min_side),
              "--repeats", str(args.repeats), "--repeat-s", str(args.repeat_s), "--image", str(args.image),
              "--torch", args.torch]

    machine, status, stderr = worker_result(__file__, ["--worker", "probe", *common], WORKER_ENV)
    if machine is None:
        sys.exit(f"the probe of this machine failed (exit {status}):\n{stderr[-3000:]}")
    torch_rows = args.torch == "on" or (args.torch == "auto" and machine.get("torch_cuda", False))
    rows = plan(sizes, args.detail_size, args.estimate_size or max(sizes), machine["kernels"], torch_rows)
    settings = dict(model=f"{MODELS[args.model]}", n_iters=args.n_iters, min_side=args.min_side, sizes=sizes,
                    budget_s=args.budget_s, repeats=args.repeats, date=datetime.date.today().isoformat())
    results = [dict(dataclasses.asdict(row), name=row.name, status="skipped: budget") for row in rows]

    def save():
        document = dict(machine=machine, settings=settings, elapsed_s=time.monotonic() - start,
                        complete=all(r["status"] in ("measured", "estimate only") for r in results), rows=results)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1))

    with tempfile.TemporaryDirectory() as work:
        measured = [(row, r) for row, r in zip(rows, results) if not row.estimate_only]
        for row, r in measured:
            remaining = args.budget_s - (time.monotonic() - start)
            need = minimum_seconds(row, [x for x in results if x["status"] == "measured"])
            if remaining <= 0 or (need is not None and need > remaining):
                continue
            print(f"{row.name} ({remaining:.0f} s left)", file=sys.stderr, flush=True)
            began = time.monotonic()
            answer = worker_result(__file__, ["--worker", "row", "--rows", as_json([row]), "--work", work,
                                              "--deadline", str(deadline), *common], WORKER_ENV, timeout=remaining)
            r.update(outcome(*answer, time.monotonic() - began))
            print(json.dumps({k: v for k, v in r.items() if k != "error"}), file=sys.stderr, flush=True)
            save()
        estimates = [(row, r) for row, r in zip(rows, results) if row.estimate_only]
        remaining = args.budget_s - (time.monotonic() - start)
        if estimates and remaining > 0:
            expect = max((x["compile_s"] for x in results if x["status"] == "measured" and x["framework"] == "jax"
                          and x["method"] == "refine"), default=0.0)
            answer, status, stderr = worker_result(
                __file__, ["--worker", "estimates", "--rows", as_json([row for row, _ in estimates]), "--work", work,
                           "--deadline", str(deadline), "--expect-s", str(expect), *common],
                WORKER_ENV, timeout=remaining)
            for row, r in estimates:
                if row.name in (answer or {}).get("rows", {}):
                    r.update(answer["rows"][row.name], status="estimate only")
                elif status not in (0, None):
                    r.update(outcome(None, status, stderr, 0.0))
        compare(results, Path(work))
    save()
    text = table(machine, settings, results)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
