"""Train a small LaMa generator on photographs: the bundled default model.

    python scripts/prepare_data.py                                   # photos -> data/
    python -m jax_refine.train --out runs/default --minutes 120      # train, checkpoint, export
    python -m jax_refine.train --out runs/default --minutes 30 --resume
    python -m jax_refine.train --out runs/default --resume --minutes 0 --export DST   # export only

What is trained: `Lama(LamaConfig(ngf=32, n_downsampling=3, n_blocks=8))` (the Big-LaMa
FFC ResNet generator, narrower and shallower), from scratch, on random crops of the training
photos of data/manifest.json; the held-out photos only feed the validation set.

Inputs follow inference exactly: x = concat(image * (1 - mask), mask) with image in [0, 1]
and mask 1 = hole; the output is the generator's sigmoid; the fill is
mask * output + (1 - mask) * image.

Data. Each sample picks a photo (probability proportional to the square root of its pixel
count, so the big photographs dominate without drowning the small ones), rescales it so
that its short side is log-uniform in [crop, original short side] (0.1x-1x of a 2560x1600
photo: from whole-scene views, as the coarsest refinement scale sees them, down to full-
resolution texture), takes a random crop, flips it horizontally with probability 1/2 and
draws a thin, medium or thick LaMa stroke mask (jax_refine.masks) at the crop size. Batch i
is a pure function of (seed, i), so a resumed run continues the same data order; a
background thread prepares the next batches with numpy + PIL while XLA uses the cores.

Losses (weights --w-*):
  * L1 on the hole (1.0) and on the known pixels (0.25): the known term keeps the
    generator's pass-through honest, the hole term is what matters.
  * Image-gradient L1 (1.0) on the composite: first differences along x and y, normalised
    by the hole area; punishes the flat, smeared fill plain L1 converges to.
  * Spectral L1 (0.1) between log(1 + |rfft2|) of composite and target: puts back the
    missing high-frequency energy (phase-free, so it does not ask for exact texture).
  * Adversarial (0.05, used by the generator from 20 % of the schedule on): a small patch
    discriminator (4x4 stride-2 convs 3 -> 32 -> 64 -> 128, a 3x3 conv to one logit per 8x8
    patch, no normalisation, 0.2M parameters, trained from the start with Adam 1e-4)
    judges the composite with hole-aware labels (patches touching the hole are fake),
    non-saturating loss + lazy R1 on real images (gamma 0.001, every 8th step), as LaMa.
  (LaMa's perceptual loss needs pretrained ImageNet weights, which cannot be downloaded.)
  Cost, measured (n_blocks 8, crop 160, batch 8, step 2.07 s): gradient term 2.5 ms and
  spectral term 9.2 ms per step (fwd + grad, < 0.5 %); the discriminator +10 % without R1,
  +43 % with R1 on every step, so R1 is lazy (+3 % on average).

Optimisation: AdamW (b1 0.9, b2 0.99, weight decay 1e-4 on conv kernels), gradient
clipping at global norm 1, learning rate warmup over the first 3 % of the schedule then
cosine decay from --lr to --lr / 100. The schedule runs on *training time* (wall seconds
spent in steps, summed over resumed runs) against --schedule-minutes (default: the first
run's --minutes less 2 for startup, compilation, validation and checkpoints), so it ends on
time whatever the machine's speed; pass --steps to use a step-count schedule instead.
BatchNorm runs in training mode (batch statistics; running averages with torch's momentum
0.1); validation and export use the running averages.

Outputs in --out: config.json (the run's settings), log.jsonl (one JSON object per line:
train records with step, losses, images/s, lr and wall time; val records; checkpoints),
ckpt-<step>/ (the last two checkpoints: generator, BatchNorm statistics, both optimisers,
discriminator, step and training time; numpy .npz + meta.json, written atomically),
samples/ (validation inputs, fills and targets as PNG grids), xla_cache/ (compiled
programs, so a resumed run starts faster) and, at the end, export/ (or --export DST): a
jax-refine checkpoint for `jax_refine.load` and `jax_refine.inpaint(..., model=DST)`.
Resuming restores everything a step depends on: there is no other randomness (the model
has no dropout; batch i is drawn from numpy's Generator seeded with (seed, i)).

MEASUREMENTS: training step time on this project's 2-core CPU (Zen 4, fp32, quiet machine,
`--benchmark 8`; images/s include data loading, which never made a step wait):

  n_blocks  crop  batch  discriminator       s/step  images/s  params
  6         128   8      none                1.21    6.6       4.78M
  6         160   8      none                1.62    4.9       4.78M
  6         192   8      none                2.37    3.4       4.78M
  6         160   8      yes, no R1          1.78    4.5
  6         160   8      yes, R1 every step  2.31    3.5
  8         160   4      yes, no R1          1.07    3.7       6.11M
  8         160   8      yes, no R1          2.01    4.0       6.11M
  8         160   8      yes, R1 every 8th   2.07    3.9       6.11M  <- default
  (while another 2-core job ran: n_blocks 4 / 6 / 9 at 160 x 8 took 4.2 / 4.6 / 5.5 s: a
  residual block costs ~5 % of a step; the full-resolution stem, upsamplers and head
  dominate. The rows above were taken with an equivalent sub-pixel form of the upsamplers;
  an A/B of the default row under equal load put model.UpConv within 2 % of it (4.22 vs
  4.18 s at half speed). With such a job running, expect about half the images/s.)
  Before the kernel-gradient fixes in model.conv2d (matmul kernel gradients inside the
  blocks' lax.scan, explicit dilation for the upsamplers) 6 blocks + R1 every step took 21.9 s
  per step at half speed (4.6 s after).

Chosen: n_blocks 8 (6.11M parameters, 22.6 MB as an orbax checkpoint, under the 25 MB
limit; 9 blocks would be 6.78M, 27 MB of float32), crop 160 (pixels/s are best at 160-192; 128 is
15 % less efficient per pixel and gives the spectral branch only a 16x16 bottleneck; 192
leaves 30 % fewer images), batch 8 (batch 4 is no faster per image and halves the
BatchNorm sample). About 3.9 images/s: ~27,000 images (~3,400 steps) in a 2-hour run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import queue
import shutil
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from . import __version__  # importing the package first sets the XLA CPU flag (_platform)
from .masks import random_mask
from .model import Lama, LamaConfig, count_parameters, eval_mode

REPO = Path(__file__).resolve().parents[1]
MASK_KINDS = ("thin", "medium", "thick")
MASK_PROBS = (0.3, 0.35, 0.35)
VAL_SEED = 20251124  # the validation set does not depend on --seed
KEEP_CHECKPOINTS = 2


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What defines a run (saved in config.json; a resumed run must not change it)."""

    n_blocks: int = 8
    ngf: int = 32
    crop: int = 160
    batch: int = 8
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.03
    schedule_minutes: float | None = None
    steps: int | None = None
    w_hole: float = 1.0
    w_known: float = 0.25
    w_grad: float = 1.0
    w_fft: float = 0.1
    w_adv: float = 0.05
    adv_start: float = 0.2
    d_lr: float = 1e-4
    r1_gamma: float = 0.001
    r1_every: int = 8
    data: str = "data"

    def model_config(self) -> LamaConfig:
        return LamaConfig(ngf=self.ngf, n_downsampling=3, n_blocks=self.n_blocks)


def learning_rate(cfg: TrainConfig, progress: float) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr / 100; progress in [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < cfg.warmup:
        return cfg.lr * (0.01 + 0.99 * progress / cfg.warmup)
    t = (progress - cfg.warmup) / (1 - cfg.warmup)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def read_manifest(data_dir: Path) -> dict:
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `python scripts/prepare_data.py` first")
    manifest = json.loads(path.read_text())
    split_of = {}
    for p in manifest["photos"]:  # a held-out photo must not reach training under another name
        key = p.get("sha256", p["path"])
        if split_of.setdefault(key, p["split"]) != p["split"]:
            raise SystemExit(f"{path}: {p['name']} is both a training and a held-out photo")
    return manifest


def load_photos(data_dir: Path, manifest: dict, split: str) -> list[tuple[str, "Image.Image"]]:
    """(name, decoded RGB PIL image) of every photo of `split`, decoded once and kept in memory."""
    from PIL import Image

    photos = []
    for p in manifest["photos"]:
        if p["split"] == split:
            with Image.open(data_dir / p["path"]) as img:
                photos.append((p["name"], img.convert("RGB")))
    if not photos:
        raise SystemExit(f"no '{split}' photos in {data_dir / 'manifest.json'}")
    return photos


def random_crop(rng: np.random.Generator, img, crop: int, *, flip: bool = True) -> np.ndarray:
    """A crop x crop float32 RGB crop of `img` rescaled so that its short side is log-uniform
    in [crop, original short side] (antialiased resampling of the crop's box only)."""
    from PIL import Image

    w, h = img.size
    short = min(w, h)
    target = math.exp(rng.uniform(math.log(crop), math.log(max(short, crop))))
    box = crop * short / target  # the crop's side in source pixels
    left = rng.uniform(0, w - box)
    top = rng.uniform(0, h - box)
    out = img.resize((crop, crop), Image.Resampling.BICUBIC, box=(left, top, left + box, top + box))
    a = np.asarray(out, np.float32) / 255
    if flip and rng.random() < 0.5:
        a = a[:, ::-1]
    return np.ascontiguousarray(np.clip(a, 0, 1))


def random_training_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = MASK_KINDS[rng.choice(len(MASK_KINDS), p=MASK_PROBS)]
    return random_mask(rng, size, size, kind)


class Batches:
    """Training batches: batch i is a pure function of (seed, i); prepared ahead in a thread."""

    def __init__(self, photos, cfg: TrainConfig, start: int, prefetch: int = 3):
        self.photos = photos
        self.cfg = cfg
        sizes = np.array([img.size[0] * img.size[1] for _, img in photos], np.float64)
        self.weights = np.sqrt(sizes) / np.sqrt(sizes).sum()
        self.queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(start,), daemon=True)
        self.thread.start()

    def make(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(images (B, S, S, 3), masks (B, S, S, 1)) float32 of batch `index`."""
        rng = np.random.default_rng([self.cfg.seed, index])
        images, masks = [], []
        for _ in range(self.cfg.batch):
            _, img = self.photos[rng.choice(len(self.photos), p=self.weights)]
            images.append(random_crop(rng, img, self.cfg.crop))
            masks.append(random_training_mask(rng, self.cfg.crop))
        return np.stack(images), np.stack(masks)[..., None].astype(np.float32)

    def _work(self, index):
        while not self.stop.is_set():
            try:
                item = self.make(index)
            except Exception as e:  # handed to the consumer, which re-raises it
                item = e
            while not self.stop.is_set():
                try:
                    self.queue.put((index, item), timeout=0.5)
                    break
                except queue.Full:
                    pass
            index += 1

    def next(self):
        """(index, (images, masks)) of the next batch, and the seconds spent waiting for it."""
        t = time.perf_counter()
        index, item = self.queue.get()
        if isinstance(item, Exception):
            raise RuntimeError(f"preparing batch {index} failed") from item
        return index, item, time.perf_counter() - t

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


def validation_set(photos, crop: int, per_photo: int = 6):
    """Fixed held-out crops and masks: per photo, `per_photo` crops at short sides spread
    log-uniformly over [crop, short side], masks cycling thin / medium / thick."""
    from PIL import Image

    rng = np.random.default_rng(VAL_SEED)
    images, masks = [], []
    for _, img in photos:
        w, h = img.size
        short = min(w, h)
        for k in range(per_photo):
            target = crop * (short / crop) ** (k / max(per_photo - 1, 1))
            box = crop * short / target
            left, top = rng.uniform(0, w - box), rng.uniform(0, h - box)
            out = img.resize((crop, crop), Image.Resampling.BICUBIC, box=(left, top, left + box, top + box))
            images.append(np.clip(np.asarray(out, np.float32) / 255, 0, 1))
            masks.append(random_mask(rng, crop, crop, MASK_KINDS[k % 3]))
    return np.stack(images), np.stack(masks)[..., None].astype(np.float32)


# --------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------


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


def _patch_mask(mask, factor=8):
    """(B, H, W, 1) hole -> (B, H/f, W/f): 1 where the patch contains any hole pixel."""
    b, h, w, _ = mask.shape
    return jnp.max(mask[..., 0].reshape(b, h // factor, factor, w // factor, factor), axis=(2, 4))


# --------------------------------------------------------------------------------------
# Losses and the train step
# --------------------------------------------------------------------------------------


def reconstruction_losses(pred, image, mask):
    """The non-adversarial loss terms (each a scalar) of a batch."""
    known = 1 - mask
    comp = mask * pred + known * image
    hole_px = jnp.maximum(jnp.sum(mask) * 3, 1.0)
    err = jnp.abs(pred - image)
    losses = {
        "l1_hole": jnp.sum(err * mask) / hole_px,
        "l1_known": jnp.sum(err * known) / jnp.maximum(jnp.sum(known) * 3, 1.0),
    }
    dx = jnp.abs((comp[:, :, 1:] - comp[:, :, :-1]) - (image[:, :, 1:] - image[:, :, :-1]))
    dy = jnp.abs((comp[:, 1:] - comp[:, :-1]) - (image[:, 1:] - image[:, :-1]))
    losses["grad"] = (jnp.sum(dx) + jnp.sum(dy)) / hole_px
    spectrum = lambda x: jnp.log1p(jnp.abs(jnp.fft.rfft2(x, axes=(1, 2), norm="ortho")))  # noqa: E731
    losses["fft"] = jnp.mean(jnp.abs(spectrum(comp) - spectrum(image)))
    return losses, comp


def make_train_step(g_graphdef, d_graphdef, cfg: TrainConfig):
    """The jitted step: (state dict, images, masks, lr, adv_on) -> (new state dict, metrics)."""
    g_tx = generator_optimizer(cfg)
    d_tx = optax.adam(cfg.d_lr, b1=0.5, b2=0.99)

    def g_loss(g_params, g_stats, d_params, image, mask, adv_on):
        # fresh Variables for the statistics: BatchNorm updates them inside this grad trace
        model = nnx.merge(g_graphdef, g_params, jax.tree.map(lambda a: a, g_stats))
        pred = model(jnp.concatenate([image * (1 - mask), mask], axis=-1))
        losses, comp = reconstruction_losses(pred, image, mask)
        total = (cfg.w_hole * losses["l1_hole"] + cfg.w_known * losses["l1_known"]
                 + cfg.w_grad * losses["grad"] + cfg.w_fft * losses["fft"])
        if cfg.w_adv:
            logits = nnx.merge(d_graphdef, d_params)(comp)
            patches = _patch_mask(mask)
            losses["adv_g"] = jnp.sum(jax.nn.softplus(-logits) * patches) / jnp.maximum(jnp.sum(patches), 1.0)
            total = total + adv_on * cfg.w_adv * losses["adv_g"]
        losses["total"] = total
        return total, (losses, nnx.state(model, nnx.BatchStat), comp)

    def d_loss(d_params, real, fake, mask, with_r1):
        disc = lambda x: nnx.merge(d_graphdef, d_params)(x)  # noqa: E731
        patches = _patch_mask(mask)
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
            state["g_params"], state["g_stats"], state["d_params"], image, mask, adv_on)
        updates, g_opt = g_tx.update(grads, state["g_opt"], state["g_params"])
        updates = jax.tree.map(lambda u: -lr * u, updates)
        new = dict(state, g_params=optax.apply_updates(state["g_params"], updates), g_stats=g_stats, g_opt=g_opt)
        losses["grad_norm"] = optax.tree.norm(grads)
        if cfg.w_adv:
            # the discriminator trains from the start; the generator uses it from adv_start on
            (_, d_metrics), d_grads = jax.value_and_grad(d_loss, has_aux=True)(
                state["d_params"], image, jax.lax.stop_gradient(comp), mask, with_r1)
            d_updates, d_opt = d_tx.update(d_grads, state["d_opt"], state["d_params"])
            new.update(d_params=optax.apply_updates(state["d_params"], d_updates), d_opt=d_opt)
            losses.update(d_metrics)
        return new, losses

    return step


def generator_optimizer(cfg: TrainConfig):
    """AdamW without the learning rate (the step multiplies by -lr): clip, Adam, decay."""
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(b1=0.9, b2=0.99, eps=1e-8),
        optax.add_decayed_weights(cfg.weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    )


def make_eval(g_graphdef):
    @jax.jit
    def evaluate(g_params, g_stats, image, mask):
        model = eval_mode(nnx.merge(g_graphdef, g_params, g_stats))
        pred = model(jnp.concatenate([image * (1 - mask), mask], axis=-1))
        losses, comp = reconstruction_losses(pred, image, mask)
        mse = jnp.sum((comp - image) ** 2 * mask, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(mask, axis=(1, 2, 3)) * 3, 1)
        losses["psnr_hole"] = jnp.mean(-10 * jnp.log10(jnp.maximum(mse, 1e-10)))
        return losses, comp

    return evaluate


# --------------------------------------------------------------------------------------
# State, checkpoints
# --------------------------------------------------------------------------------------


def init_state(cfg: TrainConfig):
    """(g_graphdef, d_graphdef, state dict of pytrees) for a fresh run."""
    model = Lama(cfg.model_config(), rngs=nnx.Rngs(cfg.seed))
    g_graphdef, g_params, g_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    disc = PatchDiscriminator(rngs=nnx.Rngs(cfg.seed + 1))
    d_graphdef, d_params = nnx.split(disc, nnx.Param)
    state = {
        "g_params": g_params, "g_stats": g_stats, "g_opt": generator_optimizer(cfg).init(g_params),
        "d_params": d_params, "d_opt": optax.adam(cfg.d_lr).init(d_params),
    }
    return g_graphdef, d_graphdef, state


def abstract_state(cfg: TrainConfig):
    """init_state's structure with shape/dtype structs (no initialisation)."""
    return nnx.eval_shape(lambda: _state_only(cfg)), *_graphdefs(cfg)


def _state_only(cfg):
    return init_state(cfg)[2]


def _graphdefs(cfg):
    g = nnx.eval_shape(lambda: Lama(cfg.model_config(), rngs=nnx.Rngs(0)))
    d = nnx.eval_shape(lambda: PatchDiscriminator(rngs=nnx.Rngs(0)))
    return nnx.split(g, nnx.Param, nnx.BatchStat)[0], nnx.split(d, nnx.Param)[0]


def _flat(tree) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def save_checkpoint(out: Path, state, meta: dict) -> Path:
    """Write ckpt-<step>/ atomically (temporary folder, then rename); keep the last two."""
    dst = out / f"ckpt-{meta['step']:08d}"
    tmp = out / f".{dst.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    flat = _flat(state)
    with open(tmp / "state.npz", "wb") as f:
        np.savez(f, **{f"a{i}": v for i, v in enumerate(flat.values())})
    (tmp / "meta.json").write_text(json.dumps(dict(meta, keys=list(flat)), indent=1) + "\n")
    if dst.exists():
        shutil.rmtree(dst)
    os.rename(tmp, dst)
    for old in checkpoints(out)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return dst


def checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("ckpt-*") if p.is_dir() and (p / "meta.json").is_file())


def load_checkpoint(path: Path, template):
    """(state with the structure of `template`, meta) from a checkpoint folder."""
    meta = json.loads((path / "meta.json").read_text())
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    keys = [jax.tree_util.keystr(p) for p, _ in leaves]
    if keys != meta["keys"]:
        raise SystemExit(f"{path}: the checkpoint does not match this model/optimiser structure")
    with np.load(path / "state.npz") as z:
        arrays = [z[f"a{i}"] for i in range(len(keys))]
    for (p, leaf), a in zip(leaves, arrays):
        if tuple(leaf.shape) != a.shape:
            raise SystemExit(f"{path}: {jax.tree_util.keystr(p)} has shape {a.shape}, expected {leaf.shape}")
    state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template),
                                         [jnp.asarray(a, leaf.dtype) for (_, leaf), a in zip(leaves, arrays)])
    return state, meta


# --------------------------------------------------------------------------------------
# Images and export
# --------------------------------------------------------------------------------------


def save_samples(path: Path, images, masks, comps, n: int = 6):
    """A PNG grid: per row, masked input | fill | target."""
    from PIL import Image

    rows = []
    for img, m, c in zip(images[:n], masks[:n], comps[:n]):
        shown = img * (1 - m) + m * np.array([1.0, 1.0, 1.0], np.float32)
        rows.append(np.concatenate([shown, c, img], axis=1))
    grid = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def export(dst: Path, g_graphdef, state, cfg: TrainConfig, meta: dict, manifest: dict) -> Path:
    """Write the generator as a jax-refine checkpoint (float32, running BN statistics)."""
    from .convert import save

    model = nnx.merge(g_graphdef, state["g_params"], state["g_stats"])
    source = {
        "trained_by": f"jax_refine.train {__version__}",
        "config": dataclasses.asdict(cfg),
        "step": meta["step"], "images_seen": meta["step"] * cfg.batch,
        "train_seconds": round(meta["train_seconds"], 1),
        "validation": meta.get("val"),
        "train_photos": [p["name"] for p in manifest["photos"] if p["split"] == "train"],
        "heldout_photos": [p["name"] for p in manifest["photos"] if p["split"] == "heldout"],
        "data_licenses": sorted({f"{p['source']} {p['version']}: {p['license']}" for p in manifest["photos"]}),
        "manifest_sha256": hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest(),
    }
    return save(model, dst, source=source, overwrite=True)


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


class Log:
    def __init__(self, path: Path):
        self.file = open(path, "a", buffering=1)

    def __call__(self, event: str, **fields):
        record = {"event": event, "time": round(time.time(), 1), **fields}
        self.file.write(json.dumps(record, default=_jsonable) + "\n")


def _jsonable(x):
    if isinstance(x, (np.generic, jax.Array)):
        return round(float(x), 6)
    raise TypeError(type(x))


def _settings(args) -> TrainConfig:
    """The run's TrainConfig: config.json when resuming (explicit conflicting options are an
    error), otherwise the defaults overridden by the command line."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    config_file = args.out / "config.json"
    if args.resume:
        if not config_file.is_file():
            raise SystemExit(f"--resume: {config_file} not found")
        saved = TrainConfig(**json.loads(config_file.read_text()))
        conflicts = {k: (v, getattr(saved, k)) for k, v in given.items() if getattr(saved, k) != v}
        if conflicts:
            raise SystemExit("--resume: options differ from the run's config.json: "
                             + ", ".join(f"--{k.replace('_', '-')} {v} (run: {s})" for k, (v, s) in conflicts.items()))
        return saved
    if config_file.is_file():
        raise SystemExit(f"{args.out} already holds a run: pass --resume to continue it, or choose another --out")
    if "schedule_minutes" not in given and "steps" not in given:
        # training time excludes startup, compilation, validation and checkpoints (~2 min per 2 h)
        given["schedule_minutes"] = round(max(args.minutes - 2, 0.75 * args.minutes), 2)
    return TrainConfig(**given)


def train(args) -> int:
    start_wall = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_xla_cache:  # a resumed run skips recompiling the steps
        from .api import enable_compilation_cache

        enable_compilation_cache(args.out / "xla_cache")
    cfg = _settings(args)
    data_dir = Path(cfg.data) if Path(cfg.data).is_absolute() else REPO / cfg.data
    manifest = read_manifest(data_dir)
    log = Log(args.out / "log.jsonl")
    config_file = args.out / "config.json"
    if not config_file.is_file():
        config_file.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

    if args.resume:
        found = checkpoints(args.out)
        if not found:
            raise SystemExit(f"--resume: no checkpoint in {args.out}")
        template, g_graphdef, d_graphdef = abstract_state(cfg)
        state, meta = load_checkpoint(found[-1], template)
        print(f"resumed {found[-1].name}: step {meta['step']}, {meta['train_seconds'] / 60:.1f} min trained")
    else:
        g_graphdef, d_graphdef, state = init_state(cfg)
        meta = {"step": 0, "train_seconds": 0.0}
    params = count_parameters(nnx.merge(g_graphdef, state["g_params"], state["g_stats"]))
    log("start", resume=bool(args.resume), step=meta["step"], params=params, config=dataclasses.asdict(cfg),
        minutes=args.minutes, jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""))
    print(f"generator: {params:,} parameters ({params * 4 / 2**20:.1f} MiB float32), n_blocks={cfg.n_blocks}, "
          f"crop {cfg.crop}, batch {cfg.batch}")

    def progress(step, train_seconds):
        if cfg.steps:
            return step / cfg.steps
        return train_seconds / (60 * cfg.schedule_minutes)

    val_photos = load_photos(data_dir, manifest, "heldout")
    val_images, val_masks = validation_set(val_photos, cfg.crop)
    evaluate = make_eval(g_graphdef)

    def run_validation():
        t = time.perf_counter()
        sums, comps = {}, []
        for i in range(0, len(val_images), cfg.batch):
            losses, comp = evaluate(state["g_params"], state["g_stats"], val_images[i:i + cfg.batch],
                                    val_masks[i:i + cfg.batch])
            n = min(cfg.batch, len(val_images) - i)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            comps.append(np.asarray(comp))
        val = {k: round(v / len(val_images), 5) for k, v in sums.items()}
        # every 4th crop: two or three crops per held-out photo
        save_samples(args.out / "samples" / f"val-{meta['step']:08d}.png", val_images[::4], val_masks[::4],
                     np.concatenate(comps)[::4])
        log("val", step=meta["step"], seconds=round(time.perf_counter() - t, 1), **val)
        print(f"  val step {meta['step']}: l1_hole {val['l1_hole']:.4f} psnr_hole {val['psnr_hole']:.2f} dB")
        meta["val"] = val

    def checkpoint():
        t = time.perf_counter()
        dst = save_checkpoint(args.out, state, dict(meta, seed=cfg.seed, images_seen=meta["step"] * cfg.batch,
                                                     data_order="batch i = f(seed, i)"))
        log("checkpoint", step=meta["step"], path=dst.name, seconds=round(time.perf_counter() - t, 1))
        return time.perf_counter() - t

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    budget = args.minutes * 60
    try:
        if budget > 0:
            train_photos = load_photos(data_dir, manifest, "train")
            batches = Batches(train_photos, cfg, start=meta["step"])
            step_fn = make_train_step(g_graphdef, d_graphdef, cfg)
            try:
                _loop(args, cfg, state, meta, batches, step_fn, progress, run_validation, checkpoint, log, stop,
                      start_wall, budget)
            finally:
                batches.close()
        else:
            run_validation()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    dst = args.export or args.out / "export"
    export(dst, g_graphdef, state, cfg, meta, manifest)
    log("export", step=meta["step"], path=str(dst))
    print(f"exported {dst} (step {meta['step']}, {meta['step'] * cfg.batch:,} images)")
    return 0


def _loop(args, cfg, state, meta, batches, step_fn, progress, run_validation, checkpoint, log, stop, start_wall,
          budget):
    run_validation()  # the baseline, and compiles the evaluation before the clock matters
    last_ckpt = last_val = time.monotonic()
    reserve = 20.0  # seconds kept for the final validation + checkpoint + export; re-measured below
    window = {"n": 0, "t": 0.0, "wait": 0.0, "losses": {}}
    compiled = set()  # step variants (with / without the R1 penalty) compiled so far
    while True:
        if stop["signal"] is not None:
            print(f"signal {stop['signal']}: saving and stopping")
            break
        done = progress(meta["step"], meta["train_seconds"]) >= 1.0 and cfg.steps is not None
        if done or time.monotonic() - start_wall + reserve >= budget:
            break
        index, (images, masks), wait = batches.next()
        assert index == meta["step"], (index, meta["step"])
        p = progress(meta["step"], meta["train_seconds"])
        lr = learning_rate(cfg, p)
        adv_on = np.float32(cfg.w_adv > 0 and p >= cfg.adv_start)
        with_r1 = _uses_r1(cfg, meta["step"])
        t = time.perf_counter()
        new_state, losses = step_fn(state, images, masks, np.float32(lr), adv_on, with_r1=with_r1)
        losses = jax.device_get(losses)
        seconds = time.perf_counter() - t
        state.update(new_state)
        meta["step"] += 1
        if with_r1 not in compiled:  # compilation is not training time
            compiled.add(with_r1)
            log("compiled", step=meta["step"], r1=with_r1, seconds=round(seconds, 1))
            print(f"compiled and ran step {meta['step']} in {seconds:.1f} s")
            last_ckpt, last_val = last_ckpt + seconds, last_val + seconds
            continue
        if not all(np.isfinite(v) for v in losses.values()):
            log("nonfinite", step=meta["step"], **losses)
            raise SystemExit(f"non-finite loss at step {meta['step']}: {losses}")
        meta["train_seconds"] += seconds + wait
        window["n"] += 1
        window["t"] += seconds + wait
        window["wait"] += wait
        for k, v in losses.items():
            window["losses"][k] = window["losses"].get(k, 0.0) + float(v)
        if window["n"] == args.log_every:
            mean = {k: round(v / window["n"], 5) for k, v in window["losses"].items()}
            ips = window["n"] * cfg.batch / window["t"]
            log("train", step=meta["step"], wall=round(time.monotonic() - start_wall, 1),
                train_seconds=round(meta["train_seconds"], 1), lr=lr, progress=round(p, 4),
                images_per_s=round(ips, 2), data_wait_s=round(window["wait"] / window["n"], 3), **mean)
            print(f"step {meta['step']:6d}  {ips:5.2f} img/s  lr {lr:.2e}  total {mean['total']:.4f}  "
                  f"l1_hole {mean['l1_hole']:.4f}  grad {mean['grad']:.4f}  fft {mean['fft']:.4f}"
                  + (f"  adv_g {mean['adv_g']:.3f}" if "adv_g" in mean else ""), flush=True)
            window = {"n": 0, "t": 0.0, "wait": 0.0, "losses": {}}
        now = time.monotonic()
        if now - last_val >= args.val_minutes * 60:
            t = time.perf_counter()
            run_validation()
            last_val = time.monotonic()
            reserve = max(reserve, 2 * (time.perf_counter() - t) + 10)
        if now - last_ckpt >= args.checkpoint_minutes * 60:
            reserve = max(reserve, 2 * checkpoint() + 20)
            last_ckpt = time.monotonic()
    run_validation()
    checkpoint()


def _uses_r1(cfg: TrainConfig, step: int) -> bool:
    return cfg.w_adv > 0 and cfg.r1_gamma > 0 and step % cfg.r1_every == 0


def benchmark(args) -> int:
    """Time training steps of a configuration (no files written)."""
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                         if getattr(args, f.name, None) is not None})
    data_dir = Path(cfg.data) if Path(cfg.data).is_absolute() else REPO / cfg.data
    photos = load_photos(data_dir, read_manifest(data_dir), "train")
    g_graphdef, d_graphdef, state = init_state(cfg)
    step_fn = make_train_step(g_graphdef, d_graphdef, cfg)
    batches = Batches(photos, cfg, start=0)
    try:
        compile_s = 0.0
        for with_r1 in sorted({_uses_r1(cfg, 0), _uses_r1(cfg, 1)}):  # compile each variant
            _, (images, masks), _ = batches.next()
            t = time.perf_counter()
            state, losses = step_fn(state, images, masks, np.float32(cfg.lr), np.float32(1.0), with_r1=with_r1)
            jax.block_until_ready(losses)
            compile_s += time.perf_counter() - t
        times, waits = [], []
        for i in range(args.benchmark):  # steps 0 .. N-1 of a run: R1 as scheduled
            _, (images, masks), wait = batches.next()
            t = time.perf_counter()
            state, losses = step_fn(state, images, masks, np.float32(cfg.lr), np.float32(1.0),
                                    with_r1=_uses_r1(cfg, i))
            jax.block_until_ready(losses)
            times.append(time.perf_counter() - t)
            waits.append(wait)
    finally:
        batches.close()
    mean = float(np.mean(times))
    params = count_parameters(nnx.merge(g_graphdef, state["g_params"], state["g_stats"]))
    result = dict(n_blocks=cfg.n_blocks, crop=cfg.crop, batch=cfg.batch, w_adv=cfg.w_adv, r1_gamma=cfg.r1_gamma,
                  params=params, compile_s=round(compile_s, 1), step_s_mean=round(mean, 3),
                  step_s_median=round(float(np.median(times)), 3), step_s_max=round(max(times), 3),
                  data_wait_s=round(float(np.mean(waits)), 3), images_per_s=round(cfg.batch / mean, 2))
    print(json.dumps(result))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jax_refine.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="run folder (config, log, checkpoints, samples, export)")
    parser.add_argument("--minutes", type=float, default=120.0,
                        help="wall-clock budget of this invocation, startup and final save included "
                             "(0 with --resume: only validate and export) (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--export", type=Path, help="where to write the final model (default: OUT/export)")
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0, help="(default: %(default)s)")
    parser.add_argument("--val-minutes", type=float, default=10.0, help="(default: %(default)s)")
    parser.add_argument("--log-every", type=int, default=10, help="steps per train log record (default: %(default)s)")
    parser.add_argument("--no-xla-cache", action="store_true",
                        help="do not keep compiled programs in OUT/xla_cache (used by --resume)")
    parser.add_argument("--benchmark", type=int, metavar="STEPS", help="only time STEPS training steps and exit")
    defaults = TrainConfig()
    helps = {
        "n_blocks": "residual blocks", "ngf": "channels after the stem", "crop": "training crop side (multiple of 8)",
        "data": "folder with manifest.json (relative to the repository)",
        "schedule_minutes": "training minutes the lr schedule spans (default: --minutes - 2)",
        "steps": "use a step-count lr schedule of this length and stop there",
        "adv_start": "schedule fraction after which the generator uses the adversarial loss",
        "r1_every": "steps between lazy R1 penalties",
    }
    group = parser.add_argument_group("run settings (fixed for a run; saved in config.json)")
    for f in dataclasses.fields(TrainConfig):
        kind = {"int": int, "float": float, "str": str}[str(f.type).split(" |")[0]]
        default = getattr(defaults, f.name)
        text = helps.get(f.name, "")
        if default is not None:
            text += f" (default: {default})"
        group.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None, help=text.strip())
    args = parser.parse_args(argv)
    if args.benchmark:
        return benchmark(args)
    if args.out is None:
        parser.error("--out is required")
    if args.minutes <= 0 and not args.resume:
        parser.error("--minutes 0 needs --resume (export an existing run)")
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
