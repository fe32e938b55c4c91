"""What `load()` reads is an input (issue 23): jax_refine.json's bounds, the stored shapes,
the parameters' digest and their finiteness are checked, each before the next costs anything."""

import json
import shutil
import time

import numpy as np
import pytest

import jax_refine
from jax_refine import checkpoint
from jax_refine.checkpoint import CheckpointError, read_metadata

from conftest import GOLDEN


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return jax_refine.convert(GOLDEN / "tinylama.ckpt", tmp_path_factory.mktemp("ck") / "tiny")


@pytest.fixture
def copy(converted, tmp_path):
    """A copy of the converted golden model, and a function editing its jax_refine.json."""
    path = shutil.copytree(converted, tmp_path / "copy")

    def edit(change):
        meta = json.loads((path / "jax_refine.json").read_text())
        change(meta)
        (path / "jax_refine.json").write_text(json.dumps(meta))
        return path
    return path, edit


def test_the_digest_is_recorded_at_conversion_and_matches_the_arrays(converted):
    meta = read_metadata(converted)
    config = checkpoint.config_from_record(meta["config"], "test")
    assert meta["params_sha256"] == checkpoint.params_digest(checkpoint.read_params(converted, config))
    assert len(meta["params_sha256"]) == 64


@pytest.mark.parametrize("field, value, reason", [
    ("n_downsampling", 100_000, "n_downsampling=100000 (allowed: an int in 1..8)"),
    ("n_blocks", 65, "n_blocks=65 (allowed: an int in 1..64)"),
    ("ngf", 10**9, "ngf=1000000000 (allowed: an int in 1..1024)"),
    ("ngf", True, "ngf=True"),
    ("refine_defaults", [["n_iters", 10**9]], "refine_defaults n_iters=1000000000 (allowed: 1..1000)"),
    ("refine_defaults", [["px_budget", 10**12]], "refine_defaults px_budget=1000000000000"),
    ("refine_defaults", [["max_scales", 1000]], "refine_defaults max_scales=1000 (allowed: 1..8)"),
    ("refine_defaults", [["lr", float("inf")]], "refine_defaults lr=inf"),
    ("refine_defaults", [["no_such_setting", 1]], "no_such_setting"),
    ("refine_defaults", [["remat", "everything"]], "remat must be one of"),
    ("refine_defaults", "n_iters", "expected [name, value] pairs"),
])
def test_configurations_out_of_bounds_are_refused_at_once(copy, field, value, reason):
    path, edit = copy
    edit(lambda meta: meta["config"].__setitem__(field, value))
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="configuration out of bounds") as err:
        jax_refine.load(path)
    assert time.monotonic() - start < 5  # refused before any layer is built
    assert reason in str(err.value)


def test_a_config_that_is_not_an_object_or_metadata_too_large_is_refused(copy):
    path, edit = copy
    edit(lambda meta: meta.__setitem__("config", [1, 2]))
    with pytest.raises(CheckpointError, match="config is a list, expected an object"):
        jax_refine.load(path)
    (path / "jax_refine.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(CheckpointError, match="over 1,048,576 bytes"):
        jax_refine.load(path)


def test_shapes_are_checked_against_the_config_before_any_array_is_read(copy, monkeypatch):
    import orbax.checkpoint as ocp

    path, edit = copy
    edit(lambda meta: meta["config"].__setitem__("n_blocks", 3))  # within bounds, not what is stored
    monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", lambda *a, **k: pytest.fail("arrays were read"))
    with pytest.raises(CheckpointError, match="do not match a LaMa generator") as err:
        jax_refine.load(path)
    assert "blocks.conv1.convg2l.kernel: (2, 3, 3, 48, 16) (expected (3, 3, 3, 48, 16))" in str(err.value)


def stored_params(path):
    """(config, flat {state path: array}) of the checkpoint at `path`."""
    config = checkpoint.config_from_record(read_metadata(path)["config"], "test")
    return config, checkpoint.read_params(path, config)


def test_parameters_not_matching_their_digest_are_refused(copy, tmp_path):
    path, _ = copy
    config, flat = stored_params(path)
    key = sorted(flat)[0]
    flat[key] = flat[key] + np.float32(1e-3)  # other weights of the same shapes, a valid orbax tree
    other = checkpoint.save_flat(flat, config, tmp_path / "other", source={})
    shutil.rmtree(path / "params")
    shutil.copytree(other / "params", path / "params")
    with pytest.raises(CheckpointError, match="do not match the digest recorded when they were written"):
        jax_refine.load(path)


def test_nan_weights_are_refused_not_filled_black(copy, tmp_path):
    path, _ = copy
    config, flat = stored_params(path)
    key = sorted(flat)[3]
    flat[key] = np.full_like(flat[key], np.nan)
    nan = checkpoint.save_flat(flat, config, tmp_path / "nan", source={})  # its digest matches the NaNs
    with pytest.raises(CheckpointError, match=r"weights hold NaN or infinite values in 1 tensors:\n    " + key[0]):
        jax_refine.load(nan)


def test_a_checkpoint_without_a_digest_still_loads(copy):
    path, edit = copy
    edit(lambda meta: meta.pop("params_sha256"))
    assert jax_refine.load(path).config.ngf == 8
