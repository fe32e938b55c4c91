"""The model, losses, optimiser and compiled steps of training.

Inputs follow inference exactly (`jax_refine.contract.model_input`): the image in [0, 1] with
its holes filled as the model's `hole_fill` says, and the mask (1 = hole); the fill is
mask * output + (1 - mask) * image.

Losses (weights in TrainConfig.w_*):
  * L1 on the hole and on the known pixels: the hole term is what matters; the known term
    keeps the generator's pass-through honest, which refinement relies on (its loss compares
    the output with the known pixels).
  * Mean squared error on the hole: what PSNR measures. A residual model trained with L1 alone
    stays at its prior (L1's optimum is the residual's median, ~0 where the sign of the
    correction is uncertain); the squared error rewards the conditional mean. (At the
    budgets tried, 200 steps, it stayed at the prior too: training/README.md.)
  * Image-gradient L1 on the composite: first differences along x and y, normalised by the
    hole area; punishes the flat, smeared fill plain L1 converges to.
  * Spectral L1 between log(1 + |rfft2|) of composite and target: the missing high-frequency
    energy, phase-free (it does not ask for exact texture).
  * Adversarial (optional): a small patch discriminator (4x4 stride-2 convs 3 -> 32 -> 64 ->
    128, a 3x3 conv to one logit per 8 x 8 patch) with hole-aware labels (patches touching the
    hole are fake), non-saturating loss and lazy R1 on real images, as LaMa. LaMa's perceptual
    loss needs pretrained ImageNet weights, which cannot be had offline.

Optimisation: AdamW (b1 0.9, b2 0.99, weight decay on conv kernels), gradient clipping at
global norm 1; the learning rate comes from the loop (warm-up, cosine decay).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_refine.contract import model_input
from jax_refine.model import Lama, LamaConfig, eval_mode, train_mode


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What defines a run (saved in config.json; a resumed run keeps it)."""

    ngf: int = 32
    n_blocks: int = 8
    hole_fill: str = "pull-push"
    output: str = "residual"
    crop: int = 160
    batch: int = 8
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.03
    schedule_minutes: float | None = None
    steps: int | None = None
    w_hole: float = 1.0
    w_mse: float = 0.0
    w_known: float = 0.25
    w_grad: float = 1.0
    w_fft: float = 0.1
    w_adv: float = 0.0
    adv_start: float = 0.2
    d_lr: float = 1e-4
    r1_gamma: float = 0.001
    r1_every: int = 8

    def model_config(self) -> LamaConfig:
        return LamaConfig(ngf=self.ngf, n_downsampling=3, n_blocks=self.n_blocks, hole_fill=self.hole_fill,
                          output=self.output)


class PatchDiscriminator(nnx.Module):
    """4x4 stride-2 convs 3 -> 32 -> 64 -> 128, then a 3x3 conv to one logit per 8x8 patch."""

    def __init__(self, *, rngs: nnx.Rngs, width: int = 32):
        conv = lambda i, o, k, s: nnx.Conv(i, o, (k, k), strides=(s, s), padding="SAME", rngs=rngs)  # noqa: E731
        self.convs = nnx.List([conv(3, width, 4, 2), conv(width, 2 * width, 4, 2), conv(2 * width, 4 * width, 4, 2)])
        self.out = conv(4 * width, 1, 3, 1)

    def __call__(self, x):
        for c in self.convs:
            x = jax.nn.leaky_relu(c(x), 0.2)
        return self.out(x)[..., 0]


def patch_mask(mask, factor=8):
    """(B, H, W, 1) hole -> (B, H/f, W/f): 1 where the patch contains any hole pixel."""
    b, h, w, _ = mask.shape
    return jnp.max(mask[..., 0].reshape(b, h // factor, factor, w // factor, factor), axis=(2, 4))


def reconstruction_losses(pred, image, mask):
    """The non-adversarial loss terms (scalars) of a batch, and the composite."""
    known = 1 - mask
    comp = mask * pred + known * image
    hole_px = jnp.maximum(jnp.sum(mask) * 3, 1.0)
    err = jnp.abs(pred - image)
    losses = {
        "l1_hole": jnp.sum(err * mask) / hole_px,
        "l1_known": jnp.sum(err * known) / jnp.maximum(jnp.sum(known) * 3, 1.0),
        "mse_hole": jnp.sum(err**2 * mask) / hole_px,
    }
    dx = jnp.abs((comp[:, :, 1:] - comp[:, :, :-1]) - (image[:, :, 1:] - image[:, :, :-1]))
    dy = jnp.abs((comp[:, 1:] - comp[:, :-1]) - (image[:, 1:] - image[:, :-1]))
    losses["grad"] = (jnp.sum(dx) + jnp.sum(dy)) / hole_px
    spectrum = lambda x: jnp.log1p(jnp.abs(jnp.fft.rfft2(x, axes=(1, 2), norm="ortho")))  # noqa: E731
    losses["fft"] = jnp.mean(jnp.abs(spectrum(comp) - spectrum(image)))
    return losses, comp


def generator_optimizer(cfg: TrainConfig):
    """AdamW without the learning rate (the step multiplies by -lr): clip, Adam, decay."""
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(b1=0.9, b2=0.99, eps=1e-8),
        optax.add_decayed_weights(cfg.weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    )


def discriminator_optimizer(cfg: TrainConfig):
    return optax.adam(cfg.d_lr, b1=0.5, b2=0.99)


def init_state(cfg: TrainConfig, generator: Lama | None = None):
    """(g_graphdef, d_graphdef or None, state dict of pytrees) of a new run; `generator`:
    start from these weights (a fresh optimiser) instead of a random initialisation."""
    model = generator if generator is not None else Lama(cfg.model_config(), rngs=nnx.Rngs(cfg.seed))
    model = train_mode(model)
    g_graphdef, g_params, g_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = {"g_params": g_params, "g_stats": g_stats, "g_opt": generator_optimizer(cfg).init(g_params)}
    d_graphdef = None
    if cfg.w_adv:
        d_graphdef, d_params = nnx.split(PatchDiscriminator(rngs=nnx.Rngs(cfg.seed + 1)), nnx.Param)
        state.update(d_params=d_params, d_opt=discriminator_optimizer(cfg).init(d_params))
    return g_graphdef, d_graphdef, state


def abstract_state(cfg: TrainConfig):
    """(g_graphdef, d_graphdef, init_state's structure with shape/dtype structs)."""
    graphdefs = {}

    def build():
        g, d, state = init_state(cfg)
        graphdefs.update(g=g, d=d)
        return state

    state = nnx.eval_shape(build)
    return graphdefs["g"], graphdefs["d"], state


def uses_r1(cfg: TrainConfig, step: int) -> bool:
    return cfg.w_adv > 0 and cfg.r1_gamma > 0 and step % cfg.r1_every == 0


def make_train_step(g_graphdef, d_graphdef, cfg: TrainConfig):
    """The jitted step: (state, images, masks, lr, adv_on, with_r1) -> (new state, metrics)."""
    g_tx, d_tx = generator_optimizer(cfg), discriminator_optimizer(cfg)

    def g_loss(g_params, g_stats, d_params, image, mask, adv_on):
        # fresh Variables for the statistics: BatchNorm updates them inside this grad trace
        model = nnx.merge(g_graphdef, g_params, jax.tree.map(lambda a: a, g_stats))
        pred = model(model_input(model.config, image, mask))
        losses, comp = reconstruction_losses(pred, image, mask)
        total = (cfg.w_hole * losses["l1_hole"] + cfg.w_mse * losses["mse_hole"] + cfg.w_known * losses["l1_known"]
                 + cfg.w_grad * losses["grad"] + cfg.w_fft * losses["fft"])
        if cfg.w_adv:
            logits = nnx.merge(d_graphdef, d_params)(comp)
            patches = patch_mask(mask)
            losses["adv_g"] = jnp.sum(jax.nn.softplus(-logits) * patches) / jnp.maximum(jnp.sum(patches), 1.0)
            total = total + adv_on * cfg.w_adv * losses["adv_g"]
        losses["total"] = total
        return total, (losses, nnx.state(model, nnx.BatchStat), comp)

    def d_loss(d_params, real, fake, mask, with_r1):
        disc = lambda x: nnx.merge(d_graphdef, d_params)(x)  # noqa: E731
        patches = patch_mask(mask)
        if with_r1:  # lazy R1 (every r1_every steps, weight scaled up to match)
            real_logits, vjp = jax.vjp(disc, real)
            (real_grad,) = vjp(jnp.ones_like(real_logits))
            r1 = jnp.mean(jnp.sum(real_grad**2, axis=(1, 2, 3)))
        else:
            real_logits, r1 = disc(real), jnp.zeros(())
        fake_logits = disc(fake)
        # patches without hole pixels in the fake are real image content
        loss_real = jnp.mean(jax.nn.softplus(-real_logits))
        loss_fake = jnp.mean(patches * jax.nn.softplus(fake_logits) + (1 - patches) * jax.nn.softplus(-fake_logits))
        total = loss_real + loss_fake + 0.5 * cfg.r1_gamma * cfg.r1_every * r1
        return total, {"d_real": loss_real, "d_fake": loss_fake}

    @partial(jax.jit, static_argnames="with_r1")
    def step(state, image, mask, lr, adv_on, with_r1=False):
        (_, (losses, g_stats, comp)), grads = jax.value_and_grad(g_loss, has_aux=True)(
            state["g_params"], state["g_stats"], state.get("d_params"), image, mask, adv_on)
        updates, g_opt = g_tx.update(grads, state["g_opt"], state["g_params"])
        updates = jax.tree.map(lambda u: -lr * u, updates)
        new = dict(state, g_params=optax.apply_updates(state["g_params"], updates), g_stats=g_stats, g_opt=g_opt)
        losses["grad_norm"] = optax.tree.norm(grads)
        if cfg.w_adv:  # the discriminator trains from the start; the generator uses it from adv_start on
            (_, d_metrics), d_grads = jax.value_and_grad(d_loss, has_aux=True)(
                state["d_params"], image, jax.lax.stop_gradient(comp), mask, with_r1)
            d_updates, d_opt = d_tx.update(d_grads, state["d_opt"], state["d_params"])
            new.update(d_params=optax.apply_updates(state["d_params"], d_updates), d_opt=d_opt)
            losses.update(d_metrics)
        return new, losses

    return step


def make_eval(g_graphdef):
    """jitted (g_params, g_stats, images, masks) -> (per-image hole PSNR (B,) in dB, composite):
    the inference-mode model, its composite clipped to [0, 1] as inference returns it."""

    @jax.jit
    def evaluate(g_params, g_stats, image, mask):
        model = eval_mode(nnx.merge(g_graphdef, g_params, g_stats))
        pred = model(model_input(model.config, image, mask))
        comp = jnp.clip(mask * pred + (1 - mask) * image, 0, 1)
        mse = jnp.sum((comp - image) ** 2 * mask, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(mask, axis=(1, 2, 3)) * 3, 1)
        return -10 * jnp.log10(jnp.maximum(mse, 1e-10)), comp

    return evaluate
