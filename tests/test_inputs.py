"""Hostile and unusual inputs to `inpaint` (issue 15, items 8-10): every PIL image mode, mask
alpha channels and thresholds, holes over half the image, tiny images with extreme settings."""

import io
import itertools
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import jax_refine
from jax_refine import RefineConfig, images, inpaint, inpaint_with_info
from jax_refine import plan
from jax_refine import pyramid

from conftest import load_golden_image


@pytest.fixture(scope="module")
def photo():
    """(RGB PIL image 80x64, hole bool (64, 80)) cut from a golden input."""
    image, mask = load_golden_image("coffee_300x400")
    return Image.fromarray((image[:64, :80] * 255).round().astype(np.uint8)), mask[:64, :80] > 0


@pytest.fixture(scope="module")
def references(photo, tiny_model):
    """The plain fills of the RGB photo and of its L version (int arrays)."""
    rgb, hole = photo
    return {mode: np.asarray(inpaint(rgb.convert(mode), hole, tiny_model, method="plain")).astype(int)
            for mode in ("RGB", "L")}


def test_pillow_is_the_newest_allowed():
    """The modes below are tested on the Pillow installed: the newest major version pyproject allows."""
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    [cap] = re.findall(r'"pillow>=[0-9.]+,<([0-9]+)"', pyproject)
    assert int(Image.__version__.split(".")[0]) == int(cap) - 1


# mode -> (how the test image is made from the RGB photo, the mode inpaint gives back,
#          the reference mode its fill is compared in, largest mean |difference| of the fill)
MODES = {
    "RGB": (lambda im: im, "RGB", "RGB", 0),
    "RGBA": (lambda im: im.convert("RGBA"), "RGBA", "RGB", 0),
    "RGBa": (lambda im: im.convert("RGBA").convert("RGBa"), "RGBA", "RGB", 0),
    "RGBX": (lambda im: im.convert("RGBX"), "RGB", "RGB", 0),
    "CMYK": (lambda im: im.convert("CMYK"), "CMYK", "RGB", 0),
    "YCbCr": (lambda im: im.convert("YCbCr"), "YCbCr", "RGB", 3),  # PIL's conversions round
    "HSV": (lambda im: im.convert("HSV"), "HSV", "RGB", 3),
    "LAB": (lambda im: im.convert("LAB"), "RGB", "RGB", 3),        # PIL cannot convert RGB to LAB
    "L": (lambda im: im.convert("L"), "L", "L", 0),
    "LA": (lambda im: im.convert("LA"), "LA", "L", 0),
    "La": (lambda im: im.convert("LA").convert("La"), "LA", "L", 0),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_8_bit_modes_keep_known_pixels_and_fill_as_rgb_or_grey(mode, photo, references, tiny_model):
    make, out_mode, ref_mode, mean_error = MODES[mode]
    image, hole = make(photo[0]), photo[1]
    assert image.mode == mode
    out = inpaint(image, hole, tiny_model, method="plain")
    assert out.mode == out_mode and out.size == image.size
    source = image if image.mode == out_mode else image.convert(out_mode)
    np.testing.assert_array_equal(np.asarray(out)[~hole], np.asarray(source)[~hole])
    fill = np.asarray(out.convert(ref_mode)).astype(int)[hole]
    assert np.abs(fill - references[ref_mode][hole]).mean() <= mean_error
    if out_mode.endswith("A"):  # alpha kept everywhere, holes included
        np.testing.assert_array_equal(np.asarray(out)[..., -1], np.asarray(source)[..., -1])


@pytest.mark.parametrize("mode, out_mode", [("1", "L"), ("P", "RGB"), ("PA", "RGBA")])
def test_bilevel_and_palette_images_are_read_as_pil_converts_them(mode, out_mode, photo, tiny_model):
    image, hole = photo[0].convert("RGBA" if mode == "PA" else "RGB").convert(mode), photo[1]
    out = inpaint(image, hole, tiny_model, method="plain")
    assert out.mode == out_mode
    np.testing.assert_array_equal(np.asarray(out), np.asarray(inpaint(image.convert(out_mode), hole, tiny_model,
                                                                      method="plain")))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N", "I"])
def test_16_bit_grey_is_inpainted_at_16_bits(mode, photo, references, tiny_model):
    """The issue's 16-bit PNG failed with "Invalid mode for data type" (Pillow 13)."""
    grey = np.asarray(photo[0].convert("L")).astype(np.uint16) * 257  # the L photo at 16 bits
    layout = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2", "I": "=i4"}[mode]
    image = Image.frombytes(mode, (80, 64), grey.astype(layout).tobytes())  # PIL's convert() clips to 8 bits
    assert image.mode == mode
    out = inpaint(image, photo[1], tiny_model, method="plain")
    assert out.mode == ("I" if mode == "I" else "I;16")
    values, hole = np.asarray(out).astype(int), photo[1]
    np.testing.assert_array_equal(values[~hole], grey[~hole])
    assert np.abs(values[hole] / 257 - references["L"][hole]).max() <= 1  # the 8-bit fill, at 16 bits
    assert len(np.unique(values[hole] % 257)) > 10  # not the 8-bit fill scaled: finer steps


def test_16_bit_png_file_round_trip(tmp_path, photo, tiny_model):
    grey = np.asarray(photo[0].convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as image:
        out = inpaint(image, photo[1], tiny_model, method="plain")
    out.save(tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as written:
        assert written.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(written)[~photo[1]], grey[~photo[1]])


def test_float_tiff_keeps_its_values(tmp_path, photo, references, tiny_model):
    """The issue's mode-F TIFF came back RGB with every known pixel 0."""
    grey = np.asarray(photo[0].convert("L")).astype(np.float32) / 255
    Image.fromarray(grey).save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as image:
        assert image.mode == "F"
        out = inpaint(image, photo[1], tiny_model, method="plain")
    assert out.mode == "F"
    values, hole = np.asarray(out), photo[1]
    np.testing.assert_array_equal(values[~hole], grey[~hole])
    assert np.abs(values[hole] * 255 - references["L"][hole]).max() <= 1
    with pytest.raises(ValueError, match=r"float image must have values in \[0, 1\], got \[56, 247\]"):
        inpaint(Image.fromarray(grey * 255), photo[1], tiny_model)
    with pytest.raises(ValueError, match=r"mode I\) image must have values in 0..65535 \(16 bits\), got -5..-5"):
        inpaint(Image.fromarray(np.full((64, 80), -5, np.int32)), photo[1], tiny_model)


def test_grey_alpha_arrays(photo, references, tiny_model):
    grey = np.asarray(photo[0].convert("L"))
    la = np.stack([grey, np.full_like(grey, 200)], axis=-1)
    out = inpaint(la, photo[1], tiny_model, method="plain")
    assert out.shape == la.shape and (out[..., 1] == 200).all()
    np.testing.assert_array_equal(out[..., 0], references["L"])


# --------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------

H, W = 64, 80
HOLE = np.zeros((H, W), bool)
HOLE[10:30, 20:50] = True


def rgba(colour, alpha):
    """An RGBA uint8 mask: `colour` (3 values or an (H, W, 3) array) with alpha (H, W)."""
    out = np.empty((H, W, 4), np.uint8)
    out[..., :3], out[..., 3] = colour, alpha
    return out


@pytest.mark.parametrize("name, mask", [
    ("hole drawn only in alpha", rgba((0, 0, 0), np.where(HOLE, 255, 0))),
    ("white strokes on a transparent white layer", rgba((255, 255, 255), np.where(HOLE, 255, 0))),
    ("opaque RGBA: the colour is the mask", rgba(np.where(HOLE[..., None], 255, 0), 255)),
    ("grey + alpha", np.stack([np.zeros((H, W), np.uint8), np.where(HOLE, 255, 0).astype(np.uint8)], -1)),
])
def test_alpha_channel_of_masks(name, mask):
    for given in (mask, Image.fromarray(mask)):
        np.testing.assert_array_equal(images.hole_map(given, (H, W)), HOLE, err_msg=name)


def test_palette_mask_with_a_transparent_index():
    mask = Image.fromarray(HOLE.astype(np.uint8), "L").convert("P")
    mask.putpalette([255, 255, 255, 255, 255, 255])  # both indices white; index 0 transparent
    mask.info["transparency"] = 0
    np.testing.assert_array_equal(images.hole_map(mask, (H, W)), HOLE)


def test_mask_threshold_for_lossy_masks(tiny_model, photo):
    buffer = io.BytesIO()
    Image.fromarray(np.where(HOLE, 255, 0).astype(np.uint8)).save(buffer, "JPEG", quality=30)
    jpeg = Image.open(buffer)
    assert images.hole_map(jpeg, (H, W)).sum() > HOLE.sum() * 1.2  # LaMa's "> 0" grows the hole
    np.testing.assert_array_equal(images.hole_map(jpeg, (H, W), 0.5), HOLE)
    # the threshold is a share of the full scale of each kind of mask
    grey = np.where(HOLE, 0.6, 0.4)
    for mask in (grey, (grey * 255).astype(np.uint8), (grey * 65535).astype(np.uint16)):
        np.testing.assert_array_equal(images.hole_map(mask, (H, W), 0.5), HOLE)
        assert images.hole_map(mask, (H, W)).all()
    for bad in (1.0, -0.1, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="mask_threshold must be a number in"):
            inpaint(np.asarray(photo[0]), HOLE, tiny_model, mask_threshold=bad)
    out = inpaint(photo[0], jpeg, tiny_model, method="plain", mask_threshold=0.5)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(inpaint(photo[0], HOLE, tiny_model, method="plain")))


def test_large_holes_warn(tiny_model, photo):
    inverted = ~HOLE
    with pytest.warns(jax_refine.LargeHoleWarning, match=r"the hole covers 88.3 % of the image"):
        _, info = inpaint_with_info(photo[0], inverted, tiny_model, method="plain")
    assert info.hole_fraction == pytest.approx(inverted.mean())
    with pytest.warns(jax_refine.LargeHoleWarning, match=r"image 1: the hole covers 88.3 %"):
        _, infos = jax_refine.inpaint_batch_with_info([photo[0]] * 2, [HOLE, inverted], tiny_model, method="plain",
                                            )
    assert [info.hole_fraction for info in infos] == pytest.approx([HOLE.mean(), inverted.mean()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inpaint(photo[0], HOLE, tiny_model, method="plain")  # 11.7 %: no warning


def test_bad_masks_give_clear_errors():
    with pytest.raises(ValueError, match="alpha channel must be bool, uint8, uint16 or float, got int64"):
        images.hole_map(np.zeros((H, W, 4), np.int64), (H, W))
    with pytest.raises(ValueError, match=r"mask must be H x W \(or"):
        images.hole_map(np.zeros((H, W, 5), np.uint8), (H, W))
    with pytest.raises(ValueError, match=r"mode I\) mask must have values in 0..65535"):
        images.hole_map(Image.fromarray(np.full((H, W), 70000, np.int32)), (H, W))


# --------------------------------------------------------------------------------------
# Tiny images
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_images_with_extreme_settings(tiny_model):
    """The issue's cases (ZeroDivisionError before): refined, with as many scales as fit."""
    for (h, w), settings, sizes in [((7, 9), dict(min_side=1, max_scales=5), [(1, 2), (3, 4), (7, 9)]),
                                    ((1, 64), dict(px_budget=32), [(1, 32)])]:
        image = np.asarray(Image.new("RGB", (w, h), (90, 140, 30)))
        hole = np.zeros((h, w), bool)
        hole[:, w // 2 + 1:] = True
        out, info = inpaint_with_info(image, hole, tiny_model, config=RefineConfig(n_iters=2, **settings))
        assert [s.size for s in info.scales] == sizes
        assert out.shape == image.shape and np.array_equal(out[~hole], image[~hole])


@pytest.mark.parametrize("schedule", ["halving", "adaptive"])
def test_every_tiny_size_plans_a_pyramid_that_can_be_built(schedule):
    """Sizes 1..12 px with min_side 1..3, up to 6 scales, px budgets down to 1 px: every plan's
    resize and blur matrices exist (what plan.pyramid_operators and plan.scale_matrices build)."""
    for h, w, min_side, budget in itertools.product(range(1, 13), range(1, 13), (1, 2, 3), (1, 5, 32, 10**6)):
        config = RefineConfig(min_side=min_side, max_scales=6, px_budget=budget, scale_schedule=schedule)
        scales = plan.plan_scales(h, w, config)
        bh, bw = scales[-1].size
        assert (bh, bw) == (h, w) if h * w <= budget else min(bh, bw) >= 1 and bh * bw <= budget
        for finer, coarser in zip(scales[::-1], scales[::-1][1:]):
            for n, n_out in zip(finer.size, coarser.size):
                assert pyramid.pyr_down_matrix(n, n_out, finer.down_sigma).shape == (n_out, n)
    assert plan.budget_size(1, 64, 32) == (1, 32) and plan.budget_size(300, 3, 32) == (32, 1)
