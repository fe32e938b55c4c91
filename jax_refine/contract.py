"""What prediction and refinement need from a generator: the model contract.

Refinement (Kulshreshtha et al. 2022) applies to any feed-forward inpainting network that
can be cut in two: `front` maps the network's input to features z at a reduced resolution,
`rear` maps z back to an image. plan, refine, memory, jobs and cli use only this contract;
`model.Lama` (LaMa's FFC ResNet) fills it, and so does every generator registered in
`checkpoint.ARCHITECTURES`.

A generator is an `nnx.Module` with

- `config`: a frozen, hashable dataclass with at least the `GeneratorConfig` attributes
  (`architecture`, `input_nc`, `output_nc`, `hole_fill`, `output`, `refine_defaults`,
  `modulo`);
- `front(x) -> z`: x (B, H, W, input_nc) = `model_input(config, image, mask)`, H and W
  multiples of `config.modulo` and at least 2 * modulo; z a pytree of (B, h, w, C) arrays;
- `rear(z, base, *, remat, tile_pixels) -> (B, H, W, output_nc)`: base is x[..., :output_nc]
  (used when `config.output == "residual"`); remat one of `model.REMAT_POLICIES` (a generator
  may treat policies it has no use for as "none"), tile_pixels the row-tile size of a tiled
  full-resolution tail;
- `__call__(x) = rear(front(x), x[..., :output_nc])`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from . import prior


@runtime_checkable
class GeneratorConfig(Protocol):
    """The configuration attributes prediction and refinement read."""

    architecture: str            # the name checkpoints record ("ffc_resnet", "pix2pixhd_global", ...)
    input_nc: int                # output_nc colour channels + 1 mask channel
    output_nc: int
    hole_fill: str               # prior.HOLE_FILLS: what the input holds in the holes
    output: str                  # "sigmoid" or "residual" (base + head)
    refine_defaults: tuple       # (RefineConfig field, value) pairs over LaMa's defaults

    @property
    def modulo(self) -> int:
        """Input H and W must be multiples of this."""


@runtime_checkable
class Generator(Protocol):
    """An inpainting generator that refinement can cut in two (see the module docstring)."""

    config: Any

    def front(self, x: jax.Array) -> Any: ...

    def rear(self, z: Any, base: jax.Array | None = None, *, remat: str = "none", tile_pixels: int = ...) -> jax.Array:
        ...

    def __call__(self, x: jax.Array) -> jax.Array: ...


def model_input(config: GeneratorConfig, image: jax.Array, mask: jax.Array) -> jax.Array:
    """The generator's input: image (B, H, W, output_nc) in [0, 1] with its holes filled as
    config.hole_fill says, and the binary mask (B, H, W, 1), 1 = hole -> (B, H, W, input_nc)."""
    return jnp.concatenate([prior.hole_fill(config.hole_fill, image, mask), mask], axis=-1)
