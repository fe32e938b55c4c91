"""LaMa-style random stroke masks: determinism, coverage limits, size scaling, kinds."""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from jax_refine.masks import KINDS, random_mask, save_mask_png


def _masks(kind, n, h, w=None):
    return [random_mask(np.random.default_rng(seed), h, w or h, kind) for seed in range(n)]


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_mask(kind):
    a = random_mask(np.random.default_rng(7), 96, 128, kind)
    b = random_mask(np.random.default_rng(7), 96, 128, kind)
    c = random_mask(np.random.default_rng(8), 96, 128, kind)
    assert a.dtype == bool and a.shape == (96, 128)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kind", KINDS)
def test_hole_fraction_in_range(kind):
    for mask in _masks(kind, 20, 64, 200) + _masks(kind, 20, 256):
        assert 0 < mask.mean() <= 0.5


def _eroded_share(masks, k):
    """Mean share of the hole that survives a k x k erosion: a measure of stroke thickness."""
    return np.mean([_erode(m, k).sum() / m.sum() for m in masks])


def test_kinds_differ_in_stroke_thickness():
    # With LaMa's parameters (docs/lama.md §8) the mean hole fraction is about the same for all kinds
    # (~0.32 / 0.36 / 0.31 at 256 px: thin has many narrow strokes, thick few wide ones
    # and more redraws at the 50 % cap); what differs is how thick the strokes are.
    share = {kind: _eroded_share(_masks(kind, 20, 256), 9) for kind in KINDS}
    assert share["thin"] < 0.3 < share["medium"] < share["thick"], share
    for kind in KINDS:
        assert 0.15 < np.mean([m.mean() for m in _masks(kind, 20, 256)]) < 0.45


def test_coverage_does_not_depend_on_size():
    # widths and lengths scale with the side: unscaled strokes would cover 16x more at 128 px
    small = np.mean([m.mean() for m in _masks("medium", 20, 128)])
    large = np.mean([m.mean() for m in _masks("medium", 20, 512)])
    assert 0.6 < small / large < 1.6, (small, large)


def _erode(mask, k):
    """Binary erosion by a k x k square (separable minimum)."""
    rows = sliding_window_view(mask, k, axis=0).min(axis=-1)
    return sliding_window_view(rows, k, axis=1).min(axis=-1)


@pytest.mark.parametrize("kind", KINDS)
def test_widths_scale_with_size(kind):
    # A 4x larger mask needs a 4x larger erosion (2 -> 8 px per side) to remove the same share.
    small, large = _masks(kind, 10, 128), _masks(kind, 10, 512)
    assert abs(_eroded_share(small, 5) - _eroded_share(large, 17)) < 0.05
    assert _eroded_share(small, 17) < 0.6 * _eroded_share(large, 17)


def test_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        random_mask(np.random.default_rng(0), 64, 64, "huge")


def test_save_mask_png(tmp_path):
    mask = random_mask(np.random.default_rng(0), 40, 56, "medium")
    save_mask_png(mask, tmp_path / "m.png")
    img = Image.open(tmp_path / "m.png")
    assert img.mode == "L" and img.size == (56, 40)
    a = np.asarray(img)
    assert set(np.unique(a)) <= {0, 255}
    np.testing.assert_array_equal(a > 0, mask)
