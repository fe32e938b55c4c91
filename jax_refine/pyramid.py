"""Resizing, blurring and erosion of images and masks (NHWC, float32).

Numerically LaMa's `saicinpainting/evaluation/refinement.py` with kornia 0.5 (see
docs/lama.md §6): 5x5 Gaussian blur (sigma 1, reflect border), bilinear resizing with
align_corners=False and no antialiasing, 15x15 elliptical erosion with a constant-1 border.

Resizing and blurring are linear and separable, so they are written as a pair of small
matrices, one per axis: `out = Ry @ x @ Rx^T`. The matrices are built on the host from the
*valid* size of an image inside its padded array. This is what lets one compiled refinement
program serve every image of the same padded size: the valid size is data, not shape.
"""

from __future__ import annotations

import math

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

ANY_HOLE = 1e-8          # a pixel with mask >= this counts as hole (pyramid masks round up)
FULL_HOLE = 1.0 - 1e-8   # ... and >= this as fully hole (the loss mask rounds down)
EROSION_SIZE = 15



def gaussian_taps(sigma: float) -> np.ndarray:
    """Normalised Gaussian taps over [-ceil(2 sigma), ceil(2 sigma)] (float64)."""
    x = np.arange(-math.ceil(2 * sigma), math.ceil(2 * sigma) + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


GAUSS_5 = gaussian_taps(1.0)  # LaMa's kernel: [0.0545, 0.2442, 0.4026, 0.2442, 0.0545]


# --------------------------------------------------------------------------------------
# 1-D operators as matrices (host side, float64 then float32)
# --------------------------------------------------------------------------------------


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear resampling as torch `interpolate(align_corners=False)`, no antialias.

    Source coordinates are computed in float32 as torch does, so non-integer ratios match it.
    """
    f32 = np.float32
    src = f32(n_in / n_out) * (np.arange(n_out, dtype=f32) + f32(0.5)) - f32(0.5)
    src = np.maximum(src, f32(0.0))  # torch clamps negative source coordinates to 0
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo.astype(f32)
    out = np.zeros((n_out, n_in))
    np.add.at(out, (np.arange(n_out), lo), f32(1.0) - frac)
    np.add.at(out, (np.arange(n_out), hi), frac)
    return out


def blur_matrix(n: int, sigma: float = 1.0) -> np.ndarray:
    """(n, n) Gaussian blur with reflect border (edge sample not repeated); sigma 1 is LaMa's
    5-tap kernel. Needs n > ceil(2 sigma) (3 pixels for sigma 1)."""
    taps = gaussian_taps(sigma)
    radius = len(taps) // 2
    if n <= radius:
        raise ValueError(f"a Gaussian blur with sigma {sigma:g} needs at least {radius + 1} pixels per side, got {n}")
    out = np.zeros((n, n))
    for offset, weight in zip(range(-radius, radius + 1), taps):
        src = np.abs(np.arange(n) + offset)               # reflect at 0
        src = np.where(src > n - 1, 2 * (n - 1) - src, src)  # reflect at n-1
        np.add.at(out, (np.arange(n), src), weight)
    return out


def embed(matrix: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Zero-pad `matrix` to (rows, cols): the operator reads only the valid input and writes
    zeros to the padded output."""
    out = np.zeros((rows, cols), np.float32)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def pyr_down_matrix(n: int, n_out: int | None = None, sigma: float = 1.0) -> np.ndarray:
    """(n_out, n): blur, then bilinear to n_out (default n // 2). With the defaults this is
    LaMa's `_pyrdown` along one axis; other steps (adaptive scales) use sigma = factor / 2."""
    return resize_matrix(n, n // 2 if n_out is None else n_out) @ blur_matrix(n, sigma)


def apply_separable(x: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """x (B, H, W, C), rows (B, H', H) or (H', H), cols (B, W', W) or (W', W) -> (B, H', W', C)."""
    rows = rows if rows.ndim == 3 else jnp.broadcast_to(rows, (x.shape[0],) + rows.shape)
    cols = cols if cols.ndim == 3 else jnp.broadcast_to(cols, (x.shape[0],) + cols.shape)
    hp = lax.Precision.HIGHEST  # TPUs would otherwise round the operands to bfloat16
    y = jnp.einsum("bih,bhwc->biwc", rows, x, precision=hp)
    return jnp.einsum("bjw,biwc->bijc", cols, y, precision=hp)


def resize(x: jax.Array, new_h: int, new_w: int) -> jax.Array:
    """Bilinear resize (torch semantics, no antialias) of x (B, H, W, C) to (B, new_h, new_w, C)."""
    rows = resize_matrix(x.shape[1], new_h).astype(np.float32)
    cols = resize_matrix(x.shape[2], new_w).astype(np.float32)
    return apply_separable(jnp.asarray(x), rows, cols)


# --------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------


def round_up(mask):
    """Binary {0, 1} float mask: any hole share counts as hole."""
    return (mask >= ANY_HOLE).astype(jnp.float32)


def round_down(mask):
    """Binary {0, 1} float mask: only pixels that are entirely hole."""
    return (mask >= FULL_HOLE).astype(jnp.float32)


def ellipse(size: int = EROSION_SIZE) -> np.ndarray:
    """OpenCV's MORPH_ELLIPSE structuring element (size x size, bool, odd size); 169 ones for 15.

    Row dy (from the centre) holds a centred run of half-width round(sqrt(r^2 - dy^2)).
    """
    radius = size // 2
    rows = np.zeros((size, size), bool)
    for i in range(size):
        half = int(np.floor(np.sqrt(radius**2 - (i - radius) ** 2) + 0.5))
        rows[i, radius - half : radius + half + 1] = True
    return rows


def erode(mask: jax.Array, valid: jax.Array, size: int = EROSION_SIZE) -> jax.Array:
    """Binary erosion of mask (B, H, W, 1) with an ellipse, treating everything outside the
    valid region `valid` (B, H, W, 1) as hole (kornia's constant-1 border); 0 outside `valid`."""
    radius = size // 2
    x = jnp.where(valid > 0, mask, 1.0)
    x = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), constant_values=1.0)
    h, w = mask.shape[1:3]
    out = jnp.ones_like(mask)
    for i, row in enumerate(ellipse(size)):
        half = int(row.sum()) // 2
        # min over the row's run of the ellipse, centred on the column
        run = lax.reduce_window(x[:, i : i + h], jnp.inf, lax.min, (1, 1, 2 * half + 1, 1), (1, 1, 1, 1), "VALID")
        out = jnp.minimum(out, run[:, :, radius - half : radius - half + w])
    return out * valid
