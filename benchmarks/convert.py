"""Convert a checkpoint with the exact Big-LaMa layout (random values) and report time and memory.

    python benchmarks/convert.py [--keep DIR]

Builds a Lightning-style `best.ckpt` (generator + discriminator keys of
tests/golden/keys_biglama.txt, random float32 values) with torch (a benchmark-only
dependency), then converts it in a fresh process without torch and prints wall time, peak
RSS and the peak RSS added by the conversion, next to the file size. Target: < 20 s and
added memory < 2x the file size.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "tests" / "golden" / "keys_biglama.txt"

CHILD = r"""
import json, resource, sys, time
sys.modules["torch"] = None  # the converter must not need torch
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
import jax, jax_refine
jax.block_until_ready(jax.numpy.zeros(1))  # start the backend: its memory is not the converter's
before = rss()
t = time.perf_counter()
jax_refine.convert(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(seconds=seconds, rss_before=before, peak_rss=peak)))
"""


def write_checkpoint(path: Path):
    import torch

    rng = np.random.default_rng(0)
    state = {}
    for line in KEYS.read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        state[key] = (torch.zeros(shape, dtype=torch.int64) if dtype == "int64"
                      else torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)))
    torch.save({"epoch": 1, "global_step": 1, "pytorch-lightning_version": "1.2.9", "state_dict": state,
                "hyper_parameters": {"generator": {"kind": "ffc_resnet", "ngf": 64, "n_downsampling": 3,
                                                   "n_blocks": 18, "add_out_act": "sigmoid"}}}, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="keep the checkpoint and the conversion here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        src, dst = work / "best.ckpt", work / "big-lama"
        if not src.exists():
            write_checkpoint(src)
        shutil.rmtree(dst, ignore_errors=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(dst)], env=env, check=True,
                             capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        size = src.stat().st_size
        added = r["peak_rss"] - r["rss_before"]
        print(f"file: {size / 2**20:.1f} MiB ({src.name}, Big-LaMa layout, random values)")
        print(f"conversion: {r['seconds']:.2f} s   (target < 20 s)")
        print(f"peak RSS: {r['peak_rss'] / 2**20:.0f} MiB; before conversion {r['rss_before'] / 2**20:.0f} MiB; "
              f"added {added / 2**20:.0f} MiB = {added / size:.2f} x file size   (target < 2x)")


if __name__ == "__main__":
    main()
