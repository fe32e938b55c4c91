"""Jobs over several processes and resumed jobs (issue 17): `jax-refine inpaint --distributed`
with two processes of 2 forced CPU devices each, connected through jax.distributed on
127.0.0.1, gives the one-process run's outputs bit for bit; a killed job resumed with
--skip-existing keeps its finished outputs and completes the others."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jax_refine import cli, jobs

from conftest import GOLDEN

REPO = Path(__file__).resolve().parents[1]


def test_split_balances_pixels_deterministically():
    weights = [400, 300, 200, 100, 100, 0]
    owners = jobs.split(weights, 2)
    assert owners == [0, 1, 1, 0, 0, 1]  # heaviest first to the least loaded, ties to the lower index
    loads = [sum(w for w, o in zip(weights, owners) if o == p) for p in range(2)]
    assert loads == [600, 500] and jobs.split(weights, 2) == owners
    assert jobs.split([5] * 7, 3) == [0, 1, 2, 0, 1, 2, 0]
    assert jobs.split(weights, 1) == [0] * 6


def lama_folder(root: Path) -> Path:
    """A LaMa-layout folder: 3 sizes, up to 3 masks per image, a sub-folder, a JPEG, a corrupt file."""
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    sources = {name: (Image.open(GOLDEN / f"{name}.png").convert("RGB"), Image.open(GOLDEN / f"{name}_mask.png"))
               for name in ("coffee_300x400", "chelsea_240x296", "astronaut_251x317")}
    layout = [("a", "coffee_300x400", (80, 64), 2), ("b", "chelsea_240x296", (64, 48), 3),
              ("sub/c", "astronaut_251x317", (96, 72), 1), ("d", "chelsea_240x296", (80, 64), 1),
              ("e", "coffee_300x400", (64, 48), 1)]
    for stem, source, size, n_masks in layout:
        image, mask = (x.resize(size) for x in sources[source])
        image.save(data / f"{stem}{'.jpg' if stem == 'sub/c' else '.png'}", quality=95)
        for k in range(n_masks):
            mask.rotate(90 * k, expand=False).save(data / f"{stem}_mask{k:03d}.png")
    (data / "broken.png").write_bytes(np.random.default_rng(0).bytes(3000))
    sources["coffee_300x400"][1].resize((80, 64)).save(data / "broken_mask.png")
    return data


def cli_command(*args):
    return [sys.executable, "-m", "jax_refine.cli", "inpaint", *map(str, args)]


def environment(devices: int) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outputs(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, tiny_checkpoint):
    data = lama_folder(tmp_path)
    settings = ["--model", tiny_checkpoint, "--batch-size", 2, "--min-side", 32, "--n-iters", 2,
                "--compilation-cache", tmp_path / "cache"]
    alone = subprocess.run(cli_command(data, "-o", tmp_path / "one", *settings), env=environment(2),
                           capture_output=True, text=True, timeout=600)
    assert alone.returncode == 1, alone.stderr[-3000:]
    assert "8 done, 1 failed" in alone.stdout

    results = start_two(lambda index: data, tmp_path / "two", settings)
    assert [code for code, *_ in results] == [1, 1], [err[-3000:] for *_, err in results]
    (_, out0, err0), (_, out1, err1) = results

    one, two = outputs(tmp_path / "one"), outputs(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 8
    for name in one:
        np.testing.assert_array_equal(two[name], one[name], err_msg=name)
    # each process wrote its share and its own report; together every output once
    reports = [json.loads((tmp_path / "two" / ".jax-refine" / f"process-{i}-of-2.json").read_text()) for i in (0, 1)]
    shares = [{Path(p).relative_to(tmp_path / "two").as_posix() for p in r["written"]} for r in reports]
    assert shares[0] and shares[1] and not shares[0] & shares[1] and shares[0] | shares[1] == set(one)
    assert sum(len(r["failures"]) for r in reports) == 1
    # process 0 prints the job's summary: the corrupt item once; process 1 prints none
    assert "8 done, 1 failed" in out0 and "over 2 processes" in out0
    assert out0.count("broken.png") == 1 and f"{data / 'broken.png'}: cannot read image" in out0
    assert "done," not in out1 and "broken" not in out1  # (its stdout has gloo's connection lines)
    assert (err0 + err1).count(f"failed: {data / 'broken.png'}") == 1  # by the process that owned it
    assert not list((tmp_path / "two").rglob("*.partial"))


@pytest.mark.slow
def test_killed_job_resumes_without_redoing_finished_outputs(tmp_path, tiny_checkpoint):
    data = tmp_path / "data"
    data.mkdir()
    image = Image.open(GOLDEN / "coffee_300x400.png").convert("RGB").resize((80, 64))
    mask = Image.open(GOLDEN / "coffee_300x400_mask.png").resize((80, 64))
    for index in range(10):
        image.rotate(36 * index).save(data / f"p{index}.png")
        mask.save(data / f"p{index}_mask.png")
    settings = ["--model", tiny_checkpoint, "--min-side", 32, "--n-iters", 4]
    assert cli.main(["inpaint", str(data), "-o", str(tmp_path / "reference"), *map(str, settings), "-q"]) == 0
    reference = outputs(tmp_path / "reference")

    out = tmp_path / "out"
    job = subprocess.Popen(cli_command(data, "-o", out, *settings), env=environment(1),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(list(out.glob("p*.png"))) < 3 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("p*.png")}
    assert 3 <= len(finished) < 10, "the job was not killed half-way"
    # what a kill during a write leaves, and a damaged output: neither may be trusted
    unfinished = sorted({f"p{i}_mask.png" for i in range(10)} - set(finished))
    (out / f".{unfinished[0]}.x1y2z3w4.partial").write_bytes(b"")
    (out / unfinished[1]).write_bytes((tmp_path / "reference" / unfinished[1]).read_bytes()[:200])

    done = subprocess.run(cli_command(data, "-o", out, *settings, "--skip-existing"), env=environment(1),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{10 - len(finished)} done, 0 failed, {len(finished)} skipped (outputs complete)" in done.stdout
    assert f"skipping {len(finished)} item(s) whose outputs are complete" in done.stderr
    assert f"{out / unfinished[1]} is not a complete result of this item: inpainting it again" in done.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("p*.png") if p.name in finished} == finished
    resumed = outputs(out)
    assert sorted(resumed) == sorted(reference)
    for name in reference:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)
    assert not list(out.glob(".*"))


def start_two(data_of, out: Path, settings, timeout=600):
    """Run the CLI as processes 0 and 1 of one jax.distributed job (input folder data_of(i));
    [(returncode, stdout, stderr)] of both, killed if they outlive `timeout`."""
    port = free_port()
    processes = [subprocess.Popen(cli_command(data_of(index), "-o", out, *settings, "--distributed",
                                              "--coordinator", f"127.0.0.1:{port}", "--num-processes", 2,
                                              "--process-id", index),
                                  env=environment(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for index in range(2)]
    try:
        streams = [p.communicate(timeout=timeout) for p in processes]
        return [(p.returncode, *out_err) for p, out_err in zip(processes, streams)]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_processes_that_see_different_files_refuse_to_start(tmp_path, tiny_checkpoint):
    data = lama_folder(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(data, other / "data")
    (other / "data" / "e_mask000.png").unlink()  # this host sees one mask less
    results = start_two(lambda index: data if index == 0 else other / "data", tmp_path / "out",
                        ["--model", tiny_checkpoint, "--no-refine"], timeout=300)
    for index, (code, out, err) in enumerate(results):
        assert code == cli.EXIT_USAGE, err[-3000:]
        assert f"error: process {index} found other work than process(es) {1 - index}: every host must see " \
               "the same input files" in err
    assert not (tmp_path / "out").exists()
