"""Refinement settings and the host-side plan of a refinement: sizes, run keys, operators.

Everything here is numpy on the host, computed from sizes alone before a compiled program
runs: the size refinement works at (px_budget), the pyramid's scales, the padded size each
runs at, the key under which images share one run, and the small resize/blur matrices that
`refine` applies on the device to build the pyramid (`PyramidOperators`), to compare a scale
with the previous one (`ScaleMatrices`) and to upscale the result (`upscale_operators`).
No image data passes through here. Everything that depends on an image's valid
size is data here, not shape, so one compiled program serves every image of a padded size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from . import pyramid
from .contract import Generator
from .model import REMAT_POLICIES, TAIL_TILE_PIXELS

SCALE_SCHEDULES = ("halving", "adaptive")
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RefineConfig:
    """Refinement settings; the defaults are LaMa's (configs/prediction/default.yaml).

    One dataclass on purpose, though it holds four concerns (the algorithm: n_iters, lr,
    erosion; the pyramid: min_side, max_scales, scale_schedule, px_budget, modulo,
    full_size_output; early stopping; memory and dtype: remat, tile_pixels, compute_dtype):
    users set them together for one call, the command line has one option per field, and a
    checkpoint's `refine_defaults` may recommend any of them. The code reads narrow views:
    planning the pyramid fields (`plan_scales`), a compiled program its static
    `refine.ProgramSettings` and dynamic `refine.Controls`. It is decided once per run by
    `resolve_config`.

    Attributes:
      n_iters: forward passes per refined scale (n_iters - 1 Adam steps; the last forward
        gives the result).
      lr: Adam learning rate (betas 0.9/0.999, eps 1e-8, fresh state per scale).
      min_side, max_scales: number of scales = min(1 + round(log2(min(h, w) / min_side)),
        max_scales), at least 1, and fewer where a tiny image cannot be blurred down that
        often (`scale_sizes`). With one scale, refinement is a plain forward pass.
      scale_schedule: how the scales are spaced. "halving" (the original): each scale is half
        the next, so the coarsest one's short side is within a factor sqrt(2) of min_side (or
        larger when max_scales caps the count). "adaptive": the same number of scales, the
        coarsest one's short side exactly min_side (the resolution the model works best at) and
        the steps growing towards full resolution, each covering twice the log-scale of the
        one before (512 -> 2048 in 3 scales: 512, 813, 2048 instead of 512, 1024, 2048). A step
        by a factor f blurs with sigma f / 2 before the bilinear resize (LaMa's sigma 1 at f = 2).
      px_budget: largest h * w refined; bigger images are first resized (bilinear) to fit.
      modulo: each scale is reflect-padded at the bottom/right to a multiple of this.
      erosion: side of the elliptical structuring element that shrinks the hole for the
        multi-scale loss term. Where the eroded hole is empty (holes narrower than about
        2 * erosion px), that term is 0 and only the known-pixel term is optimised; the
        original reports a NaN loss there but takes the same steps.
      full_size_output: when the image exceeds px_budget, upscale the refined result into
        the hole of the full-resolution image, so the output has the input's size (known
        pixels unchanged). False returns the reduced-size result, as the original does.
      early_stop: None (the original: always n_iters), or a tolerance: a scale stops as soon
        as every image's loss improved by less than this fraction over the last
        early_stop_window iterations, i.e. (L[i - window] - L[i]) / L[i - window] < early_stop;
        the result is then decoded from the features of iteration i (no further step).
      early_stop_window: iterations the improvement is measured over (>= 1).
      remat: memory policy of the refinement's backward pass (model.REMAT_POLICIES):
        "decoder" recomputes the decoder's activations and runs its full-resolution tail in
        row tiles (the default: on CPU it needs about 60 % of "none"'s memory at the same
        speed, BENCHMARKS.md); "none" stores every activation; "blocks" recomputes each
        residual block's, for accelerators, where XLA keeps every block's activations for the
        backward pass (XLA-CPU's buffer assignment reuses them already, so there it only costs
        time, docs/xla-cpu.md §6); "all" both. Results are the same up to float rounding.
      tile_pixels: with remat "decoder" or "all", output pixels per row tile of the
        full-resolution tail (smaller tiles: less memory, more overhead).
      compute_dtype: "float32", or "bfloat16": the network's convolutions and activations in
        bfloat16, while the FFTs, the losses, z and Adam stay float32. For GPU/TPU, whose
        matrix units run bfloat16 several times faster than float32 (not measured here);
        XLA-CPU computes bfloat16 convolutions in float32, so on CPU it is slower and not
        smaller (docs/xla-cpu.md §8).
    """

    n_iters: int = 15
    lr: float = 0.002
    min_side: int = 512
    max_scales: int = 3
    px_budget: int = 1_800_000
    modulo: int = 8
    erosion: int = pyramid.EROSION_SIZE
    full_size_output: bool = True
    early_stop: float | None = None
    early_stop_window: int = 3
    scale_schedule: str = "halving"
    remat: str = "decoder"
    tile_pixels: int = TAIL_TILE_PIXELS
    compute_dtype: str = "float32"

    def __post_init__(self):
        problems = []
        for name in ("n_iters", "min_side", "max_scales", "px_budget", "modulo", "erosion", "early_stop_window",
                     "tile_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive int, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        if self.early_stop is not None and not (
                isinstance(self.early_stop, (int, float)) and not isinstance(self.early_stop, bool)
                and math.isfinite(self.early_stop) and self.early_stop >= 0):
            problems.append(f"early_stop must be None or a number >= 0, got {self.early_stop!r}")
        if self.remat not in REMAT_POLICIES:
            problems.append(f"remat must be one of {', '.join(REMAT_POLICIES)}, got {self.remat!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            problems.append(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {self.compute_dtype!r}")
        if self.scale_schedule not in SCALE_SCHEDULES:
            problems.append(f"scale_schedule must be one of {', '.join(SCALE_SCHEDULES)}, got {self.scale_schedule!r}")
        if isinstance(self.erosion, int) and self.erosion % 2 == 0:
            problems.append(f"erosion must be odd, got {self.erosion}")
        if isinstance(self.modulo, int) and self.modulo % 8:
            problems.append(f"modulo must be a multiple of 8 (the generator's stride), got {self.modulo}")
        if problems:
            raise ValueError("invalid RefineConfig: " + "; ".join(problems))


def resolve_config(model: Generator | None, config: RefineConfig | None = None, **overrides) -> RefineConfig:
    """The one place a run's RefineConfig is decided (api, jobs and cli call it): `config` if
    given, else the model's recommended settings (`model_defaults`; LaMa's defaults without a
    model), with `overrides` (RefineConfig fields, e.g. command-line options) over it.
    ValueError for invalid values."""
    base = config if config is not None else RefineConfig() if model is None else model_defaults(model)
    return dataclasses.replace(base, **overrides) if overrides else base


def model_defaults(model: Generator) -> RefineConfig:
    """The RefineConfig a model recommends: LaMa's defaults with its `refine_defaults` over them."""
    try:
        return RefineConfig(**dict(model.config.refine_defaults))
    except (TypeError, ValueError) as e:
        raise ValueError(f"the model's refine_defaults {dict(model.config.refine_defaults)} are invalid: {e}") from None


# --------------------------------------------------------------------------------------
# Scales
# --------------------------------------------------------------------------------------


def budget_size(h: int, w: int, px_budget: int) -> tuple[int, int]:
    """Size refinement works at: (h, w) scaled down (floor) to at most px_budget pixels. No side
    goes below 1 px: a side that would round to 0 stays 1 and the other gets the whole budget
    (1 x 64 with a budget of 32 works at 1 x 32)."""
    if h * w <= px_budget:
        return h, w
    ratio = math.sqrt(px_budget / (h * w))
    bh, bw = int(h * ratio), int(w * ratio)
    if bh == 0:
        return 1, px_budget
    if bw == 0:
        return px_budget, 1
    return bh, bw


def scale_sizes(h: int, w: int, config: RefineConfig) -> list[tuple[int, int]]:
    """Pyramid sizes from coarsest to finest for an image already within px_budget: as many
    scales as config asks for, fewer when a tiny image cannot be blurred down that often
    (every scale but the coarsest must be larger than its blur's radius, ceil(2 sigma): 3 px
    for halving; every scale at least 1 px per side)."""
    octaves = max(0.0, float(np.log2(min(h, w) / config.min_side)))
    n = min(1 + int(round(octaves)), config.max_scales)
    sizes = _pyramid_sizes(h, w, n, octaves, config.scale_schedule)
    while n > 1 and not _can_pyr_down(sizes, config.scale_schedule):
        n -= 1
        sizes = _pyramid_sizes(h, w, n, octaves, config.scale_schedule)
    return sizes


def _pyramid_sizes(h: int, w: int, n: int, octaves: float, schedule: str) -> list[tuple[int, int]]:
    """n sizes from coarsest to finest (see RefineConfig.scale_schedule)."""
    if schedule == "halving":
        sizes = [(h, w)]
        for _ in range(n - 1):
            sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
        return sizes[::-1]
    # adaptive: log-scale positions 0 .. octaves with steps 1, 2, 4, ... (normalised)
    steps = 2.0 ** np.arange(n - 1)
    position = np.concatenate([[0.0], np.cumsum(steps)]) / max(steps.sum(), 1.0)
    factors = 2.0 ** (octaves * (position - 1.0))  # of the full size; 1 for the last
    return [(max(1, round(h * f)), max(1, round(w * f))) for f in factors[:-1]] + [(h, w)]


def _down_sigmas(sizes: list[tuple[int, int]], schedule: str) -> list[float]:
    """Per scale, coarsest first, the blur sigma of the step down to the previous scale:
    LaMa's 1 for halving, half the step's factor for adaptive (1 for the coarsest)."""
    if schedule == "halving":
        return [1.0] * len(sizes)
    return [1.0] + [min(finer) / min(coarser) / 2 for coarser, finer in zip(sizes, sizes[1:])]


def _can_pyr_down(sizes: list[tuple[int, int]], schedule: str) -> bool:
    """Whether every scale is at least 1 px per side and every scale but the coarsest has
    more pixels per side than its blur's radius."""
    sigmas = _down_sigmas(sizes, schedule)
    return min(min(size) for size in sizes) >= 1 and all(
        min(size) > math.ceil(2 * sigma) for size, sigma in zip(sizes[1:], sigmas[1:]))


class ScalePlan(NamedTuple):
    """One scale of a refinement: its size, the padded size the network runs at, whether it
    is refined (all but the coarsest), and the blur sigma of the step down to the previous scale."""

    size: tuple[int, int]
    padded_size: tuple[int, int]
    refined: bool
    down_sigma: float


def plan_scales(h: int, w: int, config: RefineConfig, model_modulo: int | None = None) -> list[ScalePlan]:
    """The scales `refine.multiscale` runs for an (h, w) image (after the px_budget resize), coarsest first;
    model_modulo, if given, is checked against config.modulo."""
    if model_modulo is not None and (model_modulo > config.modulo or config.modulo % model_modulo):
        raise ValueError(f"RefineConfig.modulo={config.modulo} must be a multiple of the model's {model_modulo}")
    sizes = scale_sizes(*budget_size(h, w, config.px_budget), config)
    return [ScalePlan((sh, sw), (padded(sh, config.modulo), padded(sw, config.modulo)), index > 0, sigma)
            for index, ((sh, sw), sigma) in enumerate(zip(sizes, _down_sigmas(sizes, config.scale_schedule)))]


def reference_frame(padded_size: tuple[int, int], previous_size: tuple[int, int], modulo: int) -> tuple[int, int]:
    """Array size holding the previous scale's result inside a refined scale's program:
    half the padded size when the previous scale fits in it (always for halving, so images of
    one padded size share a program), else the previous scale's own padded size."""
    return tuple(full // 2 if prev <= full // 2 else padded(prev, modulo) for full, prev in zip(padded_size, previous_size))


def run_key(h: int, w: int, config: RefineConfig) -> tuple:
    """Images of equal keys can be refined in one `refine.multiscale` run: per scale, the padded size
    the network runs at and the reference frame. Images of one size always share a key;
    images of different sizes do when every pyramid level pads to the same size."""
    return plan_key(plan_scales(h, w, config), config.modulo)


def plan_key(plan: list[ScalePlan], modulo: int) -> tuple:
    """`run_key` of an image whose scales are `plan`."""
    frames = [reference_frame(scale.padded_size, previous.size, modulo) for previous, scale in zip(plan, plan[1:])]
    return tuple(scale.padded_size for scale in plan) + tuple(frames)


def padded(n: int, modulo: int) -> int:
    """n rounded up to a multiple of modulo, and at least 2 * modulo (the model's minimum)."""
    return max(-(-n // modulo) * modulo, 2 * modulo)


def pad_bottom_right(x: np.ndarray, hp: int, wp: int, mode: str) -> np.ndarray:
    """Pad (B, H, W, C) at the bottom/right to (hp, wp)."""
    return np.pad(x, ((0, 0), (0, hp - x.shape[1]), (0, wp - x.shape[2]), (0, 0)), mode=mode)


# --------------------------------------------------------------------------------------
# Pyramid and operands
# --------------------------------------------------------------------------------------


class PyramidOperators(NamedTuple):
    """The matrices that build one image's pyramid on the device (`refine`): `budget` the
    bilinear resize (rows (h, H), cols (w, W)) of the input to the px_budget size, or None;
    `down[k]` (rows, cols) the blur + resize from level k + 1 to level k (coarsest is 0)."""

    budget: tuple[np.ndarray, np.ndarray] | None
    down: list[tuple[np.ndarray, np.ndarray]]


def pyramid_operators(size: tuple[int, int], plan: list[ScalePlan]) -> PyramidOperators:
    """The `PyramidOperators` of an image of `size` (H, W) refined with `plan`: levels are the
    input resized to the finest scale's (px_budget) size if needed, then each blurred and resized
    from the next finer one (masks round up: any hole stays a hole)."""
    f32 = np.float32
    budget = None if tuple(size) == plan[-1].size else tuple(
        pyramid.resize_matrix(n, n_out).astype(f32) for n, n_out in zip(size, plan[-1].size))
    down = [tuple(pyramid.pyr_down_matrix(n, n_out, finer.down_sigma).astype(f32)
                  for n, n_out in zip(finer.size, coarser.size)) for coarser, finer in zip(plan, plan[1:])]
    return PyramidOperators(budget, down)


def upscale_operators(size: tuple[int, int], plan: list[ScalePlan]) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows (H, h), cols (W, w)): the bilinear resize of the finest scale's (h, w) result back to
    the input's size (H, W); None when refinement ran at that size."""
    if tuple(size) == plan[-1].size:
        return None
    return tuple(pyramid.resize_matrix(n, n_out).astype(np.float32) for n, n_out in zip(plan[-1].size, size))


class ScaleOperands(NamedTuple):
    """The arrays one refined scale's program takes (a pytree), for a batch of B images.

    image (B, Hp, Wp, 3) reflect-padded, mask (B, Hp, Wp, 1) binary; ref (B, Hr, Wr, 3) the
    previous scale's result, zero-padded to `reference_frame`; down_rows (B, Hr, Hp) /
    down_cols (B, Wr, Wp) blur + bilinear resize of the valid region to the previous scale's
    size; half_rows / half_cols the same without blur (for the mask).
    """

    image: np.ndarray
    mask: np.ndarray
    ref: np.ndarray
    down_rows: np.ndarray
    down_cols: np.ndarray
    half_rows: np.ndarray
    half_cols: np.ndarray


class ScaleMatrices(NamedTuple):
    """The host-built part of a refined scale's `ScaleOperands` (B images): the operators, and
    `ref_sizes` (B, 2) int32, each image's previous-scale (h, w), the valid region of `ref`."""

    down_rows: np.ndarray
    down_cols: np.ndarray
    half_rows: np.ndarray
    half_cols: np.ndarray
    ref_sizes: np.ndarray


def scale_matrices(scales: list[ScalePlan], previous: list[ScalePlan], modulo: int) -> ScaleMatrices:
    """The `ScaleMatrices` of one refined scale for a batch: per image its ScalePlan at this
    scale and at the previous one (equal padded sizes and reference frames: one `run_key`)."""
    frames = {reference_frame(scale.padded_size, prev.size, modulo) for prev, scale in zip(previous, scales)}
    if len(frames) != 1:
        raise ValueError(f"the images' reference frames differ ({sorted(frames)}): not one run_key")
    frame = frames.pop()

    def operator(matrix_fn, scale, prev):
        return [pyramid.embed(matrix_fn(n, n_out, scale), rows, cols)
                for n, n_out, rows, cols in zip(scale.size, prev.size, frame, scale.padded_size)]

    down = [operator(lambda n, n_out, s: pyramid.pyr_down_matrix(n, n_out, s.down_sigma), scale, prev)
            for prev, scale in zip(previous, scales)]
    half = [operator(lambda n, n_out, s: pyramid.resize_matrix(n, n_out), scale, prev)
            for prev, scale in zip(previous, scales)]
    (down_rows, down_cols), (half_rows, half_cols) = (map(np.stack, zip(*m)) for m in (down, half))
    return ScaleMatrices(down_rows, down_cols, half_rows, half_cols,
                         np.array([prev.size for prev in previous], np.int32))
