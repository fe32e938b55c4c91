"""The public entry point: `inpaint(image, mask)`, plus input/output conversion.

Conventions (LaMa's): a mask pixel that is nonzero is a hole; the result keeps every known
pixel of the input and fills the holes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import plan, pyramid
from . import refine as refine_lib
from . import convert as convert_lib
from . import hub
from .crop import hole_regions
from .model import Lama
from .memory import MemoryEstimate, estimate_memory
from .plan import RefineConfig, model_defaults
from .refine import ScaleInfo

# The default model ships in the repository's weights/default; a wheel installs that folder as
# jax_refine/weights/default (pyproject's package-dir), a source checkout reads it in place.
_BUNDLED_CANDIDATES = (Path(__file__).parent / "weights" / "default",
                       Path(__file__).parent.parent / "weights" / "default")
BUNDLED_WEIGHTS = next((p for p in _BUNDLED_CANDIDATES if (p / "jax_refine.json").is_file()), _BUNDLED_CANDIDATES[0])


# --------------------------------------------------------------------------------------
# Images and masks in, images out
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Image:
    """An input image as float32 (H, W, 3) in [0, 1], and how to give a result back in the
    caller's kind."""

    rgb: np.ndarray
    # (result float (h, w, 3), hole bool (h, w), base float (h, w, C) in [0, 1] or None for
    # the input itself) -> the caller's kind, known pixels taken from base
    restore: Callable[..., Any]
    channels: np.ndarray  # float32 (H, W, C) in [0, 1], all input channels (alpha included)


def _image_from_array(a: np.ndarray) -> _Image:
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image must be H x W x 3 (or H x W, H x W x 1, H x W x 4), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"image is empty (shape {a.shape})")
    if a.dtype.kind == "u" and a.dtype.itemsize <= 2:
        scale = float(np.iinfo(a.dtype).max)
    elif a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise ValueError("image contains NaN or infinite values")
        low, high = float(a.min()), float(a.max())
        if low < 0 or high > 1:
            raise ValueError(f"a float image must have values in [0, 1], got [{low:.4g}, {high:.4g}] "
                             "(pass uint8 images as uint8, or divide by 255)")
        scale = None
    else:
        raise ValueError(f"unsupported image dtype {a.dtype}: use uint8, uint16 or float in [0, 1]")
    out_dtype = np.float32 if scale is None else a.dtype
    channels = a.reshape(a.shape[0], a.shape[1], -1)  # (H, W, 1 | 3 | 4)
    gray = channels.shape[2] == 1
    as_float = channels.astype(np.float32) / (scale or 1.0)
    rgb = np.repeat(as_float, 3, axis=2) if gray else as_float[:, :, :3]

    def to_out_dtype(x):
        return x.astype(np.float32) if scale is None else np.clip(np.rint(x * scale), 0, scale).astype(out_dtype)

    def restore(result, hole, base=None):
        out = channels.astype(out_dtype, copy=True) if base is None else to_out_dtype(base)
        filled = to_out_dtype(_luma(result)[..., None] if gray else result)
        out[:, :, : filled.shape[2]] = np.where(hole[..., None], filled, out[:, :, : filled.shape[2]])
        return out.reshape(out.shape[:2] + a.shape[2:])

    return _Image(rgb, restore, as_float)


def _luma(rgb):
    """ITU-R 601 luma, as PIL's RGB -> L conversion."""
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _image_from_pil(img) -> _Image:
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)  # the user sees (and draws masks on) the upright image
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img.convert("I"), np.int64)
        array = np.clip(array, 0, 65535).astype(np.uint16)
        inner = _image_from_array(array)
        return _Image(inner.rgb, lambda *args: Image.fromarray(inner.restore(*args)).convert(mode)
                      if mode != "I;16" else Image.fromarray(inner.restore(*args), "I;16"), inner.channels)
    if mode in ("L", "1"):
        target = "L"
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        target = "RGBA"
    else:
        target = "RGB"
    inner = _image_from_array(np.asarray(img.convert(target)))
    out_mode = mode if mode in ("L", "RGB", "RGBA") else target
    return _Image(inner.rgb, lambda *args: Image.fromarray(inner.restore(*args), target).convert(out_mode),
                  inner.channels)


def _hole(mask, shape) -> np.ndarray:
    """Boolean (H, W) hole map: nonzero mask pixels (any channel) are holes."""
    try:
        from PIL import Image, ImageOps
        if isinstance(mask, Image.Image):
            mask = np.asarray(ImageOps.exif_transpose(mask).convert("L"))
    except ImportError:
        pass
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] in (1, 3, 4):
        mask = mask[:, :, :3].max(axis=2)  # any colour channel (alpha ignored)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W (or H x W x 1/3), got shape {mask.shape}")
    if mask.dtype.kind not in "biuf":
        raise ValueError(f"unsupported mask dtype {mask.dtype}")
    if mask.dtype.kind == "f" and not np.all(np.isfinite(mask)):
        raise ValueError("mask contains NaN or infinite values")
    if mask.shape != tuple(shape):
        raise ValueError(f"mask size {mask.shape[1]}x{mask.shape[0]} (WxH) does not match the image size "
                         f"{shape[1]}x{shape[0]}")
    return mask > 0


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def default_model() -> Lama:
    """The model bundled with the package (see weights/README.md)."""
    return resolve_model(None)


def load(model: str | os.PathLike | None = None) -> Lama:
    """A new inference-mode Lama from `model`: None for the bundled default, a known name
    ("big-lama": downloaded, verified, converted and cached on first use, see
    `jax_refine.hub`), or the path of a converted checkpoint directory (a path that exists
    wins over a name)."""
    return convert_lib.load(checkpoint_path(model))


def checkpoint_path(model: str | os.PathLike | None) -> Path:
    """The checkpoint directory `model` (None, a known name or a path, as in `load`) stands for."""
    if model is None:
        if not (BUNDLED_WEIGHTS / "jax_refine.json").is_file():
            raise FileNotFoundError(
                f"no bundled default model in this installation ({BUNDLED_WEIGHTS}); pass model='big-lama' or a "
                "converted checkpoint (`jax-refine convert best.ckpt big-lama-jax`)")
        return BUNDLED_WEIGHTS
    path = Path(model)
    if not path.exists() and isinstance(model, str) and hub.is_known(model):
        return hub.checkpoint(model)
    return path.absolute()


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float) -> Lama:
    del mtime  # part of the cache key only: a rewritten checkpoint is loaded again
    return convert_lib.load(path)


def resolve_model(model: Lama | str | os.PathLike | None) -> Lama:
    """A Lama; or None, a known name or a checkpoint path as in `load` (loaded once, cached)."""
    if isinstance(model, Lama):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        path = checkpoint_path(model)
        meta = path / "jax_refine.json"
        return _load_cached(str(path), os.path.getmtime(meta) if meta.is_file() else 0.0)
    raise TypeError(f"model must be a Lama, a known model name, a checkpoint path or None, got {type(model).__name__}")


def enable_compilation_cache(path: str | os.PathLike) -> Path:
    """Enable JAX's persistent compilation cache in directory `path` (created if needed).

    Every compiled program is stored (no minimum compile time), so a later process running
    the same model at the same padded image sizes skips compilation. Call it before the
    first computation. The cache is trusted code: do not use a directory others can write.
    """
    import jax

    path = Path(path).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return path


def estimate(image_size: tuple[int, int], model: Lama | str | os.PathLike | None = None, *, refine: bool = True,
             config: RefineConfig | None = None, batch: int = 1) -> MemoryEstimate:
    """Expected peak memory of `inpaint` on `batch` images of `image_size` (height, width) on the
    current backend, without running it (each scale's program is compiled; see MemoryEstimate).
    `print(estimate(...))` gives a one-line summary."""
    h, w = image_size
    if min(h, w, batch) < 1:
        raise ValueError(f"image_size and batch must be positive, got {image_size} and {batch}")
    model = resolve_model(model)
    return estimate_memory(model, int(h), int(w), batch=batch, refine=refine,
                                      config=_config(config, model))


def _config(config: RefineConfig | None, model) -> RefineConfig:
    """`config`, or when None the model's own recommended settings (`refine.model_defaults`)."""
    return model_defaults(resolve_model(model)) if config is None else config


# --------------------------------------------------------------------------------------
# inpaint
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Progress:
    """A progress event: scale `scale` of `n_scales` (0 = coarsest); `iteration` of `n_iters`
    (None at the start of a scale) with the loss after it."""

    scale: int
    n_scales: int
    iteration: int | None
    n_iters: int
    loss: float | None
    size: tuple[int, int]


@dataclasses.dataclass
class InpaintInfo:
    """What `inpaint(..., return_info=True)` did: per-scale sizes, losses and times."""

    refined: bool
    scales: list[ScaleInfo]     # with crops: every crop's scales, crop after crop
    work_size: tuple[int, int]  # (h, w) the network ran at (px_budget size when refining)
    crops: list[tuple[int, int, int, int]] = dataclasses.field(default_factory=list)  # (top, left, bottom, right)


def inpaint(image, mask, model: Lama | str | os.PathLike | None = None, *, refine: bool = True,
            config: RefineConfig | None = None, progress: bool | Callable[[Progress], None] | None = None,
            return_info: bool = False, crop_margin: int | None = None, devices=None):
    """Inpaint the holes of `image` given by `mask` with LaMa, optionally with multi-scale refinement.

    Args:
      image: PIL.Image (RGB, RGBA, L, P, 16-bit; EXIF orientation applied), or a numpy array
        H x W x 3 uint8 / uint16 / float in [0, 1] (H x W x 4 keeps alpha; H x W gray).
      mask: PIL.Image or array H x W (H x W x 1 / x 3 accepted); nonzero = hole.
      model: a loaded `Lama`, a known model name ("big-lama", downloaded and converted on
        first use), a path to a converted checkpoint directory, or None for the bundled
        default model.
      refine: multi-scale feature refinement (Kulshreshtha et al. 2022); False runs LaMa's
        plain single-pass prediction.
      config: refinement settings (ignored when refine=False); None: the model's own
        recommended settings (`refine.model_defaults`: LaMa's defaults for LaMa's models).
      progress: True for a progress bar, or a callable receiving `Progress` events.
      return_info: also return an `InpaintInfo`.
      crop_margin: None (the whole image), or inpaint each group of nearby holes in a crop
        with this many pixels of context around it and paste the fills back (for small holes
        in large images; see `jax_refine.crop`). The output then always has the input's size.
      devices: None (the default device), or several devices to split the image's rows over
        (spatial sharding for images too large for one device's memory; XLA exchanges the
        borders and gathers for the FFTs, so it is slower than one device that fits the job).

    Returns:
      The inpainted image, of the same kind as `image` (float in -> float32 out, uint8 in ->
      uint8 out, PIL in -> PIL out) and the same size (unless config.full_size_output is
      False and the image exceeds config.px_budget). Known pixels equal the input's.
    """
    source = _source(image)
    hole = _hole(mask, source.rgb.shape[:2])
    if crop_margin is None:
        [result], [info] = _inpaint_group([source], [hole], model, refine, config, progress, devices, spatial=True)
        return (result, info) if return_info else result
    filled, info = source.rgb.copy(), InpaintInfo(refine, [], source.rgb.shape[:2], hole_regions(hole, crop_margin))
    for top, left, bottom, right in info.crops:
        window = (slice(top, bottom), slice(left, right))
        [out], [crop_info] = _inpaint_group([_image_from_array(filled[window])], [hole[window]], model, refine,
                                          config, progress, devices, spatial=True, full_size=True)
        filled[window] = out
        info.scales += crop_info.scales
    result = source.restore(filled, hole)
    return (result, info) if return_info else result


def inpaint_batch(images, masks, model: Lama | str | os.PathLike | None = None, *, refine: bool = True,
                  config: RefineConfig | None = None, devices=None, batch_size: int | None = None,
                  progress: bool | Callable[[Progress], None] | None = None, return_info: bool = False):
    """Inpaint many images: images of one `batch_key` (without refinement the same padded
    size; with it, every pyramid level of the same padded size) run together, data-parallel
    over devices.

    Args:
      images, masks: equal-length sequences of what `inpaint` takes (sizes may differ).
      model, refine, config, progress: as `inpaint`.
      devices: the devices to split each batch over (default: all of `jax.devices()`); the
        weights are replicated, a batch is split along its image axis (jax.sharding Mesh).
      batch_size: images per run (default: one per device); a group of images is cut into
        runs of this many, the last padded to a multiple of the device count.

    Returns:
      The results in input order (each as `inpaint` returns it), and with return_info a list
      of `InpaintInfo`, one per image, with its own sizes and losses (the images of one run
      share its times). Each image's result is the one `inpaint` gives it alone (up to float
      rounding of batched convolutions), except that with early stopping a run stops when all
      its images have converged.
    """
    import jax

    images, masks = list(images), list(masks)
    if len(images) != len(masks):
        raise ValueError(f"got {len(images)} images but {len(masks)} masks")
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty")
    batch_size = len(devices) if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    sources, holes = [], []
    for index, (image, mask) in enumerate(zip(images, masks)):
        try:
            sources.append(_source(image))
            holes.append(_hole(mask, sources[-1].rgb.shape[:2]))
        except ValueError as e:
            raise ValueError(f"image {index}: {e}") from None
    groups: dict[tuple, list[int]] = {}
    for index, source in enumerate(sources):
        groups.setdefault(batch_key(source.rgb.shape[:2], refine, model, config), []).append(index)
    results, infos = [None] * len(images), [None] * len(images)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            run = indices[start:start + batch_size]
            outs, run_infos = _inpaint_group([sources[i] for i in run], [holes[i] for i in run], model, refine,
                                             config, progress, devices)
            for i, out, info in zip(run, outs, run_infos):
                results[i], infos[i] = out, info
    return (results, infos) if return_info else results


def batch_key(size: tuple[int, int], refine: bool, model: Lama | str | os.PathLike | None,
              config: RefineConfig | None = None) -> tuple:
    """Images with equal keys can share a run: for plain prediction the same size padded to the
    model's modulo; with refinement `refine.run_key` (every pyramid level of `config` pads to
    the same size), which needs no model unless config is None (the model's defaults)."""
    if refine:
        return plan.run_key(*size, _config(config, model))
    return tuple(plan.padded(n, resolve_model(model).config.modulo) for n in size)


def _source(image) -> _Image:
    return _image_from_pil(image) if _is_pil(image) else _image_from_array(np.asarray(image))


def _inpaint_group(sources: list[_Image], holes: list[np.ndarray], model, refine: bool, config: RefineConfig | None,
                   progress, devices=None, spatial: bool = False,
                   full_size: bool = False) -> tuple[list, list[InpaintInfo]]:
    """Inpaint images of one `batch_key` in one batch, over `devices` data-parallel or (spatial)
    by rows; images without a hole are returned unchanged (no model is loaded for them).
    config None: the model's defaults; full_size: always bring the result back to the input's size.
    Returns (results, an InpaintInfo per image)."""
    results = [source.restore(source.rgb, hole) for source, hole in zip(sources, holes)]
    infos = [InpaintInfo(refine, [], hole.shape) for hole in holes]
    todo = [i for i, hole in enumerate(holes) if hole.any()]
    if not todo:
        return results, infos
    model = resolve_model(model)
    config = _config(config, model)
    if full_size:
        config = dataclasses.replace(config, full_size_output=True)
    if not refine:  # each image padded to the common padded size as `predict` pads it alone
        hp, wp = batch_key(holes[todo[0]].shape, False, model)
        pad = functools.partial(plan.pad_bottom_right, hp=hp, wp=wp, mode="symmetric")
        out, _ = refine_lib.predict(model, np.concatenate([pad(sources[i].rgb[None]) for i in todo]),
                                    np.concatenate([pad(holes[i][None, ..., None].astype(np.float32)) for i in todo]),
                                    devices=devices, spatial=spatial)
        for k, i in enumerate(todo):
            size = holes[i].shape
            results[i] = sources[i].restore(np.clip(out[k, :size[0], :size[1]], 0.0, 1.0), holes[i])
        return results, infos
    on_scale, on_iteration, close = _progress_hooks(progress, config)
    try:
        outs, scales = refine_lib.multiscale(model, [sources[i].rgb for i in todo],
                                         [holes[i][..., None].astype(np.float32) for i in todo], config,
                                         on_scale=on_scale, on_iteration=on_iteration, devices=devices, spatial=spatial)
    finally:
        close()
    for k, (out, i) in enumerate(zip(outs, todo)):
        own = plan.plan_scales(*holes[i].shape, config)  # this image's sizes and losses in the run's scales
        infos[i] = InpaintInfo(True, [dataclasses.replace(s, size=p.size, losses=s.losses[:, k:k + 1])
                                      for s, p in zip(scales, own)], out.shape[:2])
        if out.shape[:2] == holes[i].shape:
            results[i] = sources[i].restore(np.clip(out, 0.0, 1.0), holes[i])
        elif config.full_size_output:  # upscale the fill into the full-resolution image
            full = np.asarray(pyramid.resize(out[None], *holes[i].shape))[0]
            results[i] = sources[i].restore(np.clip(full, 0.0, 1.0), holes[i])
        else:  # the original's behaviour: the result stays at the reduced size
            base = np.asarray(pyramid.resize(sources[i].channels[None], *out.shape[:2]))[0]
            results[i] = sources[i].restore(np.clip(out, 0.0, 1.0), np.ones(out.shape[:2], bool), base)
    return results, infos


def _is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(x, Image.Image)


def _progress_hooks(progress, config):
    """(on_scale, on_iteration, close) for refine.multiscale from the `progress` argument."""
    if not progress:
        return None, None, lambda: None
    state = {}
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=0, unit="it", leave=False)

        def callback(event: Progress):
            if event.iteration is None:
                bar.reset(total=config.n_iters if event.scale > 0 else 1)
                bar.set_description(f"scale {event.scale + 1}/{event.n_scales} {event.size[1]}x{event.size[0]}")
                if event.scale == 0:
                    bar.update(1)
            else:
                bar.update(1)
                bar.set_postfix(loss=f"{event.loss:.4f}")

        close = bar.close
    else:
        callback, close = progress, (lambda: None)

    def on_scale(index, n_scales, info):
        state.update(scale=index, n_scales=n_scales, size=info.size)
        callback(Progress(index, n_scales, None, config.n_iters, None, info.size))

    def on_iteration(i, losses):
        callback(Progress(state["scale"], state["n_scales"], i + 1, config.n_iters, float(losses.mean()), state["size"]))

    return on_scale, on_iteration, close
