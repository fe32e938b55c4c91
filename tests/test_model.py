"""The Flax generator against the original PyTorch LaMa: golden outputs and parameter counts."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_refine import model as model_lib
from jax_refine import refine as refine_lib
from jax_refine.model import BIG_LAMA, TINY_LAMA, Lama, LamaConfig, abstract_model, count_parameters, eval_mode

from conftest import GOLDEN, GOLDEN_IMAGES, load_golden_image


@pytest.mark.parametrize("name", GOLDEN_IMAGES)
def test_predict_matches_golden(tiny_model, name):
    image, mask = load_golden_image(name)
    out, pred = refine_lib.predict(tiny_model, image[None], (mask > 0).astype(np.float32)[None, ..., None])
    np.testing.assert_allclose(out[0], np.load(GOLDEN / f"predict_{name}.npy"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(pred[0], np.load(GOLDEN / f"predict_{name}_predicted_image.npy"), rtol=0, atol=1e-5)


@pytest.mark.parametrize("config, expected", [(BIG_LAMA, 50_975_875), (TINY_LAMA, 135_571)])
def test_parameter_count(config, expected):
    assert count_parameters(abstract_model(config)) == expected


@pytest.mark.slow
def test_front_rear_split():
    model = eval_mode(Lama(TINY_LAMA, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    front = jax.jit(lambda s, x: nnx.merge(graphdef, s).front(x))
    rear = jax.jit(lambda s, z: nnx.merge(graphdef, s).rear(z))
    full = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 40, 56, 4)), jnp.float32)
    z_local, z_global = front(state, x)
    assert z_local.shape == (2, 5, 7, 16) and z_global.shape == (2, 5, 7, 48)
    assert TINY_LAMA.z_channels == (16, 48) and BIG_LAMA.z_channels == (128, 384)
    y = full(state, x)
    assert y.shape == (2, 40, 56, 3)
    np.testing.assert_allclose(np.asarray(rear(state, (z_local, z_global))), np.asarray(y), atol=1e-6)
    # batch elements are independent
    np.testing.assert_allclose(np.asarray(full(state, x[1:])), np.asarray(y[1:]), atol=1e-6)


@pytest.mark.slow
def test_remat_gives_the_same_gradient():
    model = eval_mode(Lama(TINY_LAMA, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 32, 32, 4)), jnp.float32)
    z = jax.jit(lambda s, x: nnx.merge(graphdef, s).front(x))(state, x)

    @partial(jax.jit, static_argnames="remat")
    def grad(state, z, remat):
        return jax.grad(lambda z: jnp.sum(nnx.merge(graphdef, state).rear(z, remat=remat) ** 2))(z)

    stored = grad(state, z, "none")
    for policy in ("blocks", "decoder", "all"):
        for a, b in zip(stored, grad(state, z, policy)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="remat must be one of none, blocks, decoder, all"):
        model.rear(z, remat=True)


@pytest.mark.parametrize("tile_pixels, rows", [(56 * 6, 6), (56 * 2, 2), (56 * 16, 16)])
@pytest.mark.slow
def test_tiled_tail_matches_the_whole_image(tile_pixels, rows):
    """remat="decoder" runs the last upsampler and the head in row tiles: 40 rows in tiles of 6
    (the last overlapping its neighbour), of 2 (the smallest), of 16 (three tiles whose
    windows reach both borders): same image and same gradient as the untiled decoder."""
    assert model_lib.tail_tile_rows(40, 56, tile_pixels) == rows
    model = eval_mode(Lama(TINY_LAMA, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    # running statistics away from (0, 1), so the BatchNorms of the tiles do real work
    state = jax.tree.map(lambda x: x + 0.2 * jnp.sin(jnp.arange(x.size, dtype=x.dtype).reshape(x.shape))
                         if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 40, 56, 4)), jnp.float32)
    z = jax.jit(lambda s, x: nnx.merge(graphdef, s).front(x))(state, x)
    weights = jnp.asarray(np.random.default_rng(3).normal(size=(2, 40, 56, 3)), jnp.float32)

    @partial(jax.jit, static_argnames="remat")
    def image_and_grad(state, z, remat):
        rear = lambda z: nnx.merge(graphdef, state).rear(z, remat=remat, tile_pixels=tile_pixels)
        return rear(z), jax.grad(lambda z: jnp.sum(rear(z) * weights))(z)

    whole, whole_grad = image_and_grad(state, z, "none")
    tiled, tiled_grad = image_and_grad(state, z, "decoder")
    assert tiled.shape == (2, 40, 56, 3)
    np.testing.assert_allclose(np.asarray(tiled), np.asarray(whole), rtol=0, atol=1e-6)
    for a, b in zip(whole_grad, tiled_grad):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(a))))


@pytest.mark.parametrize("shape", [(1, 20, 32, 4), (1, 32, 32, 3), (32, 32, 4), (1, 8, 32, 4)])
def test_bad_input_shapes_are_refused(shape):
    model = abstract_model(TINY_LAMA)
    with pytest.raises(ValueError, match="input"):
        model.front(jnp.zeros(shape))


@pytest.mark.parametrize("kwargs", [dict(ngf=0), dict(ratio=1.0), dict(n_blocks=2.5)])
def test_bad_config_is_refused(kwargs):
    with pytest.raises(ValueError, match="invalid LamaConfig"):
        LamaConfig(**kwargs)


@pytest.mark.slow
def test_big_lama_matches_an_independent_torch_reference():
    """Full Big-LaMa configuration, random weights and BatchNorm statistics, 256 x 256."""
    torch = pytest.importorskip("torch")
    from reference.lama_torch import FFCResNetGenerator, randomize

    from jax_refine.checkpoint import model_from_flat
    from jax_refine.convert import infer_config, to_flax_state

    reference = randomize(FFCResNetGenerator(ngf=64, n_downsampling=3, n_blocks=18), seed=0).eval()
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    config = infer_config(state, None, "reference")
    assert config == BIG_LAMA
    model = model_from_flat(to_flax_state(state, config, "reference"), config)
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(1, 256, 256, 3)).astype(np.float32)
    mask = np.zeros((1, 256, 256, 1), np.float32)
    mask[:, 60:180, 90:200] = 1
    x = np.concatenate([image * (1 - mask), mask], -1)
    with torch.no_grad():
        x_t = torch.from_numpy(x.transpose(0, 3, 1, 2))
        z_t = reference.front(x_t)
        out_t = reference.rear(*z_t).numpy().transpose(0, 2, 3, 1)
    graphdef, params = nnx.split(model)
    z, out = jax.jit(lambda p, x: (lambda m: (m.front(x), m(x)))(nnx.merge(graphdef, p)))(params, jnp.asarray(x))
    for ours, theirs in zip(z, z_t):
        np.testing.assert_allclose(np.asarray(ours), theirs.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out), out_t, rtol=0, atol=1e-5)  # achieved: z 2.9e-6, image 7e-7
    assert 0.05 < out_t.std()  # a non-degenerate output (not saturated)


@pytest.mark.slow
def test_training_mode_updates_every_batch_norm():
    """Training-mode forwards update the running statistics of all BatchNorms, including those
    of the residual blocks (which run inside lax.scan); eval mode changes none."""
    model = Lama(TINY_LAMA, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 32, 32, 4)), jnp.float32)

    def stats(m):
        return {path: np.array(v[...]) for path, v in nnx.to_flat_state(nnx.state(m, nnx.BatchStat))}

    before = stats(model)
    eval_mode(model)(x)
    assert all(np.array_equal(before[k], v) for k, v in stats(model).items())
    model(x)
    after = stats(model)
    assert any(k[0] == "blocks" for k in after)
    unchanged = [k for k, v in after.items() if np.array_equal(before[k], v)]
    assert not unchanged, unchanged
