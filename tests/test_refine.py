"""Refinement: golden parity with the original, the building blocks against their
definitions, compiled-program reuse, and the edge cases the original gets wrong."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_refine import RefineConfig, inpaint, losses, memory, plan, pyramid
from jax_refine import refine as refine_lib

from conftest import GOLDEN, GOLDEN_REFINE, load_golden_case, load_golden_image

# Achieved on this CPU (jaxlib 0.10.2, YNN fusions off): losses within 1.9e-5 of the original's,
# images within mean 8e-4. Adam normalises each feature's gradient, so float-level differences in
# features whose gradient is near zero grow into visible but tiny pixel differences: the original
# itself moves by mean 3.7e-4 / max 1.4e-2 between 1 and 2 torch threads on refine3_coffee.
# refine2_coffee_5iters uses lr 0.01 (5x the default) and reaches max 2.15e-2 here.
MAX_TOLERANCE = {"refine2_coffee_5iters": 2.5e-2}


def _binary(mask):
    return (mask > 0).astype(np.float32)[None, ..., None]


FAST_CASE = "refine2_coffee_5iters"  # the fast tier's parity case: 2 scales, 5 iterations


@pytest.mark.parametrize("case", [pytest.param(case, marks=() if case == FAST_CASE else pytest.mark.slow)
                                  for case in GOLDEN_REFINE])
def test_refinement_matches_golden(tiny_model, case):
    meta, expected = load_golden_case(case)
    image, mask = load_golden_image(meta["image"][: -len(".png")])
    p = meta["params"]
    config = RefineConfig(n_iters=p["n_iters"], lr=p["lr"], min_side=p["min_side"], max_scales=p["max_scales"],
                          px_budget=p["px_budget"], modulo=p["modulo"])
    out, scales = refine_lib.multiscale(tiny_model, image[None], _binary(mask), config)
    assert out.shape[1:3] == tuple(meta["output_hw"])
    assert [s.padded_size for s in scales] == [tuple(s["padded_hw"]) for s in meta["scales"]]
    assert [s.size for s in scales] == [tuple(s["orig_hw"]) for s in meta["scales"]]
    for ours, theirs in zip(scales, meta["scales"]):
        assert ours.refined == theirs["refined"]
        assert ours.losses.shape == ((len(theirs["losses"]), 1) if theirs["refined"] else (0, 1))
        np.testing.assert_allclose(ours.losses[:, 0], theirs["losses"], rtol=0, atol=3e-5)
    diff = np.abs(out[0] - expected)
    assert diff.mean() <= 1e-3
    assert diff.max() <= MAX_TOLERANCE.get(case, 2e-2)


@pytest.mark.slow
def test_budget_case_through_the_public_api(tiny_model):
    meta, expected = load_golden_case("refine_budget_coffee")
    image, mask = load_golden_image("coffee_300x400")
    p = meta["params"]
    reduced = inpaint(image, mask, tiny_model, config=RefineConfig(min_side=p["min_side"], px_budget=p["px_budget"],
                                                                   full_size_output=False))
    assert reduced.shape == expected.shape and reduced.dtype == np.float32
    assert np.abs(reduced - expected).mean() <= 1e-3
    full = inpaint(image, mask, tiny_model, config=RefineConfig(min_side=p["min_side"], px_budget=p["px_budget"]))
    assert full.shape == image.shape
    np.testing.assert_array_equal(full[mask == 0], image[mask == 0])  # known pixels untouched
    # the fill is the reduced result brought back to full size
    upscaled = np.asarray(pyramid.resize(reduced[None], *image.shape[:2]))[0]
    np.testing.assert_allclose(full[mask > 0], upscaled[mask > 0], atol=1e-5)


# ---------------------------------------------------------------------------- building blocks


def _blur_by_definition(x):
    """5x5 Gaussian (sigma 1) with torch-style reflect padding, by direct summation."""
    k = np.outer(pyramid.GAUSS_5, pyramid.GAUSS_5)
    xp = np.pad(x, ((2, 2), (2, 2)), mode="reflect")
    return sum(k[i, j] * xp[i : i + x.shape[0], j : j + x.shape[1]] for i in range(5) for j in range(5))


def test_blur_matrix_is_the_5x5_gaussian():
    x = np.random.default_rng(0).uniform(size=(9, 13))
    np.testing.assert_allclose(pyramid.blur_matrix(9) @ x @ pyramid.blur_matrix(13).T, _blur_by_definition(x), atol=1e-12)
    np.testing.assert_allclose(pyramid.GAUSS_5, [0.0544887, 0.2442014, 0.4026199, 0.2442014, 0.0544887], atol=1e-7)


@pytest.mark.parametrize("n_in, n_out", [(10, 5), (11, 5), (300, 212), (5, 12)])
def test_resize_matrix_is_torch_bilinear(n_in, n_out):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).uniform(size=(n_in, 7)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=(n_out, 7), mode="bilinear",
                                               align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(pyramid.resize_matrix(n_in, n_out) @ x, expected, atol=1e-6)


def test_pyramid_level_is_blur_then_half_size_bilinear():
    x = np.random.default_rng(1).uniform(size=(1, 21, 30, 3)).astype(np.float32)
    level = np.asarray(pyramid.apply_separable(jnp.asarray(x), pyramid.pyr_down_matrix(21).astype(np.float32),
                                               pyramid.pyr_down_matrix(30).astype(np.float32)))
    assert level.shape == (1, 10, 15, 3)
    blurred = np.stack([_blur_by_definition(x[0, :, :, c]) for c in range(3)], -1)
    expected = pyramid.resize_matrix(21, 10) @ blurred.transpose(2, 0, 1) @ pyramid.resize_matrix(30, 15).T
    np.testing.assert_allclose(level[0], expected.transpose(1, 2, 0), atol=1e-6)


def test_scale_plan_follows_the_original():
    c = RefineConfig()
    assert plan.scale_sizes(724, 1000, c) == [(724, 1000)]
    assert plan.scale_sizes(725, 1000, c) == [(362, 500), (725, 1000)]
    assert plan.scale_sizes(1449, 1500, RefineConfig(px_budget=10**7)) == [(362, 375), (724, 750), (1449, 1500)]
    assert plan.budget_size(1080, 1920, c.px_budget) == (1006, 1788)
    assert plan.budget_size(3000, 4000, c.px_budget) == (1161, 1549)


def test_adaptive_schedule_spaces_the_same_number_of_scales_from_min_side():
    big = dict(px_budget=10**8)
    sizes = plan.scale_sizes(2048, 2048, RefineConfig(scale_schedule="adaptive", **big))
    assert sizes == [(512, 512), (813, 813), (2048, 2048)]  # 2 octaves in steps of 2/3 and 4/3
    assert plan.scale_sizes(1060, 1697, RefineConfig(min_side=256, scale_schedule="adaptive", **big)) == \
        [(256, 410), (411, 658), (1060, 1697)]
    # two scales: coarsest exactly at min_side (halving gives 362 x 500)
    assert plan.scale_sizes(725, 1000, RefineConfig(scale_schedule="adaptive")) == [(512, 706), (725, 1000)]
    assert plan.scale_sizes(724, 1000, RefineConfig(scale_schedule="adaptive")) == [(724, 1000)]
    scales = plan.plan_scales(2048, 2048, RefineConfig(scale_schedule="adaptive", **big))
    assert [round(s.down_sigma, 4) for s in scales] == [1.0, round(813 / 512 / 2, 4), round(2048 / 813 / 2, 4)]
    assert [s.down_sigma for s in plan.plan_scales(2048, 2048, RefineConfig(**big))] == [1.0] * 3
    with pytest.raises(ValueError, match="scale_schedule must be one of halving, adaptive"):
        RefineConfig(scale_schedule="octave")


@pytest.mark.parametrize("sigma", [0.7, 1.0, 1.6])
def test_blur_matrix_of_any_sigma_is_its_definition(sigma):
    radius = int(np.ceil(2 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    x = np.random.default_rng(5).uniform(size=(11, 3))
    xp = np.pad(x, ((radius, radius), (0, 0)), mode="reflect")
    expected = sum(t * xp[i : i + 11] for i, t in enumerate(taps / taps.sum()))
    np.testing.assert_allclose(pyramid.blur_matrix(11, sigma) @ x, expected, atol=1e-12)
    with pytest.raises(ValueError, match="needs at least 5 pixels per side, got 4"):
        pyramid.blur_matrix(4, 1.6)


@pytest.mark.slow
def test_adaptive_refinement_matches_the_torch_reference(tiny_model):
    """Three adaptive scales (the middle step < 2x, so the previous result needs its own padded
    frame) against the PyTorch reference run with the same schedule."""
    torch = pytest.importorskip("torch")
    from reference import lama_torch as ref

    image, mask = load_golden_image("coffee_300x400")
    config = RefineConfig(min_side=64, n_iters=4, scale_schedule="adaptive")
    out, scales = refine_lib.multiscale(tiny_model, image[None], _binary(mask), config)
    assert [s.size for s in scales] == [(64, 85), (107, 143), (300, 400)]
    assert scales[2].padded_size == (304, 400) and scales[1].padded_size == (112, 144)
    assert plan.reference_frame(scales[2].padded_size, scales[1].size, 8) == (152, 200)
    assert plan.reference_frame(scales[1].padded_size, scales[0].size, 8) == (64, 88)  # 64 > 112 // 2
    torch_model = ref.FFCResNetGenerator(ngf=8, n_downsampling=3, n_blocks=2)
    torch_model.load_state_dict(ref.load_golden_state_dict(GOLDEN / "tinylama.ckpt"), strict=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected, info = ref.refine(torch_model.eval(), image, _binary(mask)[0, ..., 0], min_side=64, n_iters=4,
                                    scale_schedule="adaptive")
    finally:
        torch.set_num_threads(threads)
    assert [tuple(i["orig_hw"]) for i in info] == [s.size for s in scales]
    for ours, theirs in zip(scales[1:], info[1:]):
        np.testing.assert_allclose(ours.losses[:, 0], theirs["losses"], rtol=0, atol=3e-5)
    diff = np.abs(out[0] - expected)
    assert diff.mean() <= 1e-3 and diff.max() <= 2e-2


def test_ellipse_is_opencv_morph_ellipse():
    e = pyramid.ellipse(15)
    assert e.sum() == 169
    assert list(e.sum(1)) == [1, 9, 11, 13, 13, 15, 15, 15, 15, 15, 13, 13, 11, 9, 1]
    assert (e == e[::-1]).all() and (e == e[:, ::-1]).all()


def _erode_by_definition(mask, valid, size=15):
    """min over the ellipse's offsets; outside the valid region (and the array) counts as hole."""
    r = size // 2
    x = np.where(valid > 0, mask, 1.0)
    xp = np.pad(x, r, constant_values=1.0)
    out = np.ones_like(mask)
    for dy, dx in zip(*np.nonzero(pyramid.ellipse(size))):
        out = np.minimum(out, xp[dy : dy + mask.shape[0], dx : dx + mask.shape[1]])
    return out * valid


def test_erosion_matches_its_definition():
    rng = np.random.default_rng(2)
    mask = (rng.uniform(size=(40, 50)) > 0.1).astype(np.float32)
    mask[5:30, 10:45] = 1
    valid = np.zeros_like(mask)
    valid[:37, :46] = 1
    out = pyramid.erode(jnp.asarray(mask)[None, ..., None], jnp.asarray(valid)[None, ..., None])
    np.testing.assert_array_equal(np.asarray(out)[0, ..., 0], _erode_by_definition(mask, valid))
    # a hole touching the border is not eroded from the border side (constant-1 border)
    full = np.ones((20, 20), np.float32)
    np.testing.assert_array_equal(np.asarray(pyramid.erode(jnp.asarray(full)[None, ..., None],
                                                           jnp.ones((1, 20, 20, 1))))[0, ..., 0], full)


def test_masked_l1_is_the_mean_over_selected_elements():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(size=(2, 2, 6, 7, 3)).astype(np.float32)
    w = (rng.uniform(size=(2, 6, 7, 1)) > 0.5).astype(np.float32)
    got = np.asarray(losses.masked_l1(jnp.asarray(a), jnp.asarray(b), jnp.asarray(w)))
    for i in range(2):
        sel = np.broadcast_to(w[i] > 0, a[i].shape)
        np.testing.assert_allclose(got[i], np.abs(a[i] - b[i])[sel].mean(), rtol=1e-6)
    # an empty selection gives 0 and a zero (not NaN) gradient
    zero = jnp.zeros((1, 6, 7, 1))
    assert float(losses.masked_l1(jnp.asarray(a[:1]), jnp.asarray(b[:1]), zero)[0]) == 0.0
    g = jax.grad(lambda a: losses.masked_l1(a, jnp.asarray(b[:1]), zero)[0])(jnp.asarray(a[:1]))
    assert np.all(np.asarray(g) == 0)


@pytest.mark.slow
def test_both_loss_terms_of_the_first_iteration(tiny_model):
    """The first loss of a refined scale = known-pixel L1 + multi-scale L1, computed by hand."""
    meta, _ = load_golden_case("refine2_coffee")
    image, mask = load_golden_image("coffee_300x400")
    _, scales = refine_lib.multiscale(tiny_model, image[None], _binary(mask), RefineConfig(min_side=128, n_iters=1))
    down_rows, down_cols = (pyramid.pyr_down_matrix(n).astype(np.float32) for n in (300, 400))
    coarse_image = np.asarray(pyramid.apply_separable(jnp.asarray(image[None]), down_rows, down_cols))
    coarse_mask = np.asarray(pyramid.round_up(pyramid.apply_separable(jnp.asarray(_binary(mask)), down_rows, down_cols)))
    ref, _ = refine_lib.multiscale(tiny_model, coarse_image, coarse_mask, RefineConfig(min_side=1000))  # one scale
    # the fine scale: reflect-padded to 304 x 400; the first forward is the plain network output
    image_p = np.pad(image, ((0, 4), (0, 0), (0, 0)), mode="reflect")
    mask_p = np.pad(mask > 0, ((0, 4), (0, 0)), mode="reflect").astype(np.float32)[..., None]
    _, pred = refine_lib.predict(tiny_model, image_p[None], mask_p[None])
    term1 = np.abs(pred[0] - image_p)[np.broadcast_to(mask_p == 0, image_p.shape)].mean()
    down = np.asarray(pyramid.apply_separable(jnp.asarray(pred[:, :300]), down_rows, down_cols))[0]
    half = pyramid.resize_matrix(300, 150) @ (mask > 0).astype(np.float64) @ pyramid.resize_matrix(400, 200).T
    hole = _erode_by_definition((half >= 1 - 1e-8).astype(np.float32), np.ones((150, 200), np.float32))
    term2 = np.abs(down - ref[0])[np.broadcast_to(hole[..., None] > 0, down.shape)].mean()
    np.testing.assert_allclose(scales[1].losses[0, 0], term1 + term2, rtol=1e-5)
    np.testing.assert_allclose(scales[1].losses[0, 0], meta["scales"][1]["losses"][0], atol=1e-5)


# ---------------------------------------------------------------------------- behaviour


@pytest.mark.slow
def test_loss_decreases(tiny_model):
    image, mask = load_golden_image("chelsea_240x296")
    _, scales = refine_lib.multiscale(tiny_model, image[None], _binary(mask), RefineConfig(min_side=100, n_iters=8))
    losses = scales[-1].losses[:, 0]
    assert np.all(np.diff(losses) < 0)


@pytest.mark.slow
def test_second_image_of_the_same_padded_size_reuses_the_compiled_program(tiny_model):
    rng = np.random.default_rng(4)
    config = RefineConfig(min_side=32, n_iters=3)
    mask = np.zeros((1, 70, 90, 1), np.float32)
    mask[:, 20:50, 30:70] = 1
    refine_lib.multiscale(tiny_model, rng.uniform(size=(1, 70, 90, 3)).astype(np.float32), mask, config)
    compiled = refine_lib._refine_steps._cache_size()
    # different valid size (66 x 89), same padded size (72 x 96) at both scales
    out, scales = refine_lib.multiscale(tiny_model, rng.uniform(size=(1, 66, 89, 3)).astype(np.float32),
                                    mask[:, :66, :89], config)
    assert [s.padded_size for s in scales] == [(40, 48), (72, 96)]
    assert refine_lib._refine_steps._cache_size() == compiled
    assert out.shape == (1, 66, 89, 3)


@pytest.mark.slow
def test_empty_eroded_hole_optimises_the_known_pixels_only(tiny_model):
    """A hole narrower than the erosion leaves the multi-scale term empty: the original reports
    NaN; here that term is 0, the loss is finite and the result is well defined."""
    image, _ = load_golden_image("coffee_300x400")
    mask = np.zeros((1, 300, 400, 1), np.float32)
    mask[:, 100:110, 50:350] = 1  # 10 px high: empty after halving and the 15x15 erosion
    out, scales = refine_lib.multiscale(tiny_model, image[None], mask, RefineConfig(min_side=128, n_iters=4))
    losses = scales[-1].losses[:, 0]
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(out))
    assert np.all(np.diff(losses) < 0)


@pytest.mark.slow
def test_batch_equals_single_images(tiny_model):
    image_a, mask_a = load_golden_image("chelsea_240x296")
    image_b = image_a[::-1].copy()
    config = RefineConfig(min_side=100, n_iters=4)
    batch, _ = refine_lib.multiscale(tiny_model, np.stack([image_a, image_b]), np.concatenate([_binary(mask_a)] * 2), config)
    single, _ = refine_lib.multiscale(tiny_model, image_b[None], _binary(mask_a), config)
    np.testing.assert_allclose(batch[1], single[0], atol=2e-4)


def test_a_run_refuses_images_of_different_run_keys(tiny_model):
    image, mask = load_golden_image("chelsea_240x296")
    masks = [_binary(mask)[0], _binary(mask)[0, :225]]
    with pytest.raises(ValueError, match="2 different run_keys"):  # levels 120x152 and 112x152
        refine_lib.multiscale(tiny_model, [image, image[:225]], masks, RefineConfig(min_side=100))
    with pytest.raises(ValueError, match="one mask of its image's size per image"):
        refine_lib.multiscale(tiny_model, [image, image[:225]], masks[::-1], RefineConfig(min_side=100))
    with pytest.raises(ValueError, match="one or more images"):
        refine_lib.multiscale(tiny_model, [], [], RefineConfig(min_side=100))


def test_invalid_refine_config_is_refused():
    with pytest.raises(ValueError, match="n_iters must be a positive int"):
        RefineConfig(n_iters=0)
    with pytest.raises(ValueError, match="erosion must be odd"):
        RefineConfig(erosion=14)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        RefineConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="early_stop must be None or a number >= 0"):
        RefineConfig(early_stop=-0.1)
    with pytest.raises(ValueError, match="early_stop_window must be a positive int"):
        RefineConfig(early_stop_window=0)


# ---------------------------------------------------------------------------- early stopping


def _first_stop(losses, tol, window):
    """The iteration at which the early-stopping rule fires on a known loss curve, or None."""
    for i in range(window, len(losses) - 1):
        if (losses[i - window] - losses[i]) / losses[i - window] < tol:
            return i
    return None


@pytest.mark.parametrize("tol", [2e-2, 5e-2])
@pytest.mark.slow
def test_early_stop_fires_where_the_rule_says_and_equals_a_shorter_run(tiny_model, tol):
    image, mask = load_golden_image("chelsea_240x296")
    base = RefineConfig(min_side=100, n_iters=12)
    _, full = refine_lib.multiscale(tiny_model, image[None], _binary(mask), base)
    curve = full[-1].losses[:, 0]
    stop = _first_stop(curve, tol, window=2)
    assert stop is not None and stop < 11, curve  # the case must exercise the rule
    out, scales = refine_lib.multiscale(tiny_model, image[None], _binary(mask),
                                    RefineConfig(min_side=100, n_iters=12, early_stop=tol, early_stop_window=2))
    assert scales[-1].iterations == stop + 1 and scales[0].iterations == 1
    np.testing.assert_array_equal(scales[-1].losses[:, 0], curve[:stop + 1])
    # stopping after forward `stop` decodes the same features as a run with stop + 1 forwards
    shorter, _ = refine_lib.multiscale(tiny_model, image[None], _binary(mask), RefineConfig(min_side=100, n_iters=stop + 1))
    np.testing.assert_allclose(out, shorter, atol=1e-6)


@pytest.mark.slow
def test_early_stop_is_bounded_by_n_iters_and_window(tiny_model):
    image, mask = load_golden_image("chelsea_240x296")
    run = lambda **kw: refine_lib.multiscale(tiny_model, image[None], _binary(mask), RefineConfig(min_side=100, **kw))[1][-1]
    assert run(n_iters=5, early_stop=0.0).iterations == 5  # the loss keeps decreasing: never stops
    assert run(n_iters=5, early_stop=1.0, early_stop_window=3).iterations == 4  # first check at iteration 3
    assert run(n_iters=3, early_stop=1.0, early_stop_window=3).iterations == 3  # the window is longer than the run


# ---------------------------------------------------------------------------- transfers


def test_one_image_crosses_to_the_device_once_and_back_once(tiny_model, capfd):
    """Three scales above px_budget (resized, refined, upscaled back): the image and its mask
    go to the device in one transfer each, everything else uploaded is a matrix or scalar of
    the plan, and no transfer is implicit (the `disallow` guard). JAX logs each explicit
    host-to-device transfer with its shape (`log_explicit`), which is what is counted here.
    Device-to-host copies are guarded too, but XLA-CPU hands numpy its buffers without a copy,
    so on CPU only an accelerator run would see one; the result comes back in one device_get."""
    image, mask = load_golden_image("coffee_300x400")
    config = RefineConfig(min_side=16, px_budget=75 * 100, n_iters=2)
    seen = []
    capfd.readouterr()
    with jax.transfer_guard("disallow"), jax.transfer_guard_host_to_device("log_explicit"):
        out, scales = refine_lib.multiscale(tiny_model, [image], [_binary(mask)[0]], config, upscale=True,
                                            on_iteration=lambda i, losses: seen.append(i))
    transfers = re.findall(r"host-to-device transfer: aval=ShapedArray\(\w+\[([\d,]*)\]", capfd.readouterr().err)
    shapes = [tuple(int(n) for n in t.split(",")) if t else () for t in transfers]
    assert [s.size for s in scales] == [(18, 25), (37, 50), (75, 100)] and out[0].shape == (300, 400, 3)
    image_data = [s for s in shapes if len(s) >= 3 and s[-1] in (1, 3)]  # (.., H, W, channels)
    assert image_data == [(300, 400, 3), (300, 400, 1)]
    assert len(shapes) > 2  # the plan's matrices and scalars, in the same upload
    assert seen == [0, 1] * 2  # progress: two refined scales of two iterations


# ---------------------------------------------------------------------------- memory estimate

_MEMORY_CHILD = """
import json, sys
import numpy as np
from flax import nnx
import jax_refine
from jax_refine import RefineConfig, refine
from jax_refine.model import TINY_LAMA, Lama, eval_mode

task, size = sys.argv[1], int(sys.argv[2])
model = eval_mode(Lama(TINY_LAMA, rngs=nnx.Rngs(0)))
config = RefineConfig(min_side=size // 2, px_budget=size * size, n_iters=2, remat="none")
if task == "estimate":
    est = jax_refine.estimate((size, size), model, config=config)
    print(json.dumps(dict(peak=est.peak_bytes, program=est.program_bytes)))
else:
    image = np.random.default_rng(0).uniform(size=(1, size, size, 3)).astype(np.float32)
    mask = np.zeros((1, size, size, 1), np.float32)
    mask[:, size // 4:size // 2, size // 4:3 * size // 4] = 1
    refine.multiscale(model, image, mask, config)
    # VmHWM: this process image's own high-water mark. ru_maxrss is not: Linux carries the
    # parent's resident set at fork across exec into it (pytest's, GiBs late in a suite).
    status = open("/proc/self/status").read()
    print(json.dumps(dict(peak=int(status.split("VmHWM:")[1].split()[0]) * 1024)))
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the peak resident set from /proc: Linux")
def test_memory_estimate_is_within_ten_percent_of_the_measured_peak(tmp_path):
    """`estimate` in one fresh process against the peak RSS of the run in another, at a size
    where the refinement program is a third of the peak (1024², two scales, remat "none")."""
    script = tmp_path / "child.py"
    script.write_text(_MEMORY_CHILD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]))
    children = {task: subprocess.Popen([sys.executable, str(script), task, "1024"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=env) for task in ("estimate", "run")}
    results = {}
    for task, child in children.items():
        out, err = child.communicate(timeout=1200)
        assert child.returncode == 0, err[-2000:]
        results[task] = json.loads(out.strip().splitlines()[-1])
    estimate, measured = results["estimate"], results["run"]["peak"]
    assert estimate["program"] > 0.25 * measured
    assert 0.9 <= estimate["peak"] / measured <= 1.1, (estimate, measured)


@pytest.mark.slow
def test_memory_estimate_per_scale(tiny_model):
    config = RefineConfig(min_side=64, n_iters=3)
    est = memory.estimate_memory(tiny_model, 150, 200, config=config)
    assert [size for size, _ in est.scales] == [(80, 104), (152, 200)]
    # the refined scale's program holds at least its activations: z and the rear's output
    z_bytes = 152 // 8 * 200 // 8 * sum(tiny_model.config.z_channels) * 4
    assert est.scales[1][1] > z_bytes + 152 * 200 * 3 * 4
    assert est.scales[1][1] > est.scales[0][1]  # the backward pass needs more than a forward
    plain = memory.estimate_memory(tiny_model, 150, 200, multiscale=False, config=config)
    assert [size for size, _ in plain.scales] == [(152, 200)] and plain.program_bytes < est.program_bytes
