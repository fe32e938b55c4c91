"""Smooth hole priors: what a model sees in the hole instead of zeros (docs/prior.md).

`pull_push` fills each hole with a smooth continuation of the colours around it, in O(H * W):

* pull: halve the image again and again; each coarser pixel is the weighted mean colour of
  its 2 x 2 children (weight = share of known pixels, clamped to 1), until one pixel is left;
* push: from the coarsest level back up, each pixel keeps its own colour in proportion to its
  weight and takes the rest from the bilinearly upsampled coarser level, then `smoothing`
  Jacobi steps of Laplace's equation relax the unknown part (a membrane over the hole, as a
  multigrid solver would converge to, without its cost).

Known pixels are returned unchanged and every filled value is a convex combination of known
colours, so the fill stays inside their range.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HOLE_FILLS = ("zeros", "pull-push")
SMOOTHING_STEPS = 4  # measured on held-out photos: 4 steps gain ~0.4 dB over 0; 16 or 64 no more


def hole_fill(kind: str, image: jax.Array, mask: jax.Array) -> jax.Array:
    """The model input's colour channels: image (B, H, W, C) in [0, 1] with the holes of the
    binary mask (B, H, W, 1), 1 = hole, filled by `kind` (one of HOLE_FILLS)."""
    known = 1 - mask
    if kind == "zeros":
        return image * known
    if kind == "pull-push":
        return pull_push(image, mask)
    raise ValueError(f"hole fill must be one of {', '.join(HOLE_FILLS)}, got {kind!r}")


def pull_push(image: jax.Array, mask: jax.Array, smoothing: int = SMOOTHING_STEPS) -> jax.Array:
    """image (B, H, W, C) float, mask (B, H, W, 1) binary (1 = hole) -> (B, H, W, C): the known
    pixels of image, the holes filled smoothly from them. An image without known pixels gives 0."""
    weight = (1 - mask).astype(image.dtype)
    colour = image * weight
    levels = [(colour, weight)]
    while max(colour.shape[1:3]) > 1:
        colour, weight = _pull(colour, weight)
        levels.append((colour, weight))
    fill = levels[-1][0]
    for colour, weight in reversed(levels[:-1]):
        known, unknown = weight * colour, 1 - weight
        coarse = _upsample(fill)[:, : colour.shape[1], : colour.shape[2]]
        # one traced Jacobi step per level, not `smoothing`: the program stays small to compile
        fill = jax.lax.fori_loop(0, smoothing, lambda _, f: known + unknown * _neighbour_mean(f),
                                 known + unknown * coarse)
    return fill


def _pull(colour, weight):
    """One level coarser: (mean colour of each 2 x 2 block weighted by `weight`, the block's
    summed weight clamped to 1). Odd sizes get a zero-weight row/column."""
    pad = ((0, 0), (0, colour.shape[1] % 2), (0, colour.shape[2] % 2), (0, 0))
    colour, weight = jnp.pad(colour * weight, pad), jnp.pad(weight, pad)

    def block_sum(x):
        b, h, w, c = x.shape
        return x.reshape(b, h // 2, 2, w // 2, 2, c).sum(axis=(2, 4))

    total = block_sum(weight)
    mean = block_sum(colour) / jnp.maximum(total, 1e-12)
    return mean, jnp.minimum(total, 1.0)


def _upsample(x):
    """2x bilinear upsampling with pixel centres at half-integers and clamped borders: output
    2i takes 3/4 of input i and 1/4 of i - 1, output 2i + 1 3/4 of i and 1/4 of i + 1."""
    for axis in (1, 2):
        n = x.shape[axis]
        padded = _edge_pad(x, axis)
        before, after = (jax.lax.slice_in_dim(padded, start, start + n, axis=axis) for start in (0, 2))
        even, odd = 0.75 * x + 0.25 * before, 0.75 * x + 0.25 * after
        x = jnp.stack([even, odd], axis=axis + 1).reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])
    return x


def _neighbour_mean(x):
    """Mean of the 4 neighbours of each pixel (edge pixels repeat themselves)."""
    p = _edge_pad(_edge_pad(x, 1), 2)
    return 0.25 * (p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:])


def _edge_pad(x, axis):
    """x with its first and last slice along `axis` repeated once on either side."""
    first, last = jax.lax.slice_in_dim(x, 0, 1, axis=axis), jax.lax.slice_in_dim(x, -1, None, axis=axis)
    return jnp.concatenate([first, x, last], axis=axis)
