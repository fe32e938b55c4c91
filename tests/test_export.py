"""Every compiled program of a run lowers for GPU and TPU, and the exported programs compute
what the jitted ones do.

`refine.trace` drives `refine.multiscale` (and `refine.predict`) on shape structs and hands
over every program the real run calls, in order: the pyramid, each scale's batch, the plain
forward pass, the previous scale's reference, a refined scale (its start, its while_loop of
Adam steps with early stopping and the tiled decoder tail, its composite) and the upscale.
Each is exported with jax.export for "cuda", "tpu" and "cpu", on both kernel paths and in
both compute dtypes, so a construct that only the CPU backend accepts fails here, without an
accelerator; the CPU export is then run on concrete inputs and must give the jitted program's
outputs.

A run that reports its iterations (what `inpaint(progress=...)` runs) calls the same
programs, the steps program once per forward pass: it must report every iteration, give the
quiet run's outputs and compile nothing more (so the persistent compilation cache, which
never stores a program with a host callback, serves it too).
"""

import jax
import numpy as np
import pytest
from flax import nnx
from jax import export

from jax_refine import RefineConfig, ops, refine
from jax_refine.model import TINY_LAMA, Lama, eval_mode

CONFIG = dict(min_side=32, px_budget=60 * 75, n_iters=3, early_stop=0.01, tile_pixels=72 * 16)


def _programs(model, config, *, multiscale=True):
    programs = []

    def call(program):
        programs.append(program)
        return program.lower().out_info

    refine.trace(model, 64, 80, call, multiscale=multiscale, config=config, upscale=multiscale)
    return programs


def _concrete(program, state, rng):
    """The program's dynamic arguments (without the static graphdef): the model's weights, and
    random values of every other struct's shape and dtype."""
    def fill(x):
        if x.dtype == np.bool_:  # a refined scale that has not stopped yet
            return np.zeros(x.shape, np.bool_)
        if np.issubdtype(x.dtype, np.integer):
            return rng.integers(1, 4, x.shape).astype(x.dtype)
        return rng.uniform(size=x.shape).astype(x.dtype)

    args = program.args[1:] if program.scale is not None else program.args
    if program.scale is not None:
        args = (state,) + tuple(jax.tree.map(fill, args[1:]))
    return tuple(jax.tree.map(fill, args)) if program.scale is None else args


@pytest.mark.parametrize("kernels", ops.KERNELS)
@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.slow
def test_every_program_of_a_run_exports_and_computes_what_it_runs(kernels, compute_dtype):
    model = eval_mode(Lama(TINY_LAMA, rngs=nnx.Rngs(0), kernels=kernels))
    config = RefineConfig(compute_dtype=compute_dtype, **CONFIG)
    programs = _programs(model, config) + _programs(model, config, multiscale=False)
    # pyramid, batch, plain forward (scale 0), batch, reference, refined scale 1 (start, steps,
    # composite), upscale; plain
    assert [p.scale for p in programs] == [None, None, 0, None, None, 1, 1, None, None, 0]
    assert [p.function for p in programs[5:8]] == [refine._refine_start, refine._refine_steps,
                                                   refine._composite_program]
    shapes = [[tuple(s.shape) for s in jax.tree.leaves(p.lower().out_info)] for p in programs]
    assert shapes[0] == [(30, 37, 3), (30, 37, 1), (60, 75, 3), (60, 75, 1)]  # px_budget 60 x 75
    assert shapes[4] == [(1, 32, 40, 3)] and shapes[7] == [(1, 64, 80, 3)] and shapes[8] == [(64, 80, 3)]
    state, rng = nnx.split(model)[1], np.random.default_rng(0)
    for program in programs:
        exported = export.export(program.function, platforms=("cuda", "tpu", "cpu"))(*program.args, **program.kwargs)
        assert exported.platforms == ("cuda", "tpu", "cpu")
        lowered = program.lower()
        assert exported.out_avals == tuple(jax.core.ShapedArray(s.shape, s.dtype)
                                           for s in jax.tree.leaves(lowered.out_info))
        args = _concrete(program, state, rng)
        assert [a.shape for a in exported.in_avals] == [np.shape(a) for a in jax.tree.leaves(args)]
        expected = program.function(*((program.args[0],) if program.scale is not None else ()), *args,
                                    **program.kwargs)
        got = exported.call(*args)
        for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
            assert e.shape == g.shape and e.dtype == g.dtype
            np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(e, np.float32), rtol=0, atol=1e-5)
    # the refined scale's state: forwards done, z, Adam's state, (n_iters, B) losses, (B, Hp, Wp, 3) prediction
    steps = programs[6].lower().out_info
    assert steps.losses.shape == (3, 1) and steps.pred.shape == (1, 64, 80, 3) and steps.forwards.shape == ()
    assert jax.tree.structure(steps) == jax.tree.structure(programs[5].lower().out_info)


@pytest.mark.slow
def test_the_reporting_run_reports_every_iteration_computes_the_same_and_compiles_nothing_more(tiny_model):
    config = RefineConfig(**dict(CONFIG, early_stop=None))
    image, mask = np.random.default_rng(2).uniform(size=(2, 64, 80, 3)).astype(np.float32)
    mask = (mask[..., :1] > 0.7).astype(np.float32)
    quiet, scales = refine.multiscale(tiny_model, image[None], mask[None], config, upscale=True)
    compiled = {f: f._cache_size() for f in (refine._refine_start, refine._refine_steps, refine._composite_program)}
    seen = []
    reported, loud = refine.multiscale(tiny_model, image[None], mask[None], config, upscale=True,
                                       on_iteration=lambda i, losses: seen.append((i, losses)))
    assert {f: f._cache_size() for f in compiled} == compiled
    assert all("callback" not in p.lower().as_text() for p in _programs(tiny_model, config))
    np.testing.assert_array_equal(reported, quiet)
    assert reported.shape == (1, 64, 80, 3) and [i for i, _ in seen] == [0, 1, 2]
    np.testing.assert_array_equal(np.concatenate([losses for _, losses in seen]), scales[1].losses[:, 0])
    np.testing.assert_array_equal(loud[1].losses, scales[1].losses)
