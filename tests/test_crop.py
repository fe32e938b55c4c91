"""Crop strategy: hole regions and inpainting crops."""

from __future__ import annotations

import numpy as np
import pytest

from jax_refine import RefineConfig, inpaint, inpaint_with_info
from jax_refine.crop import hole_regions

from conftest import load_golden_image


def test_hole_regions_grow_clip_and_merge():
    hole = np.zeros((200, 300), bool)
    hole[20:30, 40:60] = True     # near the top edge
    hole[150:160, 250:270] = True  # far from it
    assert hole_regions(hole, 25) == [(0, 15, 55, 85), (125, 225, 185, 295)]
    assert hole_regions(hole, 100) == [(0, 0, 200, 300)]  # grown boxes overlap: one region
    hole[33:35, 60:62] = True  # 3 px below the first hole: same grid cell group, one box
    assert hole_regions(hole, 0) == [(20, 40, 35, 62), (150, 250, 160, 270)]
    assert hole_regions(np.zeros((10, 10), bool), 5) == []
    with pytest.raises(ValueError, match="crop margin must be >= 0"):
        hole_regions(hole, -1)


@pytest.mark.slow
def test_crop_inpaints_each_region_as_its_own_image(tiny_model):
    image, _ = load_golden_image("coffee_300x400")
    hole = np.zeros((300, 400), bool)
    hole[40:60, 50:80] = True
    hole[220:250, 300:330] = True
    u8 = (image * 255).round().astype(np.uint8)
    config = RefineConfig(min_side=64, n_iters=3)
    out, info = inpaint_with_info(u8, hole, tiny_model, config=config, crop_margin=32)
    assert info.crops == [(8, 18, 92, 112), (188, 268, 282, 362)]
    expected = u8.copy()
    for top, left, bottom, right in info.crops:
        crop = inpaint(u8[top:bottom, left:right], hole[top:bottom, left:right], tiny_model, config=config)
        expected[top:bottom, left:right] = crop
    np.testing.assert_array_equal(out, expected)
    assert np.array_equal(out[~hole], u8[~hole])
    # a margin covering the image: one crop, the whole image, the same as no cropping
    whole = inpaint(u8, hole, tiny_model, method="plain")
    np.testing.assert_array_equal(inpaint(u8, hole, tiny_model, method="plain", crop_margin=400), whole)
