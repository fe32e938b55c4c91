"""Both kernel paths (ops.KERNELS): the XLA-CPU forms against the stock XLA convolutions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_refine import ops
from jax_refine.model import TINY_LAMA, Lama, eval_mode, train_mode, with_kernels


def _grads(f, x, k):
    return jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))), (0, 1))(x, k)


def _assert_close(a, b, atol=1e-4):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=atol)


@pytest.mark.parametrize("kernel_shape, strides, padding", [
    ((3, 3, 5, 7), (1, 1), ((0, 0), (0, 0))),
    ((3, 3, 5, 7), (2, 2), ((1, 1), (1, 1))),
    ((3, 3, 5, 7), (2, 1), ((0, 1), (2, 0))),
    ((7, 5, 5, 3), (1, 1), ((0, 0), (0, 0))),  # few output channels: the row-tap form
])
@pytest.mark.parametrize("in_loop", [False, True])
def test_conv2d_paths_agree(kernel_shape, strides, padding, in_loop):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 12, 13, 5)), jnp.float32)
    k = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)
    cpu = lambda x, k: ops.conv2d(x, k, strides, padding, kernels="cpu", in_loop=in_loop)  # noqa: E731
    xla = lambda x, k: ops.conv2d(x, k, strides, padding, kernels="xla")  # noqa: E731
    np.testing.assert_allclose(np.asarray(cpu(x, k)), np.asarray(xla(x, k)), rtol=0, atol=2e-5)
    _assert_close(_grads(cpu, x, k), _grads(xla, x, k))


@pytest.mark.parametrize("in_loop", [False, True])
def test_up_conv_paths_agree(in_loop):
    """The upsampler's conv per output phase against the stock input-dilated conv: values,
    input and kernel gradients (odd sizes: the zero row/column below the image)."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 7, 9, 5)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 5, 6)), jnp.float32)
    cpu = lambda x, k: ops.up_conv2d(x, k, kernels="cpu", in_loop=in_loop)  # noqa: E731
    xla = lambda x, k: ops.up_conv2d(x, k, kernels="xla")  # noqa: E731
    assert cpu(x, k).shape == (2, 14, 18, 6)
    np.testing.assert_allclose(np.asarray(cpu(x, k)), np.asarray(xla(x, k)), rtol=0, atol=1e-5)
    _assert_close(_grads(cpu, x, k), _grads(xla, x, k))


@pytest.mark.slow
def test_the_whole_model_agrees_on_both_paths():
    """Forward, input gradient (refinement) and parameter gradient (training) of the tiny
    generator with every conv on one path, then on the other."""
    model = Lama(TINY_LAMA, rngs=nnx.Rngs(0), kernels="cpu")
    assert model.head.kernels == "cpu" and with_kernels(model, "xla").head.kernels == "xla"
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 32, 40, 4)), jnp.float32)
    results = {}
    for kernels in ops.KERNELS:
        inference = eval_mode(with_kernels(model, kernels))
        graphdef, state = nnx.split(inference)
        out = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
        dx = jax.jit(jax.grad(lambda x: jnp.sum(nnx.merge(graphdef, state)(x) ** 2)))(x)
        train_def, params, stats = nnx.split(train_mode(with_kernels(model, kernels)), nnx.Param, nnx.BatchStat)
        loss = lambda p: jnp.sum(nnx.merge(train_def, p, jax.tree.map(lambda a: a, stats))(x) ** 2)  # noqa: E731
        results[kernels] = (out, dx, jax.jit(jax.grad(loss))(params))
    np.testing.assert_allclose(np.asarray(results["cpu"][0]), np.asarray(results["xla"][0]), rtol=0, atol=1e-6)
    _assert_close(results["cpu"][1], results["xla"][1], atol=1e-5)
    _assert_close(results["cpu"][2], results["xla"][2], atol=1e-3)


def test_default_kernels_follow_the_backend_and_bad_names_are_refused():
    assert ops.default_kernels() == ("cpu" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(ValueError, match="kernels must be one of xla, cpu"):
        Lama(TINY_LAMA, rngs=nnx.Rngs(0), kernels="gpu")
