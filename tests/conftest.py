"""Shared fixtures: the golden fixtures of the original PyTorch LaMa and the converted tiny model."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

import jax_refine

# What the CLI does and the README asks of Python users: XLA's fast CPU conv path, set before
# any test starts JAX's backend; subprocesses inherit it. Tests are hermetic: no default
# compilation cache in the user's home (tests/test_compile_cache.py turns it on explicitly).
jax_refine.configure_cpu()
os.environ["JAX_REFINE_COMPILATION_CACHE"] = "0"

GOLDEN = Path(__file__).resolve().parent / "golden"  # see golden/README.md
GOLDEN_IMAGES = ["astronaut_251x317", "coffee_300x400", "chelsea_240x296"]
GOLDEN_REFINE = ["refine2_coffee", "refine3_coffee", "refine_budget_coffee", "refine2_coffee_5iters", "refine2_chelsea"]


def load_golden_image(name):
    """(image float32 (H, W, 3) in [0, 1], mask float32 (H, W) as /255) as the original reads them."""
    from PIL import Image

    image = np.asarray(Image.open(GOLDEN / f"{name}.png").convert("RGB"), np.float32) / 255
    mask = np.asarray(Image.open(GOLDEN / f"{name}_mask.png").convert("L"), np.float32) / 255
    return image, mask


def load_golden_case(case):
    return json.loads((GOLDEN / f"{case}.json").read_text()), np.load(GOLDEN / f"{case}.npy")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tinylama.ckpt converted to a jax-refine checkpoint directory."""
    from jax_refine.convert import convert

    return convert(GOLDEN / "tinylama.ckpt", tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from jax_refine.checkpoint import load

    return load(tiny_checkpoint)
