"""Every benchmark script runs end to end at a tiny size and prints its comparison.

The numbers themselves are BENCHMARKS.md's and QUALITY.md's business; this only keeps the
scripts working as the library changes (each one runs in a fresh process, as a user runs it).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(name: str, *args: str, timeout: int = 600) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def heldout_data(tmp_path_factory) -> Path:
    """A data folder whose manifest holds one held-out photo (examples/dune.png)."""
    data = tmp_path_factory.mktemp("data")
    shutil.copy(ROOT / "examples" / "dune.png", data / "dune.png")
    photo = {"name": "examples/dune", "path": "dune.png", "split": "heldout", "sha256": "0123abcd" * 8}
    (data / "manifest.json").write_text(json.dumps({"photos": [photo]}))
    return data


@pytest.mark.slow
def test_refine_benchmark_compares_jax_python_loop_and_torch():
    pytest.importorskip("torch")
    out = run_benchmark("refine", "--size", "64", "--min-side", "32", "--n-iters", "3", "--python-steps", "2",
                        "--n-blocks", "1")
    assert "torch / jax total time" in out and "python loop / compiled loop" in out


@pytest.mark.slow
def test_memory_benchmark_compares_estimate_with_peak():
    out = run_benchmark("memory", "--sizes", "64", "--remat", "none", "--n-blocks", "1")
    assert "| 64² | 64 | none |" in out  # below min_side 512: one scale


@pytest.mark.slow
def test_batch_benchmark_compares_device_counts():
    out = run_benchmark("batch", "--devices", "1,2", "--images", "2", "--size", "64x96")
    assert "2 vs 1 cpu devices" in out


@pytest.mark.slow
def test_pipeline_benchmark_compares_loader_modes():
    out = run_benchmark("pipeline", "--images", "2", "--size", "64x96", "--batch-size", "1", "--rounds", "1")
    assert "median" in out


@pytest.mark.slow
def test_quality_benchmark_writes_its_table(heldout_data, tmp_path):
    quality_md = tmp_path / "QUALITY.md"  # created with the table's markers
    run_benchmark("quality", "--data", str(heldout_data), "--out", str(tmp_path / "runs"), "--sizes", "160",
                  "--kinds", "thick", "--methods", "default,plain,prior", "--quality-md", str(quality_md))
    text = quality_md.read_text()
    assert all(method in text for method in ("default", "plain", "prior"))
    assert Image.open(next((tmp_path / "runs").rglob("*.png"))).size[0] > 0


@pytest.mark.slow
def test_crop_benchmark_compares_crops_with_the_whole_image(heldout_data):
    out = run_benchmark("crop", "--data", str(heldout_data), "--size", "800", "--margin", "32")
    assert "dune" in out


@pytest.mark.slow
def test_startup_benchmark_runs_the_command_twice_from_one_cache(tmp_path):
    photo = Image.open(ROOT / "examples" / "dune.png").crop((624, 64, 720, 128))
    photo.save(tmp_path / "photo.png")
    Image.open(ROOT / "examples" / "dune_mask.png").crop((624, 64, 720, 128)).save(tmp_path / "photo_mask.png")
    out = run_benchmark("startup", "--image", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "photo_mask.png"))
    rows = [line.split() for line in out.splitlines() if line[:1] in "12" and len(line.split()) == 11]
    assert [row[0] for row in rows] == ["1", "2"]
    assert rows[0][-1] == "0" and int(rows[1][-1]) > 0  # cache hits: none from the empty cache, then every program
    assert "second / first run" in out
