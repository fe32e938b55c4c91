"""Plain prediction and multi-scale feature refinement as compiled JAX programs.

Refinement follows Kulshreshtha, Pugh & Jiddi 2022 (arXiv 2206.13644) and LaMa's
`refinement.py` (docs/lama.md §6): an image/mask pyramid; the coarsest scale is a plain
forward pass; at each finer scale z = front(image, mask) is optimised with Adam so that
rear(z), blurred and halved, matches the previous scale's result inside the (eroded) hole
and the image outside it. n_iters forward passes and n_iters - 1 Adam steps per scale.

Each scale is one `jax.jit` program (`_refine_program`) whose iterations run in a
`lax.while_loop` carrying (z, optimizer state), bounded by n_iters and optionally stopped
early when the loss stops improving (RefineConfig.early_stop). Weights are arguments, not
constants, and everything that depends on an image's valid (unpadded) size is data
(`plan.ScaleOperands`), so a second image of the same padded size reuses the program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from . import pyramid
from .losses import reference_hole, refinement_loss
from .contract import Generator, model_input
from .placement import Placement
from .plan import (RefineConfig, ScaleOperands, ScalePlan, image_pyramid, pad_bottom_right, padded, plan_key,
                   plan_scales, reference_frame, scale_operands)


class ProgramSettings(NamedTuple):
    """The static settings of a refined scale's program (part of its compilation key)."""

    n_iters: int
    erosion: int
    remat: str
    tile_pixels: int
    compute_dtype: str

    @classmethod
    def of(cls, config: RefineConfig) -> ProgramSettings:
        return cls(config.n_iters, config.erosion, config.remat, config.tile_pixels, config.compute_dtype)


class Controls(NamedTuple):
    """The dynamic scalars of a refined scale's program: Adam's learning rate, the early-stop
    tolerance (-inf: never) and window."""

    lr: jax.Array
    stop_tol: jax.Array
    stop_window: jax.Array

    @classmethod
    def of(cls, config: RefineConfig) -> Controls:
        tol = -np.inf if config.early_stop is None else config.early_stop
        return cls(np.float32(config.lr), np.float32(tol), np.int32(config.early_stop_window))


# --------------------------------------------------------------------------------------
# Compiled programs
# --------------------------------------------------------------------------------------


def _compute_model(graphdef, state, compute_dtype: str) -> Generator:
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


def scale_problem(graphdef, state, operands: ScaleOperands, settings: ProgramSettings):
    """The optimisation problem of one refined scale, as pure functions (trace inside jit).

    Returns (z0, loss_fn) with loss_fn(z) -> (summed loss, (loss per image (B,), prediction)).
    z stays float32; the network runs in settings.compute_dtype, the losses in float32.
    """
    model = _compute_model(graphdef, state, settings.compute_dtype)
    image, mask = operands.image, operands.mask
    hole = reference_hole(mask, operands.half_rows, operands.half_cols, settings.erosion)
    x = model_input(model.config, image, mask).astype(settings.compute_dtype)
    base = x[..., : model.config.output_nc]

    def loss_fn(z):
        z = jax.tree.map(lambda t: t.astype(settings.compute_dtype), z)
        pred = model.rear(z, base, remat=settings.remat, tile_pixels=settings.tile_pixels).astype(jnp.float32)
        per_image = refinement_loss(pred, image, mask, operands.ref, operands.down_rows, operands.down_cols,
                                           hole)
        # Summing per-image losses gives each image the gradient it would get alone.
        return jnp.sum(per_image), (per_image, pred)

    return jax.tree.map(lambda t: t.astype(jnp.float32), model.front(x)), loss_fn


def adam(lr):
    """torch.optim.Adam's defaults as optax: betas (0.9, 0.999), eps 1e-8, no weight decay."""
    return optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)


@partial(jax.jit, static_argnames=("graphdef", "settings", "report"))
def _refine_program(graphdef, state, operands: ScaleOperands, controls: Controls, hook_token, *,
                    settings: ProgramSettings, report=False):
    """One refined scale: at most n_iters forwards and n_iters - 1 Adam steps in a while_loop,
    stopping early once every image's relative loss improvement over `controls.stop_window`
    iterations is below `controls.stop_tol`. report: call the registered hook of `hook_token`
    after every forward. Returns (composite (B, Hp, Wp, 3), losses (n_iters, B), zero after the
    stop, forwards used (int32))."""
    z, loss_fn = scale_problem(graphdef, state, operands, settings)
    tx, n_iters = adam(controls.lr), settings.n_iters
    image, mask = operands.image, operands.mask

    def converged(losses, i):
        before = losses[jnp.maximum(i - controls.stop_window, 0)]
        gain = (before - losses[i]) / jnp.maximum(before, jnp.finfo(jnp.float32).tiny)
        return (i >= controls.stop_window) & jnp.all(gain < controls.stop_tol)

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


class Program(NamedTuple):
    """One compiled program of a job with abstract arguments: `function.lower(*args, **kwargs)`."""

    padded_size: tuple[int, int]
    function: Callable
    args: tuple
    kwargs: dict


def programs(model: Generator, height: int, width: int, *, batch: int = 1, multiscale: bool = True,
             config: RefineConfig = RefineConfig()) -> list[Program]:
    """The programs `multiscale` (or with multiscale=False `predict`) runs for `batch` images of
    height x width, one per scale, with shape/dtype structs as arguments (for `memory` and
    `jax.export`)."""
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)

    def spec(*shape, dtype=jnp.float32):
        return jax.ShapeDtypeStruct(shape, dtype)

    plan = plan_scales(height, width, config, model.config.modulo) if multiscale else [ScalePlan(
        (height, width), (padded(height, model.config.modulo), padded(width, model.config.modulo)), False, 1.0)]
    out = []
    for previous, scale in zip([None] + plan, plan):
        hp, wp = scale.padded_size
        if scale.refined:
            hr, wr = reference_frame(scale.padded_size, previous.size, config.modulo)
            operands = ScaleOperands(spec(batch, hp, wp, 3), spec(batch, hp, wp, 1), spec(batch, hr, wr, 3),
                                     spec(batch, hr, hp), spec(batch, wr, wp), spec(batch, hr, hp), spec(batch, wr, wp))
            controls = Controls(spec(), spec(), spec(dtype=jnp.int32))
            out.append(Program((hp, wp), _refine_program, (graphdef, state, operands, controls, spec(dtype=jnp.int32)),
                               dict(settings=ProgramSettings.of(config), report=True)))
        else:
            out.append(Program((hp, wp), _predict_program, (graphdef, state, spec(batch, hp, wp, 3),
                                                            spec(batch, hp, wp, 1)),
                               dict(compute_dtype=config.compute_dtype if multiscale else "float32")))
    return out


# --------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------


def predict(model: Generator, image: np.ndarray, mask: np.ndarray, *, pad_mode: str = "symmetric", devices=None,
            spatial: bool = False):
    """LaMa's plain prediction. image (B, H, W, 3) float32 [0, 1]; mask (B, H, W, 1) binary.

    Pads bottom/right to the model's modulo (numpy `pad_mode`, 'symmetric' as LaMa's dataset),
    runs the generator, composites and crops. Returns (inpainted, raw prediction), both
    (B, H, W, 3) float32 numpy arrays. devices, spatial: run over these devices (`Placement`).
    """
    (b, h, w), place = image.shape[:3], Placement(devices, spatial)
    hp, wp = padded(h, model.config.modulo), padded(w, model.config.modulo)
    graphdef, state = nnx.split(model)
    inputs = place.batched(tuple(pad_bottom_right(place.pad_batch(x), hp, wp, pad_mode) for x in (image, mask)))
    out, pred = _predict_program(graphdef, place.weights(state), *inputs)
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


def multiscale(model: Generator, image, mask, config: RefineConfig = RefineConfig(), *,
               on_scale: Callable | None = None, on_iteration: Callable | None = None, devices=None,
               spatial: bool = False):
    """Multi-scale refinement of a batch of images that share a `plan.run_key`.

    image: (B, H, W, 3) float32 [0, 1], or a sequence of (H_i, W_i, 3) arrays of one run_key
    (sizes may differ where every pyramid level pads to the same size); mask likewise
    (..., 1), binary {0, 1}, 1 = hole.
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
    stacked = getattr(image, "ndim", None) == 4
    images, masks = [np.asarray(x, np.float32) for x in image], [np.asarray(x, np.float32) for x in mask]
    if not images or len(images) != len(masks) or any(x.shape[:2] != m.shape[:2] for x, m in zip(images, masks)):
        raise ValueError("refinement needs one or more images and one mask of its image's size per image")
    plans = [plan_scales(*x.shape[:2], config, model.config.modulo) for x in images]
    keys = {plan_key(plan, config.modulo) for plan in plans}
    if len(keys) > 1:
        raise ValueError(f"these images have {len(keys)} different run_keys (pyramid levels that pad to "
                         f"different sizes): refine each group of equal `run_key` on its own")
    batch, place = len(images), Placement(devices, spatial)
    if on_iteration is not None:  # without the copies `place` pads the batch with
        on_iteration = partial(lambda hook, i, losses: hook(i, losses[:batch]), on_iteration)
    pyramids = [image_pyramid(x, m, plan) for x, m, plan in zip(images, masks, plans)]

    def stack(arrays, hp, wp, mode):  # one (B, hp, wp, C) array, padded as each image alone
        return np.concatenate([pad_bottom_right(x[None], hp, wp, mode) for x in arrays])

    graphdef, state = nnx.split(model)
    state = place.weights(state)
    settings, controls = ProgramSettings.of(config), Controls.of(config)
    infos, results = [], None
    for index, scales in enumerate(zip(*plans)):  # this scale of every image
        (hp, wp), refined = scales[0].padded_size, scales[0].refined
        image_p = stack([levels[index][0] for levels in pyramids], hp, wp, "reflect")
        mask_p = np.asarray(pyramid.round_up(stack([levels[index][1] for levels in pyramids], hp, wp, "reflect")))
        info = ScaleInfo(scales[0].size, (hp, wp), refined, np.zeros((0, batch), np.float32), 0.0)
        if on_scale is not None:
            on_scale(index, len(plans[0]), info)
        start = time.perf_counter()
        if not refined:
            out, _ = _predict_program(graphdef, state, *place.batched((place.pad_batch(image_p),
                                                                       place.pad_batch(mask_p))),
                                      compute_dtype=config.compute_dtype)
            info.iterations = 1
        else:
            operands = scale_operands(image_p, mask_p, results, list(scales), config.modulo)
            operands = place.batched(jax.tree.map(place.pad_batch, operands))
            with _registered(on_iteration) as token:
                out, losses, used = _refine_program(graphdef, state, operands, controls, token, settings=settings,
                                                     report=on_iteration is not None)
                out = jax.block_until_ready(out)
            info.iterations = int(used)
            info.losses = np.asarray(losses)[:info.iterations, :batch]
        out = np.asarray(out)
        results = [out[k, :h, :w] for k, (h, w) in enumerate(scale.size for scale in scales)]
        info.seconds = time.perf_counter() - start
        infos.append(info)
    return (np.stack(results) if stacked else results), infos
