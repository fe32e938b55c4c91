"""benchmarks/device.py, the one-call accelerator benchmark, on this CPU at tiny sizes: its
plan, its budget (deterministic: a budget of 0 skips every row, an extrapolated row that does
not fit is not started) and, in the slow tier, a full run whose every row holds real numbers."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--min-side", "32", "--n-iters", "3", "--repeats", "2"]


def load_device():
    spec = importlib.util.spec_from_file_location("device_benchmark", ROOT / "benchmarks" / "device.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


device = load_device()


def run_device(tmp_path, *args, timeout=1800) -> tuple[dict, str]:
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device.py"), "--out", str(out), *TINY, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert out.with_suffix(".md").read_text().strip() in done.stdout  # the table, printed and written
    return json.loads(out.read_text()), done.stdout


def test_plan_runs_smallest_first_the_details_at_their_size_and_estimates_last():
    rows = device.plan([128, 64], 128, 128, ("cpu", "xla"), torch_rows=True)
    names = [r.name for r in rows]
    assert names[:6] == ["jax-refine-64-float32-decoder-cpu", "torch-refine-64-float32-None-None",
                         "jax-refine-64-bfloat16-decoder-cpu", "jax-predict-64-float32-None-cpu",
                         "jax-predict-64-bfloat16-None-cpu", "torch-predict-64-float32-None-None"]
    at_128 = [r for r in rows if r.size == 128 and not r.estimate_only]
    assert {(r.remat, r.kernels) for r in at_128 if r.framework == "jax" and r.method == "refine"} == {
        ("decoder", "cpu"), ("none", "cpu"), ("blocks", "cpu"), ("all", "cpu"), ("decoder", "xla")}
    # estimate only: every remat policy and dtype at the estimate size not measured there, after all runs
    estimates = [r for r in rows if r.estimate_only]
    assert rows[-len(estimates):] == estimates
    assert {(r.dtype, r.remat) for r in estimates} == {("bfloat16", "none"), ("bfloat16", "blocks"),
                                                       ("bfloat16", "all")}
    assert len(names) == len(set(names)) == 2 * 6 + 4 + 3


def test_a_row_starts_only_if_its_extrapolation_fits():
    finished = [dict(framework="jax", method="refine", size=64, setup_s=1.0, compile_s=2.0, steady_s=0.5)]
    refine_128 = device.Row("jax", "refine", 128, remat="decoder", kernels="cpu")
    # setup + compile + two calls at 4x the pixels, with the margin
    assert device.minimum_seconds(refine_128, finished) == pytest.approx(device.MARGIN * (1 + 2 + 2 * 0.5 * 4))
    assert device.minimum_seconds(device.Row("jax", "predict", 128), finished) is None  # no row of its kind
    assert device.minimum_seconds(device.Row("torch", "refine", 128), finished) is None


def test_a_worker_that_failed_or_was_stopped_is_a_row_with_a_status():
    assert device.outcome({"steady_s": 1.0, "done": True}, 0, "", 5)["status"] == "measured"
    assert device.outcome({"status": "out of memory", "done": True}, 0, "", 5)["status"] == "out of memory"
    assert device.outcome(None, 1, "jaxlib.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory", 5)["status"] == \
        "out of memory"
    assert device.outcome(None, -9, "", 5)["status"] == "out of memory"  # the kernel's OOM killer
    crashed = device.outcome(None, 1, "ValueError: bad", 5)
    assert crashed["status"] == "failed (exit 1)" and "ValueError: bad" in crashed["error"]
    stopped = device.outcome({"compile_s": 3.0, "steady_s": None}, None, "", 12)  # killed at the budget
    assert stopped["status"] == "stopped at the budget after 12 s" and stopped["compile_s"] == 3.0


def test_a_budget_of_zero_gives_the_whole_table_with_every_row_skipped(tmp_path):
    results, stdout = run_device(tmp_path, "--budget-s", "0", "--sizes", "64,128", "--detail-size", "128",
                                 "--torch", "off", timeout=300)
    assert results["machine"]["backend"] == "cpu" and results["machine"]["kernels"] == ["cpu", "xla"]
    assert results["settings"]["sizes"] == [64, 128] and results["complete"] is False
    names = [r["name"] for r in results["rows"]]
    assert names == [r.name for r in device.plan([64, 128], 128, 128, ("cpu", "xla"), torch_rows=False)]
    assert {r["status"] for r in results["rows"]} == {"skipped: budget"}
    assert not any("steady_s" in r or "peak_bytes" in r for r in results["rows"])
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(names) and all("skipped: budget" in line for line in table[1:])


@pytest.mark.slow
def test_every_row_of_a_tiny_run_holds_real_numbers(tmp_path):
    torch = "on" if importlib.util.find_spec("torch") else "off"
    # without the detail rows (the plan test covers them): each row is a fresh process
    results, stdout = run_device(tmp_path, "--budget-s", "3000", "--sizes", "64", "--detail-size", "0",
                                 "--torch", torch)
    rows = results["rows"]
    assert results["complete"] is True
    assert len(rows) == 4 + 6 + (2 if torch == "on" else 0)  # refine and predict x 2 dtypes; 6 estimates
    for r in rows:
        if r["estimate_only"]:
            assert r["status"] == "estimate only" and r["estimate_bytes"] > 0 and "peak_bytes" not in r
            continue
        assert r["status"] == "measured", r
        assert r["first_call_s"] > 0 and r["steady_s"] > 0 and r["repeats"] >= 1
        assert r["peak_bytes"] > 0 and r["memory_kind"] == "RSS"  # the CPU keeps no device statistics
        if r["framework"] == "jax":
            assert r["compile_s"] > 0
            ratio = r["estimate_bytes"] / r["peak_bytes"]
            assert math.isfinite(ratio) and 0.25 < ratio < 4, r
            assert r["scales"][-1][0] == 64 and len(r["scales"]) == (2 if r["method"] == "refine" else 1)
        if r["dtype"] == "bfloat16":  # close to float32, not equal
            assert 20 < r["hole_psnr_vs_float32_db"] < 120, r
        if r["framework"] == "torch":
            assert r["torch_over_jax"]["time"] > 0 and r["torch_over_jax"]["memory"] > 0
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)
