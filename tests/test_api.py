"""jax_refine.inpaint: input kinds in, the same kind out, known pixels kept, clear errors."""

import numpy as np
import pytest
from PIL import Image

from jax_refine import RefineConfig, inpaint, inpaint_with_info, load

from conftest import load_golden_image


@pytest.fixture(scope="module")
def small():
    image, mask = load_golden_image("coffee_300x400")
    return (image[:64, :80] * 255).round().astype(np.uint8), (mask[:64, :80] > 0)


def test_uint8_float_and_pil_give_the_same_fill(tiny_model, small):
    image, mask = small
    assert mask.any() and not mask.all()
    out_u8 = inpaint(image, mask, tiny_model, method="plain")
    out_f = inpaint(image.astype(np.float32) / 255, mask, tiny_model, method="plain")
    out_pil = inpaint(Image.fromarray(image), Image.fromarray(mask.astype(np.uint8) * 255), tiny_model, method="plain")
    assert out_u8.dtype == np.uint8 and out_f.dtype == np.float32 and isinstance(out_pil, Image.Image)
    np.testing.assert_array_equal(out_u8[~mask], image[~mask])  # known pixels bit-identical
    np.testing.assert_array_equal(np.asarray(out_pil), out_u8)
    np.testing.assert_array_equal(out_u8, np.clip(np.rint(out_f * 255), 0, 255).astype(np.uint8))
    assert np.abs(out_u8[mask].astype(int) - image[mask]).mean() > 1  # the hole was filled


def test_the_plain_pass_runs_in_the_configured_compute_dtype(tiny_model, small):
    image, mask = small
    image = image.astype(np.float32) / 255
    f32 = inpaint(image, mask, tiny_model, method="plain")
    bf16 = inpaint(image, mask, tiny_model, method="plain", config=RefineConfig(compute_dtype="bfloat16"))
    np.testing.assert_array_equal(bf16[~mask], image[~mask])
    difference = np.abs(bf16[mask] - f32[mask])
    assert 0 < difference.mean() < 0.02  # bfloat16 has 8 bits of mantissa: close, not equal


def test_rgba_gray_and_16_bit(tiny_model, small):
    image, mask = small
    alpha = np.full(image.shape[:2] + (1,), 77, np.uint8)
    rgba = inpaint(np.concatenate([image, alpha], -1), mask, tiny_model, method="plain")
    assert rgba.shape == image.shape[:2] + (4,) and (rgba[..., 3] == 77).all()
    gray = inpaint(Image.fromarray(image).convert("L"), mask, tiny_model, method="plain")
    assert gray.mode == "L" and gray.size == (80, 64)
    sixteen = inpaint(image.astype(np.uint16) * 257, mask, tiny_model, method="plain")
    assert sixteen.dtype == np.uint16
    np.testing.assert_array_equal(sixteen[~mask], image[~mask].astype(np.uint16) * 257)


def test_exif_rotation_is_applied(tiny_model, small):
    image, mask = small
    pil = Image.fromarray(image)
    exif = pil.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    import io
    buffer = io.BytesIO()
    pil.save(buffer, "JPEG", exif=exif.tobytes())
    rotated = Image.open(io.BytesIO(buffer.getvalue()))
    upright_mask = np.rot90(mask, -1)
    out = inpaint(rotated, upright_mask, tiny_model, method="plain")
    assert out.size == (64, 80)  # upright: width and height swapped


def test_empty_mask_returns_the_input_without_a_model(small):
    image, mask = small
    out = inpaint(image, np.zeros_like(mask), model="/nonexistent/model")
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("bad_image, bad_mask, message", [
    (np.zeros((64, 80, 3), np.uint8), np.zeros((60, 80), bool), "does not match the image size"),
    (np.zeros((0, 80, 3), np.uint8), np.zeros((0, 80), bool), "image is empty"),
    (np.full((64, 80, 3), np.nan, np.float32), np.ones((64, 80), bool), "NaN"),
    (np.full((64, 80, 3), 2.0, np.float32), np.ones((64, 80), bool), r"values in \[0, 1\]"),
    (np.zeros((64, 80, 5), np.uint8), np.ones((64, 80), bool), "image must be H x W x 3"),
    (np.zeros((64, 80, 3), np.uint8), np.full((64, 80), np.nan), "mask contains NaN"),
])
def test_bad_input_gives_a_clear_error(bad_image, bad_mask, message):
    with pytest.raises(ValueError, match=message):
        inpaint(bad_image, bad_mask, model="/nonexistent/model")


def test_loading_something_that_is_not_a_model_name_or_path_names_the_problem(tiny_model):
    with pytest.raises(TypeError, match=r"got Lama \(a loaded model needs no loading: pass it as it is\)"):
        load(tiny_model)
    with pytest.raises(TypeError, match="must be None, a known model name or a checkpoint path, got int"):
        load(3)


@pytest.mark.slow
def test_plain_batches_group_by_padded_size(tiny_model, monkeypatch):
    """Without refinement, 233x296 and 240x290 (both padded to 240x296) share one run; with
    refinement they run apart (their pyramids differ). Each result equals inpainting alone."""
    import jax_refine
    from jax_refine import api

    image, mask = load_golden_image("chelsea_240x296")
    images = [image[:233], image[:, :290], image[:, 3:293][::-1]]
    masks = [mask[:233] > 0, mask[:, :290] > 0, (mask[:, 3:293] > 0)[::-1]]
    runs = []
    group = api._inpaint_group
    monkeypatch.setattr(api, "_inpaint_group",
                        lambda sources, *a, **k: runs.append(len(sources)) or group(sources, *a, **k))
    plain, infos = jax_refine.inpaint_batch_with_info(images, masks, tiny_model, method="plain", batch_size=3)
    assert runs == [3]
    assert [info.work_size for info in infos] == [(233, 296), (240, 290), (240, 290)]
    for im, m, out in zip(images, masks, plain):
        np.testing.assert_allclose(out, inpaint(im, m, tiny_model, method="plain"), atol=1e-5)
    assert api.batch_key((233, 296), "plain", tiny_model) == (240, 296)


@pytest.mark.slow
def test_refined_batches_group_by_every_padded_level(tiny_model, monkeypatch):
    """233x296 and 240x290 pad to 240x296 and their half-size levels (116x148, 120x145) to
    120x152: one run, each image its own pyramid and the result it gets alone. 225x296
    halves to 112x148, which pads to 112x152: a run of its own."""
    import jax_refine
    from jax_refine import api

    image, mask = load_golden_image("chelsea_240x296")
    config = jax_refine.RefineConfig(min_side=100, n_iters=3)
    images = [image[:233], image[:, :290], image[:225]]
    masks = [mask[:233] > 0, mask[:, :290] > 0, mask[:225] > 0]
    keys = [api.batch_key(im.shape[:2], "refine", None, config) for im in images]
    assert keys[0] == keys[1] == ((120, 152), (240, 296), (120, 148)) and keys[2][0] == (112, 152)
    runs = []
    group = api._inpaint_group
    monkeypatch.setattr(api, "_inpaint_group",
                        lambda sources, *a, **k: runs.append(len(sources)) or group(sources, *a, **k))
    batch, infos = jax_refine.inpaint_batch_with_info(images, masks, tiny_model, config=config, batch_size=3)
    assert runs == [2, 1]
    assert [[s.size for s in info.scales] for info in infos] == [
        [(116, 148), (233, 296)], [(120, 145), (240, 290)], [(112, 148), (225, 296)]]
    assert [info.work_size for info in infos] == [(233, 296), (240, 290), (225, 296)]
    for im, m, out, info in zip(images, masks, batch, infos):
        alone, alone_info = inpaint_with_info(im, m, tiny_model, config=config)
        np.testing.assert_allclose(out, alone, atol=1e-6)
        assert info.scales[-1].losses.shape == (3, 1)  # its own column of the run's losses
        np.testing.assert_allclose(info.scales[-1].losses, alone_info.scales[-1].losses, atol=1e-6)


@pytest.mark.slow
def test_a_model_recommends_its_refinement_settings(tiny_model, small, tmp_path):
    import dataclasses

    from flax import nnx

    import jax_refine
    from jax_refine.checkpoint import model_from_flat
    from jax_refine.plan import model_defaults

    image, mask = small
    assert model_defaults(tiny_model) == jax_refine.RefineConfig()  # converted LaMa weights keep LaMa's
    flat = {path: v[...] for path, v in nnx.to_flat_state(nnx.state(tiny_model))}
    config = dataclasses.replace(tiny_model.config, refine_defaults={"min_side": 32, "n_iters": 3})
    recommending = jax_refine.load(jax_refine.save(model_from_flat(flat, config), tmp_path / "m"))
    assert recommending.config.refine_defaults == (("min_side", 32), ("n_iters", 3))
    out, info = inpaint_with_info(image, mask, recommending)
    assert [s.iterations for s in info.scales] == [1, 3]  # 64 x 80 at min_side 32: two scales
    explicit = inpaint(image, mask, tiny_model, config=jax_refine.RefineConfig(min_side=32, n_iters=3))
    np.testing.assert_array_equal(out, explicit)
    # an explicit config replaces the recommendation
    _, info = inpaint_with_info(image, mask, recommending, config=jax_refine.RefineConfig())
    assert len(info.scales) == 1
