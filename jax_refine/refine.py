"""Plain prediction and multi-scale feature refinement as compiled JAX programs.

Refinement follows Kulshreshtha, Pugh & Jiddi 2022 (arXiv 2206.13644) and LaMa's
`refinement.py` (docs/lama.md §6): an image/mask pyramid; the coarsest scale is a plain
forward pass; at each finer scale z = front(image, mask) is optimised with Adam so that
rear(z), blurred and halved, matches the previous scale's result inside the (eroded) hole
and the image outside it. n_iters forward passes and n_iters - 1 Adam steps per scale.

A refined scale's iterations run in a `lax.while_loop` of `_refine_steps`, carrying its
`Refinement` (z, optimizer state, losses), bounded by n_iters and optionally stopped early
when the loss stops improving (RefineConfig.early_stop); `_refine_start` computes z0 and
`_composite_program` the result. A run that reports its iterations calls `_refine_steps`
once per forward pass (`Controls.forwards_per_call` is data) and reads the losses back in
between, instead of calling back into Python from the program: a program with a host
callback is never stored in JAX's persistent compilation cache, and this way the reporting
and the quiet run share one compiled program. Weights are arguments, not constants, and
everything that depends on an image's valid (unpadded) size is data (`plan.ScaleOperands`),
so a second image of the same padded size reuses the programs.

A run stays on the device: the host uploads each image and mask with the plan's small
matrices in one transfer (`RunInputs`), small programs build the pyramid, each scale's
padded batch and the previous scale's reference and the final upscale, each scale's
programs pass their results on as device arrays, and the results and losses come back in
one transfer. Programs per scale (rather than one for the whole run) keep only one scale's
working set alive at a time, so the peak is that of the largest scale. The driver
(`_refine_run`) calls every program through a `call` argument, so `trace` runs the same
code on shape structs for `memory` and `jax.export`.
"""

from __future__ import annotations

import dataclasses
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
from .plan import (PyramidOperators, RefineConfig, ScaleOperands, ScalePlan, pad_bottom_right, padded,
                   plan_key, plan_scales, pyramid_operators, reference_frame, scale_matrices, upscale_operators)


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
    """The dynamic scalars of a refined scale's programs: Adam's learning rate, the early-stop
    tolerance (-inf: never) and window, and the forward passes each call of `_refine_steps`
    runs (n_iters: all in one call; 1: one per call, for a run that reports every iteration)."""

    lr: jax.Array
    stop_tol: jax.Array
    stop_window: jax.Array
    forwards_per_call: jax.Array

    @classmethod
    def of(cls, config: RefineConfig, *, report: bool = False) -> Controls:
        tol = -np.inf if config.early_stop is None else config.early_stop
        return cls(np.float32(config.lr), np.float32(tol), np.int32(config.early_stop_window),
                   np.int32(1 if report else config.n_iters))


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
    return composite(pred, image, mask), pred


def composite(pred, image, mask):
    """The prediction inside the hole, the image outside: all (B, Hp, Wp, C), mask binary."""
    return mask * pred + (1 - mask) * image


def initial_features(graphdef, state, operands: ScaleOperands, settings: ProgramSettings):
    """A refined scale's starting point z0 = front(image, mask), float32 (trace inside jit)."""
    model = _compute_model(graphdef, state, settings.compute_dtype)
    x = model_input(model.config, operands.image, operands.mask).astype(settings.compute_dtype)
    return jax.tree.map(lambda t: t.astype(jnp.float32), model.front(x))


def scale_loss(graphdef, state, operands: ScaleOperands, settings: ProgramSettings):
    """A refined scale's objective, a pure function of z (trace inside jit): loss_fn(z) ->
    (summed loss, (loss per image (B,), prediction (B, Hp, Wp, 3))). z stays float32; the
    network runs in settings.compute_dtype, the losses in float32."""
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

    return loss_fn


def adam(lr):
    """torch.optim.Adam's defaults as optax: betas (0.9, 0.999), eps 1e-8, no weight decay."""
    return optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)


class Refinement(NamedTuple):
    """A refined scale between calls of its programs, on the device: the forward passes done
    (int32), the features z, Adam's state, the loss of every forward pass and image (n_iters, B)
    (zero where none ran), the prediction (B, Hp, Wp, 3) of the forward pass that stopped the
    scale early or of the last one (zero before), and whether it stopped early."""

    forwards: jax.Array
    z: tuple
    opt_state: optax.OptState
    losses: jax.Array
    pred: jax.Array
    stopped: jax.Array


@partial(jax.jit, static_argnames=("graphdef", "settings"))
def _refine_start(graphdef, state, operands: ScaleOperands, controls: Controls, *,
                  settings: ProgramSettings) -> Refinement:
    """A refined scale before its first forward pass, with Adam's fresh state and z still
    zeros: the first `_refine_steps` call computes z0 = front(image, mask), so that the encoder
    is compiled into that one program rather than into a second one (which cost 1.2 s more
    compilation on CPU)."""
    shapes = jax.eval_shape(lambda: initial_features(graphdef, state, operands, settings))
    z = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return Refinement(jnp.int32(0), z, adam(controls.lr).init(z),
                      jnp.zeros((settings.n_iters, operands.image.shape[0]), jnp.float32),
                      jnp.zeros(operands.image.shape, jnp.float32), jnp.bool_(False))


@partial(jax.jit, static_argnames=("graphdef", "settings"), donate_argnames=("run",))
def _refine_steps(graphdef, state, operands: ScaleOperands, controls: Controls, run: Refinement, *,
                  settings: ProgramSettings) -> Refinement:
    """The next `controls.forwards_per_call` forward passes of a refined scale (from z0 =
    front(image, mask) on the first call), in a while_loop: forward i < n_iters - 1 is
    followed by an Adam step, forward n_iters - 1 is the last; the scale stops early once
    every image's relative loss improvement over `controls.stop_window` forward passes is
    below `controls.stop_tol` (z then stays at the features of the forward pass that stopped
    it, whose prediction is kept). `run` is donated: the result takes its buffers."""
    loss_fn, tx, n_iters = scale_loss(graphdef, state, operands, settings), adam(controls.lr), settings.n_iters
    until = jnp.minimum(run.forwards + controls.forwards_per_call, n_iters)
    z = jax.lax.cond(run.forwards == 0, lambda: initial_features(graphdef, state, operands, settings),
                     lambda: run.z)
    run = run._replace(z=z)

    def converged(losses, i):
        before = losses[jnp.maximum(i - controls.stop_window, 0)]
        gain = (before - losses[i]) / jnp.maximum(before, jnp.finfo(jnp.float32).tiny)
        return (i >= controls.stop_window) & jnp.all(gain < controls.stop_tol)

    def keep_going(run):
        return (run.forwards < jnp.minimum(until, n_iters - 1)) & ~run.stopped

    def step(run):
        i = run.forwards
        (_, (per_image, pred)), grads = jax.value_and_grad(loss_fn, has_aux=True)(run.z)
        losses = run.losses.at[i].set(per_image)
        stopped = converged(losses, i)
        updates, opt_state = tx.update(grads, run.opt_state, run.z)
        z = jax.tree.map(lambda new, old: jnp.where(stopped, old, new), optax.apply_updates(run.z, updates), run.z)
        return Refinement(i + 1, z, opt_state, losses, pred, stopped)

    def last_forward(run):
        _, (per_image, pred) = loss_fn(run.z)
        return run._replace(forwards=jnp.int32(n_iters), losses=run.losses.at[n_iters - 1].set(per_image), pred=pred)

    run = jax.lax.while_loop(keep_going, step, run)
    last = (run.forwards == n_iters - 1) & (until == n_iters) & ~run.stopped
    return jax.lax.cond(last, last_forward, lambda run: run, run)


_composite_program = jax.jit(composite)


# --------------------------------------------------------------------------------------
# The device side of the plan: pyramid, batches, references, upscale
# --------------------------------------------------------------------------------------


@jax.jit
def _pyramid_program(image, mask, operators: PyramidOperators):
    """One image's pyramid: image (H, W, 3), mask (H, W, 1) binary -> [(image (h, w, 3),
    mask (h, w, 1)) per scale, coarsest first] (see `plan.pyramid_operators`)."""
    image, mask = image[None], mask[None]
    if operators.budget is not None:
        image = pyramid.apply_separable(image, *operators.budget)
        mask = pyramid.round_up(pyramid.apply_separable(mask, *operators.budget))
    levels = [(image, mask)]
    for rows, cols in operators.down[::-1]:
        image, mask = levels[-1]
        levels.append((pyramid.apply_separable(image, rows, cols),
                       pyramid.round_up(pyramid.apply_separable(mask, rows, cols))))
    return [(x[0], m[0]) for x, m in levels[::-1]]


@partial(jax.jit, static_argnames=("padded_size", "copies"))
def _batch_program(levels, *, padded_size, copies):
    """One scale's batch: levels [(image (h_i, w_i, 3), mask (h_i, w_i, 1))] -> image
    (copies, Hp, Wp, 3), mask (copies, Hp, Wp, 1), each reflect-padded at the bottom/right as
    it would be alone, the last image repeated up to `copies` (`Placement.batch_size`)."""
    hp, wp = padded_size

    def stack(arrays):
        x = jnp.stack([jnp.pad(a, ((0, hp - a.shape[0]), (0, wp - a.shape[1]), (0, 0)), mode="reflect")
                       for a in arrays])
        return jnp.concatenate([x, jnp.repeat(x[-1:], copies - x.shape[0], axis=0)])

    return stack([x for x, _ in levels]), pyramid.round_up(stack([m for _, m in levels]))


@partial(jax.jit, static_argnames=("frame",))
def _reference_program(out, sizes, *, frame):
    """The previous scale's results out (B, Hp', Wp', 3), each cropped to its valid size
    sizes (B, 2) and zero-padded to frame (Hr, Wr) (`plan.reference_frame`): (B, Hr, Wr, 3)."""
    hr, wr = frame
    x = out[:, :hr, :wr]
    x = jnp.pad(x, ((0, 0), (0, hr - x.shape[1]), (0, wr - x.shape[2]), (0, 0)))
    rows = jnp.arange(hr)[None, :, None, None] < sizes[:, 0, None, None, None]
    cols = jnp.arange(wr)[None, None, :, None] < sizes[:, 1, None, None, None]
    return jnp.where(rows & cols, x, 0.0)


@partial(jax.jit, static_argnames=("index", "size"))
def _upscale_program(out, rows, cols, *, index, size):
    """Image `index` of out (B, Hp, Wp, 3), cropped to its valid size (h, w), resized with
    rows (H, h) and cols (W, w) to (H, W, 3)."""
    h, w = size
    return pyramid.apply_separable(out[index:index + 1, :h, :w], rows, cols)[0]


# --------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------


class Program(NamedTuple):
    """One call of a compiled program by a driver: `function(*args, **kwargs)`; `scale` the
    index of the scale it computes (None for the pyramid, batching, reference and upscale)."""

    scale: int | None
    function: Callable
    args: tuple
    kwargs: dict

    def lower(self):
        return self.function.lower(*self.args, **self.kwargs)


def _execute(program: Program):
    return program.function(*program.args, **program.kwargs)


class RunInputs(NamedTuple):
    """All that a refinement run takes from the host, uploaded in one transfer (a pytree): per
    image its image (H, W, 3) and mask (H, W, 1) and its `plan.PyramidOperators` and upscale
    operators (None: none); per refined scale its `plan.ScaleMatrices` (batch padded for the
    placement); the `Controls`."""

    images: list
    masks: list
    pyramids: list
    upscales: list
    scales: list
    controls: Controls


def _run_inputs(images, masks, plans, config: RefineConfig, place: Placement, upscale: bool, *,
                report: bool = False) -> RunInputs:
    """The host's `RunInputs` (images and masks as given: arrays, or shape structs to trace)."""
    sizes = [x.shape[:2] for x in images]
    scales = [jax.tree.map(place.pad_batch, scale_matrices(list(now), list(before), config.modulo))
              for before, now in zip(zip(*plans), list(zip(*plans))[1:])]
    upscales = [upscale_operators(size, plan) if upscale else None for size, plan in zip(sizes, plans)]
    return RunInputs(list(images), list(masks), [pyramid_operators(size, plan) for size, plan in zip(sizes, plans)],
                     upscales, scales, Controls.of(config, report=report))


def _refine_run(graphdef, state, inputs: RunInputs, plans: list[list[ScalePlan]], config: RefineConfig,
                place: Placement, call: Callable[[Program], object], *, on_scale=None, on_forward=None):
    """The device side of `multiscale`: every program of the run, in order, through `call`
    (`_execute` runs it; `trace` lowers it on shape structs). Consumes inputs.images / masks.
    A refined scale is `_refine_start`, then `_refine_steps` until its forward passes are done
    (one call, unless `inputs.controls` asks for fewer per call), then `_composite_program`;
    on_forward(Refinement) -> stopped, if given, is called after every `_refine_steps` call.
    Returns (out (B', Hp, Wp, 3) the finest scale's composites, [upscaled (H_i, W_i, 3) or
    None per image], [(ScaleInfo, losses, forwards used) per scale]), all left on the device."""
    batch, copies, settings = len(plans), place.batch_size(len(plans)), ProgramSettings.of(config)
    levels = [call(Program(None, _pyramid_program, (x, m, ops), {}))
              for x, m, ops in zip(inputs.images, inputs.masks, inputs.pyramids)]
    inputs.images.clear()
    inputs.masks.clear()
    out, runs, matrices = None, [], iter(inputs.scales)
    for index, scales in enumerate(zip(*plans)):  # this scale of every image
        (hp, wp), refined = scales[0].padded_size, scales[0].refined
        info = ScaleInfo(scales[0].size, (hp, wp), refined, np.zeros((0, batch), np.float32), 0.0, 1)
        if on_scale is not None:
            on_scale(index, len(plans[0]), info)
        start = time.perf_counter()
        image, mask = call(Program(None, _batch_program, ([levels_i[index] for levels_i in levels],),
                                   dict(padded_size=(hp, wp), copies=copies)))
        for levels_i in levels:
            levels_i[index] = None  # each level is used once
        if not refined:
            out, _ = call(Program(index, _predict_program, (graphdef, state, *place.batched((image, mask))),
                                  dict(compute_dtype=config.compute_dtype)))
            losses = used = None
        else:
            scale_m = next(matrices)
            frame = reference_frame((hp, wp), plans[0][index - 1].size, config.modulo)
            ref = call(Program(None, _reference_program, (out, scale_m.ref_sizes), dict(frame=frame)))
            operands = place.batched(ScaleOperands(image, mask, ref, *scale_m[:4]))
            out = ref = image = mask = None  # the previous scale's result lives on in `operands` alone
            run = call(Program(index, _refine_start, (graphdef, state, operands, inputs.controls),
                               dict(settings=settings)))
            for _ in range(settings.n_iters if on_forward is not None else 1):
                run = call(Program(index, _refine_steps, (graphdef, state, operands, inputs.controls, run),
                                   dict(settings=settings)))
                if on_forward is not None and on_forward(run):
                    break
            out = call(Program(None, _composite_program, (run.pred, operands.image, operands.mask), {}))
            losses, used, run, operands = run.losses, run.forwards, None, None
        jax.block_until_ready(out)
        info.seconds = time.perf_counter() - start
        runs.append((info, losses, used))
    upscaled = [None if ops is None else call(Program(None, _upscale_program, (out, *ops),
                                                      dict(index=k, size=plan[-1].size)))
                for k, (ops, plan) in enumerate(zip(inputs.upscales, plans))]
    return out, upscaled, runs


def _predict_run(graphdef, state, image, mask, place: Placement, call: Callable[[Program], object],
                 compute_dtype: str = "float32"):
    """The device side of `predict`: image (B', Hp, Wp, 3) and mask (B', Hp, Wp, 1), padded."""
    return call(Program(0, _predict_program, (graphdef, state, *place.batched((image, mask))),
                        dict(compute_dtype=compute_dtype)))


def predict(model: Generator, image: np.ndarray, mask: np.ndarray, *, pad_mode: str = "symmetric", devices=None,
            spatial: bool = False, compute_dtype: str = "float32"):
    """LaMa's plain prediction. image (B, H, W, 3) float32 [0, 1]; mask (B, H, W, 1) binary.

    Pads bottom/right to the model's modulo (numpy `pad_mode`, 'symmetric' as LaMa's dataset),
    runs the generator, composites and crops. Returns (inpainted, raw prediction), both
    (B, H, W, 3) float32 numpy arrays. devices, spatial: run over these devices (`Placement`).
    compute_dtype: the network's (`RefineConfig.compute_dtype`). One transfer to the device
    (image and mask) and one back (both results).
    """
    (b, h, w), place = image.shape[:3], Placement(devices, spatial)
    hp, wp = padded(h, model.config.modulo), padded(w, model.config.modulo)
    graphdef, state = nnx.split(model)
    inputs = jax.device_put(tuple(pad_bottom_right(place.pad_batch(np.asarray(x, np.float32)), hp, wp, pad_mode)
                                  for x in (image, mask)))
    out, pred = jax.device_get(_predict_run(graphdef, place.weights(state), *inputs, place, _execute, compute_dtype))
    return out[:b, :h, :w], pred[:b, :h, :w]


@dataclasses.dataclass
class ScaleInfo:
    """What one scale of a refinement did."""

    size: tuple[int, int]         # (h, w) of this scale (of the first image, if a run mixes sizes)
    padded_size: tuple[int, int]  # (Hp, Wp) the network ran at
    refined: bool                 # False for the coarsest scale (a plain forward pass)
    losses: np.ndarray            # (iterations, B) loss per forward pass and image; empty if not refined
    seconds: float
    iterations: int = 0           # forward passes run (n_iters unless stopped early; 1 for the coarsest)


def _plans(model: Generator, sizes: list[tuple[int, int]], config: RefineConfig) -> list[list[ScalePlan]]:
    """Each image's `plan_scales`; ValueError unless they share one run_key."""
    plans = [plan_scales(*size, config, model.config.modulo) for size in sizes]
    keys = {plan_key(plan, config.modulo) for plan in plans}
    if len(keys) > 1:
        raise ValueError(f"these images have {len(keys)} different run_keys "
                         "(pyramid levels that pad to different sizes): refine each group of equal `run_key` on its own")
    return plans


def multiscale(model: Generator, image, mask, config: RefineConfig = RefineConfig(), *,
               on_scale: Callable | None = None, on_iteration: Callable | None = None, devices=None,
               spatial: bool = False, upscale: bool = False):
    """Multi-scale refinement of a batch of images that share a `plan.run_key`.

    image: (B, H, W, 3) float32 [0, 1], or a sequence of (H_i, W_i, 3) arrays of one run_key
    (sizes may differ where every pyramid level pads to the same size); mask likewise
    (..., 1), binary {0, 1}, 1 = hole.
    Returns (result, [ScaleInfo per scale, coarsest first]): result (B, h, w, 3) float32 (a
    list of (h_i, w_i, 3) for a sequence), where (h, w) is the px_budget size, or with upscale
    the input's size (H, W) (the result resized back, bilinear). Each image gets its own
    pyramid, padded as it would be alone.

    Images and masks go to the device in one transfer and the results (with the losses) come
    back in one; the pyramid, each scale's padding and reference and the upscale run there.
    on_scale(index, n_scales, ScaleInfo-without-results) is called before each scale;
    on_iteration(i, losses_per_image) after each forward pass i of a refined scale: the
    scale's programs then run one forward pass per call and its losses come back after each
    (the only other traffic). Reporting or not, the programs are the same, so one compilation
    (and one persistent-cache entry) serves both.
    devices, spatial: run over these devices, data-parallel or splitting each image's rows
    (`Placement`). Data-parallel, each image's result is the one it gets alone, except that
    early stopping waits for every image of the batch.
    """
    stacked = getattr(image, "ndim", None) == 4
    images, masks = [np.asarray(x, np.float32) for x in image], [np.asarray(x, np.float32) for x in mask]
    if not images or len(images) != len(masks) or any(x.shape[:2] != m.shape[:2] for x, m in zip(images, masks)):
        raise ValueError("refinement needs one or more images and one mask of its image's size per image")
    plans = _plans(model, [x.shape[:2] for x in images], config)
    batch, place = len(images), Placement(devices, spatial)
    on_forward = None if on_iteration is None else partial(_report_forward, on_iteration, batch)
    graphdef, state = nnx.split(model)
    state = place.weights(state)
    inputs = jax.device_put(_run_inputs(images, masks, plans, config, place, upscale, report=on_forward is not None))
    out, upscaled, runs = _refine_run(graphdef, state, inputs, plans, config, place, _execute, on_scale=on_scale,
                                      on_forward=on_forward)
    out, upscaled, stats = jax.device_get((out, upscaled, [(losses, used) for _, losses, used in runs]))
    infos = [info for info, _, _ in runs]
    for info, (losses, used) in zip(infos, stats):
        if losses is not None:
            info.iterations = int(used)
            info.losses = losses[:info.iterations, :batch]
    results = [full if full is not None else out[k, :h, :w]
               for k, (full, (h, w)) in enumerate(zip(upscaled, (plan[-1].size for plan in plans)))]
    return (np.stack(results) if stacked else results), infos


def _report_forward(on_iteration: Callable, batch: int, run: Refinement) -> bool:
    """on_iteration(i, losses of the first `batch` images) for the forward pass i that `run`
    just did (one per call when reporting); returns whether the scale stopped there."""
    forwards, losses, stopped = jax.device_get((run.forwards, run.losses, run.stopped))
    on_iteration(int(forwards) - 1, losses[forwards - 1, :batch])  # not the copies `place` pads the batch with
    return bool(stopped)


def trace(model: Generator, height: int, width: int, call: Callable[[Program], object], *, batch: int = 1,
          multiscale: bool = True, config: RefineConfig = RefineConfig(), upscale: bool = False) -> None:
    """Drive `multiscale` (or with multiscale=False `predict`) for `batch` images of height x
    width on shape/dtype structs instead of arrays: the same driver calls `call(program)` for
    every `Program` the real run calls, in order, with structs as arguments; `call` returns
    the program's outputs as structs, e.g. `program.lower().out_info` (`memory`, `jax.export`).
    A run that reports its iterations calls the same programs, `_refine_steps` once per forward pass."""
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    place, modulo = Placement(), model.config.modulo

    def spec(*shape):
        return jax.ShapeDtypeStruct(shape, jnp.float32)

    if not multiscale:
        hp, wp = padded(height, modulo), padded(width, modulo)
        _predict_run(graphdef, state, spec(batch, hp, wp, 3), spec(batch, hp, wp, 1), place, call, config.compute_dtype)
        return
    plans = _plans(model, [(height, width)] * batch, config)
    host = _run_inputs([spec(height, width, 3)] * batch, [spec(height, width, 1)] * batch, plans, config, place,
                       upscale)
    inputs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
                          if not isinstance(x, jax.ShapeDtypeStruct) else x, host)
    _refine_run(graphdef, state, inputs, plans, config, place, call)
