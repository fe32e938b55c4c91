"""The refinement objective (docs/lama.md §6.6): two masked L1 means per image.

At a refined scale the prediction must match the image at its known pixels, and, blurred
and halved, the previous scale's result inside the hole shrunk by an elliptical erosion.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import pyramid


def masked_l1(a: jax.Array, b: jax.Array, weight: jax.Array) -> jax.Array:
    """Per-image mean of |a - b| over the elements where weight (broadcast to a) is 1.

    a, b (B, H, W, C); weight (B, H, W, 1) in {0, 1}. Returns (B,). An empty selection
    gives 0 with zero gradient (torch gives NaN loss there; see RefineConfig docs).
    """
    weight = jnp.broadcast_to(weight, a.shape)
    count = jnp.sum(weight, axis=(1, 2, 3))
    total = jnp.sum(weight * jnp.abs(a - b), axis=(1, 2, 3))
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def reference_hole(mask: jax.Array, half_rows: jax.Array, half_cols: jax.Array, erosion: int) -> jax.Array:
    """Where the previous scale's result is compared: mask (B, Hp, Wp, 1) resized by the
    half_* matrices (B, Hr, Hp) / (B, Wr, Wp), kept where entirely hole, then eroded by an
    erosion x erosion ellipse (outside the valid region counts as hole) -> (B, Hr, Wr, 1)."""
    valid = ((jnp.sum(half_rows, -1) > 0)[:, :, None, None] & (jnp.sum(half_cols, -1) > 0)[:, None, :, None])
    hole = pyramid.round_down(pyramid.apply_separable(mask, half_rows, half_cols))
    return pyramid.round_down(pyramid.erode(hole, valid.astype(jnp.float32), erosion))


def refinement_loss(pred, image, mask, ref, down_rows, down_cols, hole) -> jax.Array:
    """Per-image loss (B,): L1 to `image` on the known pixels of pred (B, Hp, Wp, 3), plus L1
    to `ref` (B, Hr, Wr, 3) of pred blurred and resized by down_* on `reference_hole`'s pixels."""
    known_term = masked_l1(pred, image, 1 - mask)
    scale_term = masked_l1(pyramid.apply_separable(pred, down_rows, down_cols), ref, hole)
    return known_term + scale_term
