"""LaMa's pix2pixhd_global generator (lama-regular, big-lama-regular): conversion without
torch, the pixels of LaMa's own code, and refinement against the PyTorch reference.

The fixtures (tests/golden/tinypix2pixhd.ckpt, pix2pixhd_predict_*) were made by LaMa's own
GlobalGenerator (tests/golden/make_pix2pixhd_golden.py). LaMa's refinement handles FFC
generators only, so refinement is checked against tests/reference/lama_torch.py.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_refine import CheckpointError, RefineConfig, convert, inpaint_with_info, load
from jax_refine import refine as refine_lib
from jax_refine.convert import read_generator
from jax_refine.model import Lama, count_parameters
from jax_refine.pix2pixhd import BIG_LAMA_REGULAR, LAMA_REGULAR, Pix2PixHD, abstract_model

import torch_writer
from conftest import GOLDEN, load_golden_image

CKPT = GOLDEN / "tinypix2pixhd.ckpt"
CASES = ["astronaut_251x317", "chelsea_240x296"]
REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = {"architecture": "pix2pixhd_global", "ngf": 8, "n_downsampling": 3, "n_blocks": 2, "input_nc": 4,
               "output_nc": 3, "max_features": 1024, "hole_fill": "zeros", "output": "sigmoid",
               "refine_defaults": []}


@pytest.fixture(scope="module")
def p2p_checkpoint(tmp_path_factory):
    return convert(CKPT, tmp_path_factory.mktemp("p2p") / "tiny")


@pytest.fixture(scope="module")
def p2p_model(p2p_checkpoint):
    return load(p2p_checkpoint)


def _binary(mask):
    return (mask > 0).astype(np.float32)[None, ..., None]


# ------------------------------------------------------------------------ conversion


def test_converts_where_import_torch_fails(tmp_path):
    script = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from jax_refine import convert
convert({str(CKPT)!r}, {str(tmp_path / "out")!r})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((tmp_path / "out" / "jax_refine.json").read_text())
    assert meta["config"] == TINY_CONFIG
    assert meta["source"]["file"] == CKPT.name and meta["source"]["format"]


def test_loads_as_the_architecture_it_records(p2p_checkpoint, p2p_model):
    lama = json.loads((GOLDEN / "pix2pixhd_predict_chelsea_240x296.json").read_text())
    assert isinstance(p2p_model, Pix2PixHD) and p2p_model.use_running_average
    assert count_parameters(p2p_model) == lama["parameters"] == 199_883  # LaMa's GlobalGenerator's count
    assert json.loads((p2p_checkpoint / "jax_refine.json").read_text())["config"] == TINY_CONFIG


def test_released_configurations_have_lamas_parameter_counts():
    # GlobalGenerator(4, 3, ngf=64, n_downsampling=3, n_blocks=9 / 15) in LaMa's code
    assert count_parameters(abstract_model(LAMA_REGULAR)) == 45_617_731
    assert count_parameters(abstract_model(BIG_LAMA_REGULAR)) == 73_947_715


def test_a_checkpoint_without_architecture_is_ffc_resnet(tiny_checkpoint, tmp_path):
    old = shutil.copytree(tiny_checkpoint, tmp_path / "old")
    meta = json.loads((old / "jax_refine.json").read_text())
    assert meta["config"].pop("architecture") == "ffc_resnet"
    (old / "jax_refine.json").write_text(json.dumps(meta))
    assert isinstance(load(old), Lama)
    meta["config"]["architecture"] = "unet"
    (old / "jax_refine.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown generator architecture 'unet'.*known: ffc_resnet, "
                                              "pix2pixhd_global"):
        load(old)


def _variant(tmp_path, state=None, generator=None):
    """tinypix2pixhd.ckpt with its state_dict and hyper_parameters.generator changed."""
    tensors, hyper_parameters = read_generator(CKPT)
    tensors = {k: tensors[k] for k in tensors} if state is None else state({k: tensors[k] for k in tensors})
    hyper = dict(hyper_parameters["generator"]) if generator is None else generator(dict(hyper_parameters["generator"]))
    obj = {"state_dict": {"generator." + k: torch_writer.Tensor(np.asarray(v)) for k, v in tensors.items()},
           "hyper_parameters": {"generator": hyper}}
    torch_writer.save(tmp_path / "variant.ckpt", obj)
    return tmp_path / "variant.ckpt"


@pytest.mark.parametrize("change, words", [
    (lambda g: {k: v for k, v in g.items() if k != "add_out_act"}, "add_out_act True (only 'sigmoid' is supported)"),
    (lambda g: g | {"padding_type": "zero"}, "unsupported option padding_type='zero'"),
    (lambda g: g | {"kind": "ffc_resnet"}, "kind 'ffc_resnet' in hyper_parameters but the tensors are a "
                                           "'pix2pixhd_global' generator"),
    (lambda g: g | {"n_blocks": 3}, "n_blocks=3 in hyper_parameters but the tensors imply 2"),
])
def test_options_this_port_lacks_are_refused(tmp_path, change, words):
    with pytest.raises(CheckpointError, match="generator configuration not supported") as err:
        convert(_variant(tmp_path, generator=change), tmp_path / "out")
    assert words in str(err.value)
    assert not (tmp_path / "out").exists()


def test_keys_and_shapes_are_checked_strictly(tmp_path):
    def damage(state):
        del state["model.13.conv_block.5.bias"]  # block 0's second conv
        state["model.13.conv_block.1.weight"] = state["model.13.conv_block.1.weight"][:, :, :1, :1]
        state["model.13.extra.weight"] = np.zeros(3, np.float32)
        return state

    with pytest.raises(CheckpointError) as err:
        convert(_variant(tmp_path, state=damage), tmp_path / "out")
    message = str(err.value)
    assert "missing keys (1):\n    model.13.conv_block.5.bias" in message
    assert "unexpected keys (1):\n    model.13.extra.weight" in message
    assert "model.13.conv_block.1.weight: (64, 64, 1, 1) (expected (64, 64, 3, 3))" in message


# ------------------------------------------------------------------------ prediction


@pytest.mark.parametrize("name", CASES)
def test_predict_matches_lamas_own_code(p2p_model, name):
    image, mask = load_golden_image(name)
    out, pred = refine_lib.predict(p2p_model, image[None], _binary(mask))
    np.testing.assert_allclose(out[0], np.load(GOLDEN / f"pix2pixhd_predict_{name}.npy"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(pred[0], np.load(GOLDEN / f"pix2pixhd_predict_{name}_predicted_image.npy"), rtol=0,
                               atol=1e-5)


def test_front_ends_after_the_downsampling(p2p_model):
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 40, 56, 4)), jnp.float32)
    z = p2p_model.front(x)
    assert z.shape == (2, 5, 7, 64)
    np.testing.assert_allclose(np.asarray(p2p_model.rear(z)), np.asarray(p2p_model(x)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiples of 8"):
        p2p_model.front(x[:, :36])


@pytest.mark.slow
def test_remat_gives_the_same_gradient(p2p_model):
    """The shared decoder's remat policies and row-tiled tail (4 tiles of 8 rows here) give
    the gradient of the plain rear."""
    graphdef, state = nnx.split(p2p_model)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 32, 40, 4)), jnp.float32)
    z = p2p_model.front(x)

    def grad(remat):
        return jax.grad(lambda z: jnp.sum(nnx.merge(graphdef, state).rear(z, remat=remat, tile_pixels=8 * 40) ** 2))(z)

    stored = grad("none")
    for policy in ("blocks", "decoder", "all"):
        np.testing.assert_allclose(np.asarray(grad(policy)), np.asarray(stored), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ refinement


@pytest.mark.slow
def test_refinement_matches_the_torch_reference(p2p_model):
    """Two scales of coffee (152 x 200 and 304 x 400 padded), 5 iterations at lr 0.01: every
    per-iteration loss as the PyTorch reference's, and the loss falls. Achieved on this CPU:
    losses within 1.2e-7, image max |d| 6e-7 (bounds: 1e-5, and 1e-3 for the image, where
    Adam may amplify reduction-order noise as in test_refine)."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference import lama_torch as ref

    image, mask = load_golden_image("coffee_300x400")
    config = RefineConfig(min_side=128, n_iters=5, lr=0.01)
    out, scales = refine_lib.multiscale(p2p_model, image[None], _binary(mask), config)
    torch_model = ref.Pix2PixHDGenerator(ngf=8, n_downsampling=3, n_blocks=2)
    torch_model.load_state_dict(ref.load_golden_state_dict(CKPT), strict=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected, info = ref.refine(torch_model.eval(), image, _binary(mask)[0, ..., 0], min_side=128, n_iters=5,
                                    lr=0.01)
    finally:
        torch.set_num_threads(threads)
    assert [s.padded_size for s in scales] == [tuple(i["padded_hw"]) for i in info] == [(152, 200), (304, 400)]
    losses = scales[1].losses[:, 0]
    diff = np.abs(out[0] - expected)
    print(f"losses {losses}, max |d| {np.abs(losses - info[1]['losses']).max():.3g}; "
          f"image mean |d| {diff.mean():.3g}, max |d| {diff.max():.3g}")
    np.testing.assert_allclose(losses, info[1]["losses"], rtol=0, atol=1e-5)
    assert np.all(np.diff(losses) < -5e-4)  # every step lowers the loss, by far more than the tolerance
    assert diff.mean() <= 1e-5 and diff.max() <= 1e-3


@pytest.mark.slow
def test_inpaint_refines_a_converted_checkpoint(p2p_checkpoint, p2p_model):
    """The public API on the checkpoint's path: refinement at two scales keeps the known
    pixels, lowers the loss, and its result is refine.multiscale's."""
    image, mask = load_golden_image("chelsea_240x296")
    config = RefineConfig(min_side=100, n_iters=3)
    out, info = inpaint_with_info(image, mask, str(p2p_checkpoint), config=config)
    assert out.shape == image.shape and info.refined and [s.refined for s in info.scales] == [False, True]
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    assert np.all(np.diff(info.scales[1].losses[:, 0]) < 0)
    expected, _ = refine_lib.multiscale(p2p_model, image[None], _binary(mask), config)
    np.testing.assert_allclose(out, expected[0], rtol=0, atol=1e-6)
