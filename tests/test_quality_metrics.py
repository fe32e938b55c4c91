"""The quality study's metrics (benchmarks/quality.py) against their definitions."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location("quality", Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:64, :80]
    base = 128 + 60 * np.sin(x / 5.0)[..., None] * np.cos(y / 7.0)[..., None] + rng.normal(0, 10, (64, 80, 3))
    hole = np.zeros((64, 80), bool)
    hole[20:40, 30:60] = True
    return np.clip(base, 0, 255).astype(np.uint8), hole


def test_identical_result(photo):
    image, hole = photo
    m = quality.hole_metrics(image, image, hole)
    assert m["psnr"] > 100 and m["ssim"] == pytest.approx(1.0) and m["grad_w1"] == 0 and m["sharpness"] == 1


def test_psnr_of_a_constant_error(photo):
    image, hole = photo
    image = np.clip(image, 10, 245)
    shifted = image.copy()
    shifted[hole] += 10
    assert quality.hole_metrics(shifted, image, hole)["psnr"] == pytest.approx(20 * np.log10(255 / 10), abs=1e-9)


def test_ssim_of_flat_images_is_the_luminance_term():
    a, b = np.full((32, 32, 3), 100, np.uint8), np.full((32, 32, 3), 140, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 140 + c1) / (100**2 + 140**2 + c1)
    np.testing.assert_allclose(quality.ssim_map(a, b), expected, rtol=1e-9)


def test_a_flat_fill_is_not_sharp_and_its_texture_statistics_differ(photo):
    image, hole = photo
    flat = image.copy()
    flat[hole] = image[hole].mean(0).astype(np.uint8)
    m = quality.hole_metrics(flat, image, hole)
    g = quality.gradient_magnitude(quality.luminance(image))[hole]
    assert m["sharpness"] < 0.2
    # W1 against the flat fill's gradients (zero inside the hole, the rim aside) is about the mean gradient
    assert 0.7 * g.mean() < m["grad_w1"] <= g.mean() + 1e-9
