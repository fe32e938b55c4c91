"""Training batches and validation cases, from the photos of data/manifest.json.

A training sample (numpy + PIL, in a background thread while XLA uses the cores):
  * a photo, chosen with probability proportional to the square root of its pixel count;
  * a zoom: the photo rescaled so that its short side is log-uniform in [crop, its own short
    side] (from whole-scene views, as the coarsest refinement scale sees them, down to native
    texture), and a random crop x crop window of it;
  * a horizontal flip (p 1/2) and colour augmentation against colour bias (see `augment_colour`);
  * a LaMa thin / medium / thick stroke mask drawn for a *virtual image* of side
    512 * mask_scale (mask_scale log-uniform in MASK_SCALES) around the crop, so that holes
    have the pixel sizes they have at inference: the masks of a 1024 px photo are drawn at
    scale 1.6, of a 2048 px one at 3.2, and the crop sees a window of them (redrawn while the
    window's hole share is outside HOLE_SHARE).
Batch i is a pure function of (seed, i), so a resumed run continues the same data order.

Validation: every held-out photo at VAL_SIZES (resized so that it covers the size, centre
crop), with one LaMa mask of each kind drawn at that size, as the quality study draws them.
"""

from __future__ import annotations

import math
import queue
import threading
import time

import numpy as np

from jax_refine.masks import KINDS, random_mask

MASK_PROBS = (0.3, 0.35, 0.35)     # thin, medium, thick
MASK_SCALES = (0.3, 3.5)           # LaMa's 512-px mask sizes times this, log-uniform
HOLE_SHARE = (0.005, 0.9)          # a training window's hole share is redrawn outside this
VAL_SIZES = ((320, 512), (640, 1024))
VAL_SEED = 20261201


def load_photos(data_dir, manifest: dict, split: str) -> list[tuple[str, object]]:
    """(name, decoded RGB PIL image) of every photo of `split`, decoded once and kept."""
    from PIL import Image

    photos = []
    for p in manifest["photos"]:
        if p["split"] == split:
            with Image.open(data_dir / p["path"]) as img:
                photos.append((p["name"], img.convert("RGB")))
    if not photos:
        raise SystemExit(f"no '{split}' photos in {data_dir / 'manifest.json'}")
    return photos


# --------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------


def random_crop(rng: np.random.Generator, img, crop: int) -> np.ndarray:
    """A crop x crop float32 RGB window of `img` rescaled so that its short side is log-uniform
    in [crop, original short side] (antialiased resampling of the window only), flipped
    horizontally with probability 1/2."""
    from PIL import Image

    w, h = img.size
    short = min(w, h)
    target = math.exp(rng.uniform(math.log(crop), math.log(max(short, crop))))
    box = crop * short / target  # the window's side in source pixels
    left, top = rng.uniform(0, w - box), rng.uniform(0, h - box)
    out = np.asarray(img.resize((crop, crop), Image.Resampling.BICUBIC, box=(left, top, left + box, top + box)),
                     np.float32) / 255
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.clip(out, 0, 1)


def hue_rotation(angle: float) -> np.ndarray:
    """(3, 3) RGB matrix rotating hue by `angle` radians about the grey axis (keeps grey grey)."""
    c, s = math.cos(angle), math.sin(angle)
    k = np.full((3, 3), 1 / 3)
    cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / math.sqrt(3)
    return (c * np.eye(3) + (1 - c) * k + s * cross).astype(np.float32)


def augment_colour(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Colour augmentation of an (H, W, 3) float32 image in [0, 1], so that no colour is
    learned as "the" fill: hue rotation (any angle with p 0.3, else within +-0.15 rad),
    saturation x exp(U(-0.5, 0.5)), brightness x exp(U(-0.3, 0.3)), contrast about the mean
    x exp(U(-0.3, 0.3)), a random channel permutation (p 0.2), greyscale (p 0.1)."""
    angle = rng.uniform(-math.pi, math.pi) if rng.random() < 0.3 else rng.uniform(-0.15, 0.15)
    x = x @ hue_rotation(angle).T
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = grey[..., None] + math.exp(rng.uniform(-0.5, 0.5)) * (x - grey[..., None])
    x = x * math.exp(rng.uniform(-0.3, 0.3))
    mean = x.mean()
    x = mean + math.exp(rng.uniform(-0.3, 0.3)) * (x - mean)
    if rng.random() < 0.2:
        x = x[..., rng.permutation(3)]
    if rng.random() < 0.1:
        x = np.repeat((x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, axis=-1)
    return np.clip(x, 0, 1).astype(np.float32)


def window_mask(rng: np.random.Generator, crop: int, kind: str, scale: float, tries: int = 20) -> np.ndarray:
    """A crop x crop window of a LaMa `kind` mask drawn for a square image of side
    max(crop, 512 * scale), its hole share in HOLE_SHARE (the last draw after `tries`)."""
    side = max(crop, round(512 * scale))
    for _ in range(tries):
        mask = random_mask(rng, side, side, kind)
        top, left = (int(rng.integers(side - crop + 1)) for _ in range(2))
        window = mask[top:top + crop, left:left + crop]
        if HOLE_SHARE[0] <= window.mean() <= HOLE_SHARE[1]:
            break
    return window


def training_sample(rng: np.random.Generator, photos, weights, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (crop, crop, 3) float32 in [0, 1], hole (crop, crop) bool) of one sample."""
    _, img = photos[rng.choice(len(photos), p=weights)]
    image = augment_colour(rng, random_crop(rng, img, crop))
    kind = KINDS[rng.choice(len(KINDS), p=MASK_PROBS)]
    scale = math.exp(rng.uniform(*np.log(MASK_SCALES)))
    return image, window_mask(rng, crop, kind, scale)


class Batches:
    """Training batches: batch i is a pure function of (seed, i); prepared ahead in a thread."""

    def __init__(self, photos, *, crop: int, batch: int, seed: int, start: int, prefetch: int = 3):
        self.photos, self.crop, self.batch, self.seed = photos, crop, batch, seed
        sizes = np.sqrt([img.size[0] * img.size[1] for _, img in photos])
        self.weights = sizes / sizes.sum()
        self.queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(start,), daemon=True)
        self.thread.start()

    def make(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(images (B, S, S, 3), masks (B, S, S, 1)) float32 of batch `index`."""
        rng = np.random.default_rng([self.seed, index])
        images, holes = zip(*(training_sample(rng, self.photos, self.weights, self.crop) for _ in range(self.batch)))
        return np.stack(images), np.stack(holes)[..., None].astype(np.float32)

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
        """(index, (images, masks), seconds spent waiting for it)."""
        t = time.perf_counter()
        index, item = self.queue.get()
        if isinstance(item, Exception):
            raise RuntimeError(f"preparing batch {index} failed") from item
        return index, item, time.perf_counter() - t

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def fit_crop(img, height: int, width: int) -> np.ndarray:
    """`img` resized (Lanczos) to cover height x width, centre-cropped: float32 (h, w, 3)."""
    from PIL import Image

    scale = max(width / img.width, height / img.height)
    size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
    resized = img.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return np.asarray(resized.crop((left, top, left + width, top + height)), np.float32) / 255


def validation_cases(photos, size: tuple[int, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{kind: (images (N, h, w, 3), masks (N, h, w, 1))}: every held-out photo at `size`, one
    LaMa mask of each kind drawn at that size (fixed seeds)."""
    images = np.stack([fit_crop(img, *size) for _, img in photos])
    cases = {}
    for k, kind in enumerate(KINDS):
        masks = [random_mask(np.random.default_rng([VAL_SEED, *size, k, i]), *size, kind) for i in range(len(photos))]
        cases[kind] = (images, np.stack(masks)[..., None].astype(np.float32))
    return cases
