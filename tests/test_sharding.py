"""Runs over several devices: data-parallel equals single-device; spatial splitting is close
(also with remat="decoder", whose decoder tail runs in row tiles).

The CPU backend is split into 4 devices with XLA_FLAGS=--xla_force_host_platform_device_count=4,
which must be set before JAX starts, so the comparison runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[2])
from conftest import load_golden_image
import jax_refine
from jax_refine import RefineConfig, refine as refine_lib
from jax_refine.placement import Placement

assert len(jax.devices()) == 4, jax.devices()
model = jax_refine.load(sys.argv[1])
image, mask = load_golden_image("chelsea_240x296")
images = [image, image[::-1].copy(), image[:, ::-1].copy()]
masks = [mask > 0, (mask > 0)[::-1], (mask > 0)[:, ::-1]]
x = np.stack(images)
m = np.stack(masks)[..., None].astype(np.float32)
config = RefineConfig(min_side=100, n_iters=4)
single, single_scales = refine_lib.multiscale(model, x, m, config)
sharded, sharded_scales = refine_lib.multiscale(model, x, m, config, devices=jax.devices())  # 3 images padded to 4
plain_single, _ = refine_lib.predict(model, x, m)
plain_sharded, _ = refine_lib.predict(model, x, m, devices=jax.devices())
# inpaint_batch on 4 devices: uint8 images of three sizes, one without a hole; 233x296 shares
# the 240x296 images' run (every level pads alike), so that run holds 4 images of 2 sizes
u8 = [(im * 255).round().astype(np.uint8) for im in images + [image[:200], image[:233]]]
holes = masks + [np.zeros((200, 296), bool), masks[0][:233]]
batch = jax_refine.inpaint_batch(u8, holes, model, config=config)
alone = [jax_refine.inpaint(im, h, model, config=config) for im, h in zip(u8, holes)]
# one image's rows split over the 4 devices
spatial, spatial_scales = refine_lib.multiscale(model, x[:1], m[:1], config, devices=jax.devices(), spatial=True)
alone_refined, alone_scales = refine_lib.multiscale(model, x[:1], m[:1], config)
# the same with remat="decoder" and the full-resolution tail in tiles of 16 rows over the split rows
tiled_config = RefineConfig(min_side=100, n_iters=4, remat="decoder", tile_pixels=16 * 296)
tiled, tiled_scales = refine_lib.multiscale(model, x[:1], m[:1], tiled_config, devices=jax.devices(), spatial=True)
# rows that do not divide over the devices: said, not silently unsplit
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    Placement(jax.devices(), spatial=True).batched((np.zeros((1, 30, 8, 3), np.float32),))
print(json.dumps(dict(
    uneven_warning=[str(w.message) for w in caught],
    spatial_max=float(np.abs(spatial - alone_refined).max()), spatial_mean=float(np.abs(spatial - alone_refined).mean()),
    spatial_losses=float(max(np.abs(a.losses - b.losses).max() for a, b in zip(spatial_scales[1:], alone_scales[1:]))),
    tiled_max=float(np.abs(tiled - alone_refined).max()), tiled_mean=float(np.abs(tiled - alone_refined).mean()),
    tiled_losses=float(max(np.abs(a.losses - b.losses).max() for a, b in zip(tiled_scales[1:], alone_scales[1:]))),
    refine=float(np.abs(sharded - single).max()),
    losses=float(max(np.abs(a.losses - b.losses).max() for a, b in zip(single_scales[1:], sharded_scales[1:]))),
    loss_shape=list(sharded_scales[1].losses.shape),
    predict=float(np.abs(plain_sharded - plain_single).max()),
    batch_vs_alone=[int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(batch, alone)],
    unchanged=bool(np.array_equal(batch[3], u8[3])),
)))
"""


@pytest.mark.slow
def test_data_parallel_equals_single_device(tiny_checkpoint):
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.pathsep.join([str(tests.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_checkpoint), str(tests)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loss_shape"] == [4, 3]
    assert result["uneven_warning"] == ["spatial split: the padded height 30 is not a multiple of the 4 devices, "
                                        "so this scale runs whole on every device"]
    assert result["refine"] <= 1e-6 and result["losses"] <= 1e-6 and result["predict"] <= 1e-6
    # each image of a 4-device batch gets what it gets alone (uint8: within one rounding step)
    assert result["batch_vs_alone"][3] == 0 and result["unchanged"]
    assert max(result["batch_vs_alone"]) <= 1
    # spatial: the same program partitioned by rows; only float summation order differs (Adam
    # turns that into small pixel differences, as between torch thread counts)
    assert result["spatial_losses"] <= 1e-5
    assert result["spatial_mean"] <= 1e-3 and result["spatial_max"] <= 2e-2
    # ... also with the decoder's row tiles (remat="decoder") inside the split rows
    assert result["tiled_losses"] <= 1e-5
    assert result["tiled_mean"] <= 1e-3 and result["tiled_max"] <= 2e-2


@pytest.mark.slow
def test_multihost_example_runs_on_one_host(tmp_path, tiny_checkpoint):
    """examples/multihost.py with one process and 4 local devices writes every result, one
    per mask (LaMa's names: an image with two masks gives two outputs)."""
    from PIL import Image

    from conftest import GOLDEN

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "in").mkdir()
    for name in ("coffee_300x400", "chelsea_240x296"):
        Image.open(GOLDEN / f"{name}.png").save(tmp_path / "in" / f"{name}.png")
        mask = Image.open(GOLDEN / f"{name}_mask.png")
        mask.save(tmp_path / "in" / f"{name}_mask001.png")
        mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "in" / f"{name}_mask002.png")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(root / "examples" / "multihost.py"), str(tmp_path / "in"),
                           str(tmp_path / "out"), "--model", str(tiny_checkpoint), "--batch-size", "4"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 done, 0 failed" in done.stdout
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == [f"{name}_mask00{k}.png" for name in ("chelsea_240x296", "coffee_300x400") for k in (1, 2)]
    for name in ("coffee_300x400", "chelsea_240x296"):
        image = np.asarray(Image.open(GOLDEN / f"{name}.png").convert("RGB"))
        hole = np.asarray(Image.open(GOLDEN / f"{name}_mask.png").convert("L")) > 0
        first, second = (np.asarray(Image.open(tmp_path / "out" / f"{name}_mask00{k}.png")) for k in (1, 2))
        assert np.array_equal(first[~hole], image[~hole]) and np.array_equal(second[~hole[:, ::-1]],
                                                                             image[~hole[:, ::-1]])
        assert not np.array_equal(first, second)
