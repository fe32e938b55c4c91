"""Plain prediction and multi-scale feature refinement as compiled JAX programs.

Refinement follows Kulshreshtha, Pugh & Jiddi 2022 (arXiv 2206.13644) and LaMa's
`refinement.py` (lama-spec.md §6): an image/mask pyramid; the coarsest scale is a plain
forward pass; at each finer scale z = front(image, mask) is optimised with Adam so that
rear(z), blurred and halved, matches the previous scale's result inside the (eroded) hole
and the image outside it. n_iters forward passes and n_iters - 1 Adam steps per scale.

Each scale is one `jax.jit` program (`_refine_program`) whose iterations run in a
`lax.while_loop` carrying (z, optimizer state), bounded by n_iters and optionally stopped
early when the loss stops improving (RefineConfig.early_stop). Weights are arguments, not constants, and
everything that depends on the image's valid (unpadded) size is passed as data, so a
second image of the same padded size reuses the compiled program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import sys
import warnings
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from . import pyramid
from .model import REMAT_POLICIES, Lama, model_input


SCALE_SCHEDULES = ("halving", "adaptive")
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RefineConfig:
    """Refinement settings; the defaults are LaMa's (configs/prediction/default.yaml).

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
        row tiles; "none" stores every activation; "blocks" recomputes each residual block's;
        "all" both. Big-LaMa on CPU at 1024² / 1536² / 2048² (BENCHMARKS.md): decoder 2.44 /
        4.03 / 6.02 GiB peak at the speed of none, which needs 3.42 / 6.42 / 10.65; blocks
        and all cost ~25 % time and blocks saves nothing on XLA-CPU (all: 2.48 / 4.11 / 6.27).
        Results are the same up to float rounding.
      compute_dtype: "float32", or "bfloat16": the network's convolutions and activations in
        bfloat16, while the FFTs, the losses, z and Adam stay float32 (53.1 dB from the float32
        result on the README example). Meant for GPU/TPU (not measured there); XLA-CPU computes
        bfloat16 convolutions in float32, so on CPU it is slower and not smaller.
    """

    n_iters: int = 15
    lr: float = 0.002
    min_side: int = 512
    max_scales: int = 3
    px_budget: int = 1_800_000
    modulo: int = 8
    erosion: int = 15
    full_size_output: bool = True
    early_stop: float | None = None
    early_stop_window: int = 3
    scale_schedule: str = "halving"
    remat: str = "decoder"
    compute_dtype: str = "float32"

    def __post_init__(self):
        problems = []
        for name in ("n_iters", "min_side", "max_scales", "px_budget", "modulo", "erosion", "early_stop_window"):
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


# --------------------------------------------------------------------------------------
# Planning (host side)
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
    """The scales `refine` runs for an (h, w) image (after the px_budget resize), coarsest first;
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
    """Images of equal keys can be refined in one `refine` run: per scale, the padded size
    the network runs at and the reference frame. Images of one size always share a key;
    images of different sizes do when every pyramid level pads to the same size."""
    return _plan_key(plan_scales(h, w, config), config.modulo)


def _plan_key(plan: list[ScalePlan], modulo: int) -> tuple:
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
# Compiled programs
# --------------------------------------------------------------------------------------


def _compute_model(graphdef, state, compute_dtype: str) -> Lama:
    """The model with its floating-point weights and statistics cast to compute_dtype."""
    dtype = jnp.dtype(compute_dtype)
    if dtype != jnp.float32:
        state = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    return nnx.merge(graphdef, state)


@partial(jax.jit, static_argnames=("graphdef", "compute_dtype"))
def _predict_program(graphdef, state, image, mask, *, compute_dtype="float32"):
    """image (B, Hp, Wp, 3), mask (B, Hp, Wp, 1) binary -> (composite, raw prediction), float32."""
    model = _compute_model(graphdef, state, compute_dtype)
    pred = model(model_input(model.config, image, mask).astype(compute_dtype)).astype(jnp.float32)
    return mask * pred + (1 - mask) * image, pred


def _valid_region(rows, cols):
    """(B, H', W', 1) indicator of the output pixels a pair of resize matrices writes."""
    return (jnp.sum(rows, -1) > 0)[:, :, None, None] & (jnp.sum(cols, -1) > 0)[:, None, :, None]


def scale_problem(graphdef, state, image, mask, ref, down_rows, down_cols, half_rows, half_cols, *,
                  erosion, remat="none", compute_dtype="float32"):
    """The optimisation problem of one refined scale, as pure functions (trace inside jit).

    image (B, Hp, Wp, 3) reflect-padded; mask (B, Hp, Wp, 1) binary; ref (B, Hr, Wr, 3) the
    previous scale's result, zero-padded (`reference_frame`, Hp/2 x Wp/2 when halving);
    down_* (B, Hr, Hp) / (B, Wr, Wp) blur + bilinear resize of the valid region to the
    previous scale's size; half_* the same without blur (for the mask).
    Returns (z0, loss_fn) with loss_fn(z) -> (summed loss, (loss per image (B,), prediction)).
    z stays float32; the network runs in compute_dtype, the losses in float32.
    """
    model = _compute_model(graphdef, state, compute_dtype)
    known = 1 - mask
    valid_half = _valid_region(half_rows, half_cols).astype(jnp.float32)
    hole_half = pyramid.round_down(pyramid.apply_separable(mask, half_rows, half_cols))
    hole_half = pyramid.round_down(pyramid.erode(hole_half, valid_half, erosion))

    x = model_input(model.config, image, mask).astype(compute_dtype)
    base = x[..., : model.config.output_nc]

    def loss_fn(z):
        pred = model.rear(jax.tree.map(lambda t: t.astype(compute_dtype), z), base, remat=remat).astype(jnp.float32)
        known_term = pyramid.masked_l1(pred, image, known)
        scale_term = pyramid.masked_l1(pyramid.apply_separable(pred, down_rows, down_cols), ref, hole_half)
        per_image = known_term + scale_term
        # Summing per-image losses gives each image the gradient it would get alone.
        return jnp.sum(per_image), (per_image, pred)

    z0 = model.front(x)
    return jax.tree.map(lambda t: t.astype(jnp.float32), z0), loss_fn


def adam(lr):
    """torch.optim.Adam's defaults as optax: betas (0.9, 0.999), eps 1e-8, no weight decay."""
    return optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)


@partial(jax.jit, static_argnames=("graphdef", "n_iters", "erosion", "remat", "compute_dtype", "report"))
def _refine_program(graphdef, state, image, mask, ref, down_rows, down_cols, half_rows, half_cols, lr,
                    stop_tol, stop_window, hook_token, *, n_iters, erosion, remat="none", compute_dtype="float32",
                    report=False):
    """One refined scale (arguments as `scale_problem`): at most n_iters forwards and n_iters - 1
    Adam steps in a while_loop, stopping early once every image's relative loss improvement over
    `stop_window` iterations is below `stop_tol` (-inf: never). Returns (composite (B, Hp, Wp, 3),
    losses (n_iters, B), zero after the stop, forwards used (int32))."""
    z, loss_fn = scale_problem(graphdef, state, image, mask, ref, down_rows, down_cols, half_rows, half_cols,
                               erosion=erosion, remat=remat, compute_dtype=compute_dtype)
    tx = adam(lr)

    def converged(losses, i):
        before = losses[jnp.maximum(i - stop_window, 0)]
        gain = (before - losses[i]) / jnp.maximum(before, jnp.finfo(jnp.float32).tiny)
        return (i >= stop_window) & jnp.all(gain < stop_tol)

    def keep_going(carry):
        i, *_, stopped = carry
        return (i < n_iters - 1) & ~stopped

    def step(carry):
        i, z, opt_state, losses, _, _ = carry
        (_, (per_image, pred)), grads = jax.value_and_grad(loss_fn, has_aux=True)(z)
        if report:
            jax.debug.callback(_report_iteration, hook_token, i, per_image)
        losses = losses.at[i].set(per_image)
        stopped = converged(losses, i)
        updates, opt_state = tx.update(grads, opt_state, z)
        # on a stop, z stays at this iteration's features, whose prediction is `pred`
        z = jax.tree.map(lambda new, old: jnp.where(stopped, old, new), optax.apply_updates(z, updates), z)
        return i + 1, z, opt_state, losses, pred, stopped

    losses = jnp.zeros((n_iters, image.shape[0]), jnp.float32)
    carry = (jnp.int32(0), z, tx.init(z), losses, jnp.zeros_like(image), jnp.bool_(False))
    i, z, _, losses, pred, stopped = jax.lax.while_loop(keep_going, step, carry)

    def last_forward():
        _, (per_image, pred) = loss_fn(z)
        if report:
            jax.debug.callback(_report_iteration, hook_token, n_iters - 1, per_image)
        return pred, losses.at[n_iters - 1].set(per_image), jnp.int32(n_iters)

    pred, losses, used = jax.lax.cond(stopped, lambda: (pred, losses, i), last_forward)
    return mask * pred + (1 - mask) * image, losses, used


# Progress inside compiled loops: the program calls one fixed function with a token (a traced
# int, so no recompilation), and the function forwards to the hook registered under that token
# for the duration of a call. XLA runs host callbacks on its own threads, so a context variable
# would not be seen there.
_hooks: dict[int, Callable] = {}
_next_token = itertools.count(1)


def _report_iteration(token, i, per_image):
    hook = _hooks.get(int(token))
    if hook is not None:
        hook(int(i), np.asarray(per_image))


@contextlib.contextmanager
def _registered(hook):
    token = next(_next_token) if hook is not None else 0
    if hook is not None:
        _hooks[token] = hook
    try:
        yield np.int32(token)
    finally:
        _hooks.pop(token, None)


# --------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------


def _split(model: Lama):
    return nnx.split(model)


class Placement:
    """Where a batch runs: the default device, or over several `devices` (a 1-D Mesh, weights
    replicated), either data-parallel (every batched array split along its image axis; a batch
    is padded to a multiple of the device count by repeating its last image) or, with
    spatial=True, each image's rows split over the devices (image-sized arrays split along H,
    the rest replicated; XLA's SPMD partitioner adds the halo exchanges and the gathers the
    FFTs need; a scale whose padded height the device count does not divide runs whole on
    every device, with a warning)."""

    def __init__(self, devices=None, spatial: bool = False):
        self.devices = list(devices) if devices is not None else []
        self.spatial = spatial and len(self.devices) > 1
        if len(self.devices) > 1:
            mesh = jax.sharding.Mesh(np.asarray(self.devices), ("split",))
            spec = jax.sharding.PartitionSpec(None, "split") if self.spatial else jax.sharding.PartitionSpec("split")
            self._split = jax.sharding.NamedSharding(mesh, spec)
            self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        elif self.devices:
            self._split = self._replicated = jax.sharding.SingleDeviceSharding(self.devices[0])

    def pad_batch(self, x: np.ndarray) -> np.ndarray:
        n = 1 if self.spatial else max(len(self.devices), 1)
        extra = -x.shape[0] % n
        return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x

    def weights(self, state):
        return jax.device_put(state, self._replicated) if self.devices else state

    def batched(self, *arrays):
        if not self.devices:
            return arrays
        if not self.spatial:
            return tuple(jax.device_put(x, self._split) for x in arrays)
        # images and masks (B, H, W, C) by rows; matrices and references whole
        if arrays[0].shape[1] % len(self.devices):
            warnings.warn(f"spatial split: the padded height {arrays[0].shape[1]} is not a multiple of the "
                          f"{len(self.devices)} devices, so this scale runs whole on every device", stacklevel=3)
        return tuple(jax.device_put(x, self._split if x.ndim == 4 and x.shape[1] % len(self.devices) == 0
                                    else self._replicated) for x in arrays)


def predict(model: Lama, image: np.ndarray, mask: np.ndarray, *, pad_mode: str = "symmetric", devices=None,
            spatial: bool = False):
    """LaMa's plain prediction. image (B, H, W, 3) float32 [0, 1]; mask (B, H, W, 1) binary.

    Pads bottom/right to the model's modulo (numpy `pad_mode`, 'symmetric' as LaMa's dataset),
    runs the generator, composites and crops. Returns (inpainted, raw prediction), both
    (B, H, W, 3) float32 numpy arrays. devices, spatial: run over these devices (`Placement`).
    """
    (b, h, w), place = image.shape[:3], Placement(devices, spatial)
    hp, wp = padded(h, model.config.modulo), padded(w, model.config.modulo)
    graphdef, state = _split(model)
    out, pred = _predict_program(graphdef, place.weights(state), *place.batched(
        *(pad_bottom_right(place.pad_batch(x), hp, wp, pad_mode) for x in (image, mask))))
    return np.asarray(out)[:b, :h, :w], np.asarray(pred)[:b, :h, :w]


@dataclasses.dataclass
class ScaleInfo:
    """What one scale of a refinement did."""

    size: tuple[int, int]         # (h, w) of this scale (of the first image, if a run mixes sizes)
    padded_size: tuple[int, int]  # (Hp, Wp) the network ran at
    refined: bool                 # False for the coarsest scale (a plain forward pass)
    losses: np.ndarray            # (iterations, B) loss per forward pass and image; empty if not refined
    seconds: float
    iterations: int = 0           # forward passes run (n_iters unless stopped early; 1 for the coarsest)


def refine(model: Lama, image, mask, config: RefineConfig = RefineConfig(), *,
           on_scale: Callable | None = None, on_iteration: Callable | None = None, devices=None,
           spatial: bool = False):
    """Multi-scale refinement of a batch of images that share a `run_key`.

    image: (B, H, W, 3) float32 [0, 1], or a sequence of (H_i, W_i, 3) arrays of one
    `run_key` (sizes may differ where every pyramid level pads to the same size); mask
    likewise (..., 1), binary {0, 1}, 1 = hole.
    Returns (result, [ScaleInfo per scale, coarsest first]): result (B, h, w, 3) float32 (a
    list of (h_i, w_i, 3) for a sequence), where (h, w) is the px_budget size (the caller
    decides how to bring it back to (H, W)). Each image gets its own pyramid, padded as it
    would be alone.

    on_scale(index, n_scales, ScaleInfo-without-results) is called before each scale;
    on_iteration(i, losses_per_image) after each iteration of a refined scale.
    devices, spatial: run over these devices, data-parallel or splitting each image's rows
    (`Placement`). Data-parallel, each image's result is the one it gets alone, except that
    early stopping waits for every image of the batch.
    """
    import time

    stacked = getattr(image, "ndim", None) == 4
    images, masks = [np.asarray(x, np.float32) for x in image], [np.asarray(x, np.float32) for x in mask]
    if not images or len(images) != len(masks) or any(x.shape[:2] != m.shape[:2] for x, m in zip(images, masks)):
        raise ValueError("refine needs one or more images and one mask of its image's size per image")
    plans = [plan_scales(*x.shape[:2], config, model.config.modulo) for x in images]
    keys = {_plan_key(plan, config.modulo) for plan in plans}
    if len(keys) > 1:
        raise ValueError(f"these images have {len(keys)} different run_keys (pyramid levels that pad to "
                         f"different sizes): refine each group of equal `run_key` on its own")
    batch, place = len(images), Placement(devices, spatial)
    if on_iteration is not None:  # without the copies `place` pads the batch with
        on_iteration = partial(lambda hook, i, losses: hook(i, losses[:batch]), on_iteration)
    pyramids = [image_pyramid(x, m, plan) for x, m, plan in zip(images, masks, plans)]

    def stack(arrays, hp, wp, mode):  # one (B', hp, wp, C) array, padded as each image alone
        return place.pad_batch(np.concatenate([pad_bottom_right(x[None], hp, wp, mode) for x in arrays]))

    graphdef, state = _split(model)
    state = place.weights(state)
    infos, results = [], None
    for index, scales in enumerate(zip(*plans)):  # this scale of every image
        (hp, wp), refined = scales[0].padded_size, scales[0].refined
        image_p = stack([levels[index][0] for levels in pyramids], hp, wp, "reflect")
        mask_p = pyramid.round_up(stack([levels[index][1] for levels in pyramids], hp, wp, "reflect"))
        info = ScaleInfo(scales[0].size, (hp, wp), refined, np.zeros((0, batch), np.float32), 0.0)
        if on_scale is not None:
            on_scale(index, len(plans[0]), info)
        start = time.perf_counter()
        if not refined:
            out, _ = _predict_program(graphdef, state, *place.batched(image_p, mask_p),
                                      compute_dtype=config.compute_dtype)
            info.iterations = 1
        else:
            operands = [scale_operands(ref[None], scale, config.modulo) for ref, scale in zip(results, scales)]
            operands = [place.pad_batch(np.concatenate(parts)) for parts in zip(*operands)]
            with _registered(on_iteration) as token:
                out, losses, used = _refine_program(
                    graphdef, state, *place.batched(image_p, mask_p, *operands),
                    jnp.float32(config.lr), jnp.float32(-np.inf if config.early_stop is None else config.early_stop),
                    jnp.int32(config.early_stop_window), token, n_iters=config.n_iters, erosion=config.erosion,
                    remat=config.remat, compute_dtype=config.compute_dtype, report=on_iteration is not None)
                out = jax.block_until_ready(out)
            info.iterations = int(used)
            info.losses = np.asarray(losses)[:info.iterations, :batch]
        out = np.asarray(out)
        results = [out[k, :h, :w] for k, (h, w) in enumerate(scale.size for scale in scales)]
        info.seconds = time.perf_counter() - start
        infos.append(info)
    return (np.stack(results) if stacked else results), infos


def image_pyramid(image: np.ndarray, mask: np.ndarray, plan: list[ScalePlan]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image (h, w, 3), mask (h, w, 1)) at every scale of `plan`, coarsest first: the input
    resized to the finest scale's (px_budget) size if needed, then each level blurred and
    resized from the next finer one; masks round up (any hole stays a hole)."""
    image, mask = jnp.asarray(image[None]), jnp.asarray(mask[None])
    h, w = plan[-1].size
    if (h, w) != image.shape[1:3]:
        image, mask = pyramid.resize(image, h, w), pyramid.round_up(pyramid.resize(mask, h, w))
    levels = [(image, mask)]
    for finer, coarser in zip(plan[::-1], plan[::-1][1:]):
        rows, cols = (pyramid.pyr_down_matrix(n, n_out, finer.down_sigma).astype(np.float32)
                      for n, n_out in zip(finer.size, coarser.size))
        prev_image, prev_mask = levels[-1]
        levels.append((pyramid.apply_separable(prev_image, rows, cols),
                       pyramid.round_up(pyramid.apply_separable(prev_mask, rows, cols))))
    return [(np.asarray(x)[0], np.asarray(m)[0]) for x, m in levels[::-1]]


def scale_operands(ref: np.ndarray, scale: ScalePlan, modulo: int):
    """(ref, down_rows, down_cols, half_rows, half_cols) of `scale_problem` for a refined
    `scale`; ref (B, h', w', 3) is the previous scale's result."""
    frame = reference_frame(scale.padded_size, ref.shape[1:3], modulo)

    def batched(matrix, rows, cols):
        return np.broadcast_to(pyramid.embed(matrix, rows, cols), (ref.shape[0], rows, cols))

    down = [batched(pyramid.pyr_down_matrix(n, n_out, scale.down_sigma), rows, cols)
            for n, n_out, rows, cols in zip(scale.size, ref.shape[1:3], frame, scale.padded_size)]
    half = [batched(pyramid.resize_matrix(n, n_out), rows, cols)
            for n, n_out, rows, cols in zip(scale.size, ref.shape[1:3], frame, scale.padded_size)]
    return (pad_bottom_right(ref, *frame, "constant"), *down, *half)


# --------------------------------------------------------------------------------------
# Memory estimate
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class MemoryEstimate:
    """Expected peak memory of one inpaint/refine call, from XLA's own buffer assignment.

    On CPU all of it is host memory and `peak_bytes` is the process's expected peak resident
    set (`baseline_bytes`, what is resident now: interpreter, libraries, loaded weights, plus
    the largest program's working set and the host-side images). On GPU/TPU `peak_bytes` is
    device memory: the weights plus the largest program's working set.
    """

    backend: str
    peak_bytes: int
    baseline_bytes: int        # resident now (CPU) / the weights (accelerators)
    program_bytes: int         # largest program: XLA temporaries + outputs + non-weight arguments
    host_bytes: int            # image pyramid, padded copies and results on the host
    scales: list[tuple[tuple[int, int], int]]  # (padded size, program bytes) per scale

    def __str__(self):
        gib = 2.0**30
        return (f"{self.peak_bytes / gib:.2f} GiB peak on {self.backend} "
                f"({'resident now' if self.backend == 'cpu' else 'weights'} {self.baseline_bytes / gib:.2f}, "
                f"program {self.program_bytes / gib:.2f}, "
                f"host images {self.host_bytes / gib:.2f})")


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak so far is an upper bound
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def estimate_memory(model: Lama, height: int, width: int, *, batch: int = 1, refine: bool = True,
                    config: RefineConfig = RefineConfig()) -> MemoryEstimate:
    """Peak memory of `refine` (or, with refine=False, `predict`) on `batch` images of height x
    width, without running it: each scale's program is compiled (XLA's compilation cache makes
    the real call's compilation cheap afterwards) and its buffer assignment read."""
    graphdef, state = _split(model)
    weights = sum(x.nbytes for x in jax.tree.leaves(state))
    f32 = jnp.float32

    def spec(*shape):
        return jax.ShapeDtypeStruct(shape, f32)

    def program_bytes(lowered):
        stats = lowered.compile().memory_analysis()
        if stats is None:
            raise RuntimeError(f"the {jax.default_backend()} backend reports no memory statistics")
        return stats.temp_size_in_bytes + stats.output_size_in_bytes + stats.argument_size_in_bytes - weights

    scales, pixels = [], 0
    plan = plan_scales(height, width, config, model.config.modulo) if refine else [ScalePlan(
        (height, width), (padded(height, model.config.modulo), padded(width, model.config.modulo)), False, 1.0)]
    for previous, ((h, w), (hp, wp), refined, _) in zip([None] + plan, plan):
        pixels += (h * w + hp * wp) * batch
        if refined:
            hr, wr = reference_frame((hp, wp), previous.size, config.modulo)
            lowered = _refine_program.lower(
                graphdef, state, spec(batch, hp, wp, 3), spec(batch, hp, wp, 1), spec(batch, hr, wr, 3),
                spec(batch, hr, hp), spec(batch, wr, wp), spec(batch, hr, hp), spec(batch, wr, wp),
                f32(0), f32(0), jnp.int32(1), jnp.int32(0), n_iters=config.n_iters, erosion=config.erosion,
                remat=config.remat, compute_dtype=config.compute_dtype, report=True)
        else:
            lowered = _predict_program.lower(graphdef, state, spec(batch, hp, wp, 3), spec(batch, hp, wp, 1),
                                             compute_dtype=config.compute_dtype if refine else "float32")
        scales.append(((hp, wp), program_bytes(lowered)))
    # float32 RGB + mask per level and padded copy, plus the caller's input, result and output
    host = 16 * pixels + 3 * 16 * height * width * batch
    program = max(b for _, b in scales)
    if jax.default_backend() == "cpu":
        baseline = _resident_bytes()
        return MemoryEstimate("cpu", baseline + program + host, baseline, program, host, scales)
    return MemoryEstimate(jax.default_backend(), weights + program, weights, program, host, scales)
