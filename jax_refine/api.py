"""The public entry points: `inpaint(image, mask)`, `inpaint_batch`, `estimate`, and models.

Conventions (LaMa's): a mask pixel that is nonzero is a hole; the result keeps every known
pixel of the input and fills the holes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import plan, pyramid
from . import refine as refine_lib
from . import checkpoint
from . import compile_cache
from . import hub
from .crop import hole_regions
from .images import Source, check_hole, from_array, hole_map, source_of
from .contract import Generator
from .memory import MemoryEstimate, estimate_memory
from .plan import RefineConfig
from .refine import ScaleInfo

# The default model ships in the repository's weights/default; a wheel installs that folder as
# jax_refine/weights/default (pyproject's package-dir), a source checkout reads it in place.
_BUNDLED_CANDIDATES = (Path(__file__).parent / "weights" / "default",
                       Path(__file__).parent.parent / "weights" / "default")
BUNDLED_WEIGHTS = next((p for p in _BUNDLED_CANDIDATES if (p / "jax_refine.json").is_file()), _BUNDLED_CANDIDATES[0])


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def default_model() -> Generator:
    """The model bundled with the package (see weights/README.md)."""
    return resolve_model(None)


def load(model: str | os.PathLike | None = None) -> Generator:
    """A new inference-mode generator (`contract.Generator`) from `model`: None for the bundled default, a known name
    ("big-lama": downloaded, verified, converted and cached on first use, see
    `jax_refine.hub`), or the path of a converted checkpoint directory (a path that exists
    wins over a name)."""
    if _is_known_name(model):
        return hub.load(model)
    return checkpoint.load(checkpoint_path(model))


def _is_known_name(model) -> bool:
    return isinstance(model, str) and hub.is_known(model) and not Path(model).exists()


def checkpoint_path(model: str | os.PathLike | None) -> Path:
    """The checkpoint directory `model` (None, a known name or a path, as in `load`) stands for."""
    if model is None:
        if not (BUNDLED_WEIGHTS / "jax_refine.json").is_file():
            raise FileNotFoundError(
                f"no bundled default model in this installation ({BUNDLED_WEIGHTS}); pass model='big-lama' or a "
                "converted checkpoint (`jax-refine convert best.ckpt big-lama-jax`)")
        return BUNDLED_WEIGHTS
    if _is_known_name(model):
        return hub.checkpoint(model)
    if not isinstance(model, (str, os.PathLike)):
        loaded = " (a loaded model needs no loading: pass it as it is)" if isinstance(model, Generator) else ""
        raise TypeError(f"model must be None, a known model name or a checkpoint path, got {type(model).__name__}"
                        + loaded)
    return Path(model).absolute()


MODEL_CACHE_SIZE = 1  # models named by None, name or path that `resolve_model` keeps loaded


@functools.lru_cache(maxsize=MODEL_CACHE_SIZE)
def _load_cached(path: str, mtime: float, name: str | None) -> Generator:
    del mtime  # part of the cache key only: a rewritten checkpoint is loaded again
    return hub.load(name) if name else checkpoint.load(path)  # hub: a damaged cached conversion is remade


def forget_models() -> None:
    """Release the model(s) `resolve_model` keeps loaded (see there)."""
    _load_cached.cache_clear()


def resolve_model(model: Generator | str | os.PathLike | None) -> Generator:
    """A generator (`contract.Generator`, e.g. a `model.Lama`) as given; or one loaded from None,
    a known name or a checkpoint path as in `load`. The most recently loaded MODEL_CACHE_SIZE
    (one) stays loaded, so calls naming the same model load it once; naming another replaces
    it, and `forget_models()` releases it. To own a model's lifetime, pass what `load` returns.
    Every entry point resolves its model before its first program, so this is also where the
    default compilation cache is turned on (`compile_cache.use_default_cache`)."""
    compile_cache.use_default_cache()
    if isinstance(model, Generator):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        path = checkpoint_path(model)
        meta = path / "jax_refine.json"
        return _load_cached(str(path), os.path.getmtime(meta) if meta.is_file() else 0.0,
                            model if _is_known_name(model) else None)
    raise TypeError("model must be a generator (contract.Generator), a known model name, a checkpoint path or None, "
                    f"got {type(model).__name__}")


METHODS = ("refine", "plain")


def _multiscale(method: str) -> bool:
    """Whether `method` (one of METHODS) refines at several scales; ValueError otherwise."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method == "refine"


def estimate(image_size: tuple[int, int], model: Generator | str | os.PathLike | None = None, *, method: str = "refine",
             config: RefineConfig | None = None, batch: int = 1) -> MemoryEstimate:
    """Expected peak memory of `inpaint` on `batch` images of `image_size` (height, width) on the
    current backend, without running it (each scale's program is compiled; see MemoryEstimate).
    `print(estimate(...))` gives a one-line summary."""
    check_arguments(config=config)
    h, w = image_size
    if min(h, w, batch) < 1:
        raise ValueError(f"image_size and batch must be positive, got {image_size} and {batch}")
    multiscale, model = _multiscale(method), resolve_model(model)
    return estimate_memory(model, int(h), int(w), batch=batch, multiscale=multiscale, config=_config(config, model))


def check_arguments(*, config=None, progress=None, devices=None) -> list | None:
    """The public functions' arguments checked at the boundary: config None or a
    RefineConfig, progress None, a bool or a callable, devices None or a non-empty sequence
    of jax Devices (TypeError for a wrong type, ValueError for an empty sequence). Returns
    devices as a list (an iterator is read once), or None."""
    import jax

    if config is not None and not isinstance(config, RefineConfig):
        raise TypeError(f"config must be a jax_refine.RefineConfig or None, got {type(config).__name__} "
                        "(e.g. RefineConfig(n_iters=10), or dataclasses.replace(config, ...))")
    if progress is not None and not isinstance(progress, bool) and not callable(progress):
        raise TypeError(f"progress must be True, False, None or a callable taking Progress events, "
                        f"got {type(progress).__name__}")
    if devices is not None:
        if isinstance(devices, (str, bytes, jax.Device)) or not hasattr(devices, "__iter__"):
            raise TypeError(f"devices must be None or a sequence of jax devices, got {type(devices).__name__}")
        devices = list(devices)
        if not devices:
            raise ValueError("devices is empty: pass None for the default device(s), or a list of jax devices")
        wrong = [type(d).__name__ for d in devices if not isinstance(d, jax.Device)]
        if wrong:
            raise TypeError(f"devices must be jax devices (jax.devices()), got {', '.join(sorted(set(wrong)))}")
    return devices


def _config(config: RefineConfig | None, model) -> RefineConfig:
    """`config`, or when None the model's own recommended settings (`plan.resolve_config`; the
    model is loaded only then)."""
    return plan.resolve_config(None if config is not None else resolve_model(model), config)


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
    """What `inpaint_with_info` did: per-scale sizes, losses and times."""

    refined: bool
    scales: list[ScaleInfo]     # with crops: every crop's scales, crop after crop
    work_size: tuple[int, int]  # (h, w) the network ran at (px_budget size when refining)
    crops: list[tuple[int, int, int, int]] = dataclasses.field(default_factory=list)  # (top, left, bottom, right)
    hole_fraction: float = 0.0  # share of the image's pixels that are hole


def inpaint(image, mask, model: Generator | str | os.PathLike | None = None, *, method: str = "refine",
            config: RefineConfig | None = None, progress: bool | Callable[[Progress], None] | None = None,
            crop_margin: int | None = None, devices=None, mask_threshold: float = 0.0):
    """Inpaint the holes of `image` given by `mask` with LaMa, by default with multi-scale refinement.

    Args:
      image: PIL.Image of any mode (EXIF orientation applied; see `images.from_pil` for the
        mode each comes back in), or a numpy array H x W x 3 uint8 / uint16 / float in [0, 1]
        (H x W x 4 keeps alpha; H x W grey, H x W x 2 grey + alpha).
      mask: PIL.Image or array H x W (H x W x 1 grey, x 2 grey + alpha, x 3 colour, x 4
        colour + alpha). A pixel's value is its grey level (the luma of a colour, for PIL
        images as PIL's L conversion rounds it, as LaMa reads masks); if the mask has an
        alpha channel that is not fully opaque everywhere, its alpha instead (strokes drawn
        on a transparent layer). A hole is a value above mask_threshold times the full scale
        (255 for uint8 and 8-bit images, 65535 for uint16 and 16-bit images, 1 otherwise).
        A hole over half the image gives a `LargeHoleWarning`.
      model: a loaded generator (`contract.Generator`, e.g. `model.Lama`), a known model name ("big-lama", downloaded and converted on
        first use), a path to a converted checkpoint directory, or None for the bundled
        default model.
      method: "refine", multi-scale feature refinement (Kulshreshtha et al. 2022), or
        "plain", LaMa's single forward pass at full resolution.
      config: refinement settings (ignored by "plain"); None: the model's own recommended
        settings (`plan.model_defaults`: LaMa's defaults for LaMa's models).
      progress: True for a progress bar, or a callable receiving `Progress` events.
      crop_margin: None (the whole image), or inpaint each group of nearby holes in a crop
        with this many pixels of context around it and paste the fills back (for small holes
        in large images; see `jax_refine.crop`). The output then always has the input's size.
      devices: None (the default device), or several devices to split the image's rows over
        (spatial sharding for images too large for one device's memory; XLA exchanges the
        borders and gathers for the FFTs, so it is slower than one device that fits the job).
      mask_threshold: in [0, 1); 0 (the default) is LaMa's rule, every nonzero pixel is hole;
        e.g. 0.5 for grey, anti-aliased or JPEG masks.

    Returns:
      The inpainted image, of the same kind as `image` (float in -> float32 out, uint8 in ->
      uint8 out, PIL in -> PIL out) and the same size (unless config.full_size_output is
      False and the image exceeds config.px_budget). Known pixels equal the input's.
    """
    return inpaint_with_info(image, mask, model, method=method, config=config, progress=progress,
                             crop_margin=crop_margin, devices=devices, mask_threshold=mask_threshold)[0]


def inpaint_with_info(image, mask, model: Generator | str | os.PathLike | None = None, *, method: str = "refine",
                      config: RefineConfig | None = None, progress: bool | Callable[[Progress], None] | None = None,
                      crop_margin: int | None = None, devices=None,
                      mask_threshold: float = 0.0) -> tuple[object, InpaintInfo]:
    """`inpaint`, returning (result, `InpaintInfo`: per-scale sizes, iterations, losses, times)."""
    devices = check_arguments(config=config, progress=progress, devices=devices)
    multiscale = _multiscale(method)
    source = source_of(image)
    hole = hole_map(mask, source.rgb.shape[:2], mask_threshold)
    fraction = check_hole(hole)
    if multiscale and hole.any():  # resolved once for every crop
        config = _config(config, model)
    if crop_margin is None:
        [result], [info] = _inpaint_group([source], [hole], model, multiscale, config, progress, devices,
                                          spatial=True)
        info.hole_fraction = fraction
        return result, info
    filled = source.rgb.copy()
    info = InpaintInfo(multiscale, [], source.rgb.shape[:2], hole_regions(hole, crop_margin), fraction)
    for top, left, bottom, right in info.crops:
        window = (slice(top, bottom), slice(left, right))
        [out], [crop_info] = _inpaint_group([from_array(filled[window])], [hole[window]], model, multiscale,
                                          config, progress, devices, spatial=True, full_size=True)
        filled[window] = out
        info.scales += crop_info.scales
    return source.restore(filled, hole), info


def inpaint_batch(images, masks, model: Generator | str | os.PathLike | None = None, *, method: str = "refine",
                  config: RefineConfig | None = None, devices=None, batch_size: int | None = None,
                  progress: bool | Callable[[Progress], None] | None = None, mask_threshold: float = 0.0) -> list:
    """Inpaint many images: images of one `batch_key` (without refinement the same padded
    size; with it, every pyramid level of the same padded size) run together, data-parallel
    over devices.

    Args:
      images, masks: equal-length sequences of what `inpaint` takes (sizes may differ).
      model, method, config, progress, mask_threshold: as `inpaint`.
      devices: the devices to split each batch over (default: all of `jax.devices()`); the
        weights are replicated, a batch is split along its image axis (jax.sharding Mesh).
      batch_size: images per run (default: one per device); a group of images is cut into
        runs of this many, the last padded to a multiple of the device count.

    Returns:
      The results in input order (each as `inpaint` returns it). Each image's result is the
      one `inpaint` gives it alone (up to float rounding of batched convolutions), except that
      with early stopping a run stops when all its images have converged.
    """
    return inpaint_batch_with_info(images, masks, model, method=method, config=config, devices=devices,
                                   batch_size=batch_size, progress=progress, mask_threshold=mask_threshold)[0]


def inpaint_batch_with_info(images, masks, model: Generator | str | os.PathLike | None = None, *, method: str = "refine",
                            config: RefineConfig | None = None, devices=None, batch_size: int | None = None,
                            progress: bool | Callable[[Progress], None] | None = None,
                            mask_threshold: float = 0.0) -> tuple[list, list[InpaintInfo]]:
    """`inpaint_batch`, returning (results, an `InpaintInfo` per image, with its own sizes and
    losses; the images of one run share its times)."""
    import jax

    devices = check_arguments(config=config, progress=progress, devices=devices)
    multiscale = _multiscale(method)
    images, masks = list(images), list(masks)
    if len(images) != len(masks):
        raise ValueError(f"got {len(images)} images but {len(masks)} masks")
    devices = jax.devices() if devices is None else devices  # a non-empty list (check_arguments)
    batch_size = len(devices) if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    sources, holes, fractions = [], [], []
    for index, (image, mask) in enumerate(zip(images, masks)):
        try:
            sources.append(source_of(image))
            holes.append(hole_map(mask, sources[-1].rgb.shape[:2], mask_threshold))
        except ValueError as e:
            raise ValueError(f"image {index}: {e}") from None
        fractions.append(check_hole(holes[-1], f"image {index}: "))
    if multiscale and any(hole.any() for hole in holes):  # resolved once for every run
        config = _config(config, model)
    groups: dict[tuple, list[int]] = {}
    for index, source in enumerate(sources):
        groups.setdefault(batch_key(source.rgb.shape[:2], method, model, config), []).append(index)
    results, infos = [None] * len(images), [None] * len(images)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            run = indices[start:start + batch_size]
            outs, run_infos = _inpaint_group([sources[i] for i in run], [holes[i] for i in run], model, multiscale,
                                             config, progress, devices)
            for i, out, info in zip(run, outs, run_infos):
                results[i], infos[i] = out, dataclasses.replace(info, hole_fraction=fractions[i])
    return results, infos


def batch_key(size: tuple[int, int], method: str, model: Generator | str | os.PathLike | None,
              config: RefineConfig | None = None) -> tuple:
    """Images with equal keys can share a run: for "plain" the same size padded to the model's
    modulo; for "refine" `plan.run_key` (every pyramid level of `config` pads to the same
    size), which needs no model unless config is None (the model's defaults)."""
    if _multiscale(method):
        return plan.run_key(*size, _config(config, model))
    return tuple(plan.padded(n, resolve_model(model).config.modulo) for n in size)


def _inpaint_group(sources: list[Source], holes: list[np.ndarray], model, multiscale: bool,
                   config: RefineConfig | None,
                   progress, devices=None, spatial: bool = False,
                   full_size: bool = False) -> tuple[list, list[InpaintInfo]]:
    """Inpaint images of one `batch_key` in one batch, over `devices` data-parallel or (spatial)
    by rows; images without a hole are returned unchanged (no model is loaded for them).
    config None: the model's defaults; full_size: always bring the result back to the input's size.
    Returns (results, an InpaintInfo per image)."""
    results = [source.restore(source.rgb, hole) for source, hole in zip(sources, holes)]
    infos = [InpaintInfo(multiscale, [], hole.shape) for hole in holes]
    todo = [i for i, hole in enumerate(holes) if hole.any()]
    if not todo:
        return results, infos
    model = resolve_model(model)
    config = _config(config, model)
    if full_size:
        config = dataclasses.replace(config, full_size_output=True)
    if not multiscale:  # each image padded to the common padded size as `predict` pads it alone
        hp, wp = batch_key(holes[todo[0]].shape, "plain", model)
        pad = functools.partial(plan.pad_bottom_right, hp=hp, wp=wp, mode="symmetric")
        out, _ = refine_lib.predict(model, np.concatenate([pad(sources[i].rgb[None]) for i in todo]),
                                    np.concatenate([pad(holes[i][None, ..., None].astype(np.float32)) for i in todo]),
                                    devices=devices, spatial=spatial, compute_dtype=config.compute_dtype)
        for k, i in enumerate(todo):
            size = holes[i].shape
            results[i] = sources[i].restore(np.clip(out[k, :size[0], :size[1]], 0.0, 1.0), holes[i])
        return results, infos
    on_scale, on_iteration, close = _progress_hooks(progress, config)
    try:
        outs, scales = refine_lib.multiscale(model, [sources[i].rgb for i in todo],
                                             [holes[i][..., None].astype(np.float32) for i in todo], config,
                                             on_scale=on_scale, on_iteration=on_iteration, devices=devices,
                                             spatial=spatial, upscale=config.full_size_output)
    finally:
        close()
    for k, (out, i) in enumerate(zip(outs, todo)):
        own = plan.plan_scales(*holes[i].shape, config)  # this image's sizes and losses in the run's scales
        infos[i] = InpaintInfo(True, [dataclasses.replace(s, size=p.size, losses=s.losses[:, k:k + 1])
                                      for s, p in zip(scales, own)], own[-1].size)
        if out.shape[:2] == holes[i].shape:  # at full size, or upscaled on the device (full_size_output)
            results[i] = sources[i].restore(np.clip(out, 0.0, 1.0), holes[i])
        else:  # the original's behaviour: the result stays at the reduced size
            base = np.asarray(pyramid.resize(sources[i].channels[None], *out.shape[:2]))[0]
            results[i] = sources[i].restore(np.clip(out, 0.0, 1.0), np.ones(out.shape[:2], bool), base)
    return results, infos


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
