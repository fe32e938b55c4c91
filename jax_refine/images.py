"""Images and masks in, images out: every kind `inpaint` takes, and EXIF orientation.

An input becomes a `Source`: float32 RGB in [0, 1] for the network, and a function that gives
a result back in the caller's kind (array dtype, PIL mode, alpha kept) with the known pixels
exactly as they came. A mask becomes a boolean hole map (LaMa's rule: nonzero is a hole,
or above a threshold for grey and lossy masks; an alpha channel, when present, is the mask).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

EXIF_ORIENTATION = 0x0112


def is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(x, Image.Image)


def upright(img):
    """A PIL image as it is displayed: EXIF orientation applied (the user draws masks on that)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(img)


def upright_size(img) -> tuple[int, int]:
    """(h, w) of `upright(img)`, from its header alone (no pixels decoded)."""
    w, h = img.size
    transposed = img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # rotated by 90 or 270
    return (w, h) if transposed else (h, w)


def source_of(image) -> Source:
    """The `Source` of a PIL image or an array."""
    return from_pil(image) if is_pil(image) else from_array(np.asarray(image))




@dataclasses.dataclass
class Source:
    """An input image as float32 (H, W, 3) in [0, 1], and how to give a result back in the
    caller's kind."""

    rgb: np.ndarray
    # (result float (h, w, 3), hole bool (h, w), base float (h, w, C) in [0, 1] or None for
    # the input itself) -> the caller's kind, known pixels taken from base
    restore: Callable[..., Any]
    channels: np.ndarray  # float32 (H, W, C) in [0, 1], all input channels (alpha included)


def from_array(a: np.ndarray) -> Source:
    """H x W (grey), H x W x 1, x 2 (grey + alpha), x 3 (RGB) or x 4 (RGBA); uint8, uint16 or
    float in [0, 1]. Alpha is kept as it is; grey results are the fill's luma."""
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(f"image must be H x W x 3 (or H x W, H x W x 1, x 2, x 4), got shape {a.shape}")
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
    channels = a.reshape(a.shape[0], a.shape[1], -1)  # (H, W, 1 | 2 | 3 | 4)
    gray = channels.shape[2] <= 2
    as_float = channels.astype(np.float32) / (scale or 1.0)
    rgb = np.repeat(as_float[:, :, :1], 3, axis=2) if gray else as_float[:, :, :3]

    def to_out_dtype(x):
        return x.astype(np.float32) if scale is None else np.clip(np.rint(x * scale), 0, scale).astype(out_dtype)

    def restore(result, hole, base=None):
        out = channels.astype(out_dtype, copy=True) if base is None else to_out_dtype(base)
        filled = to_out_dtype(luma(result)[..., None] if gray else result)
        out[:, :, : filled.shape[2]] = np.where(hole[..., None], filled, out[:, :, : filled.shape[2]])
        return out.reshape(out.shape[:2] + a.shape[2:])

    return Source(rgb, restore, as_float)


def luma(rgb):
    """ITU-R 601 luma, as PIL's RGB -> L conversion."""
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


# PIL modes by how they are read. Colour spaces other than RGB are inpainted in RGB (PIL's
# conversion) and the fill is converted back, so known pixels keep their exact values.
_GREY_16 = ("I;16", "I;16B", "I;16L", "I;16N")
_WITH_ALPHA = ("LA", "La", "RGBA", "RGBa", "PA")
_COLOUR_SPACES = ("CMYK", "YCbCr", "HSV", "LAB")


def _has_alpha(img) -> bool:
    return img.mode in _WITH_ALPHA or (img.mode == "P" and "transparency" in img.info)


def from_pil(img) -> Source:
    """Every PIL mode: 1/L -> L; LA/La -> LA; P/PA -> RGB or RGBA; RGB/RGBX -> RGB;
    RGBA/RGBa -> RGBA; CMYK/YCbCr/HSV/LAB -> the same mode (RGB for LAB, which PIL cannot
    convert to); 16-bit grey (I;16, I;16B, I;16L, I;16N) -> I;16; I (values 0..65535) -> I;
    F (values in [0, 1]) -> F; any other mode PIL converts to RGB -> RGB."""
    from PIL import Image

    img = upright(img)
    mode = img.mode
    if mode in _GREY_16:
        inner = from_array(np.asarray(img).astype(np.uint16))
        return Source(inner.rgb, lambda *args: Image.fromarray(inner.restore(*args)), inner.channels)
    if mode == "I":
        inner = from_array(_as_uint16(np.asarray(img), "a 32-bit integer (mode I) image"))
        return Source(inner.rgb, lambda *args: Image.fromarray(inner.restore(*args).astype(np.int32)),
                      inner.channels)
    if mode == "F":
        inner = from_array(np.asarray(img, np.float32))
        return Source(inner.rgb, lambda *args: Image.fromarray(inner.restore(*args)), inner.channels)
    if mode in ("1", "L"):
        target = "L"
    elif mode in ("LA", "La"):
        target = "LA"
    elif _has_alpha(img):
        target = "RGBA"
    else:
        target = "RGB"
    try:
        inner = from_array(np.asarray(img.convert(target)))
    except (ValueError, OSError) as e:  # PIL: no conversion from this mode
        raise ValueError(f"unsupported image mode {mode}: {e}") from None
    if mode not in _COLOUR_SPACES or mode == "LAB":
        return Source(inner.rgb, lambda *args: Image.fromarray(inner.restore(*args)), inner.channels)
    original = np.asarray(img)

    def restore(result, hole, base=None):
        filled = np.asarray(Image.fromarray(inner.restore(result, hole, base)).convert(mode))
        out = filled if base is not None else np.where(hole[..., None], filled, original)
        return Image.frombytes(mode, (out.shape[1], out.shape[0]), np.ascontiguousarray(out).tobytes())

    return Source(inner.rgb, restore, inner.channels)


def _as_uint16(a: np.ndarray, what: str) -> np.ndarray:
    """An integer array with values in 0..65535 as uint16; ValueError naming `what` otherwise."""
    low, high = int(a.min()), int(a.max())
    if low < 0 or high > 65535:
        raise ValueError(f"{what} must have values in 0..65535 (16 bits), got {low}..{high}")
    return a.astype(np.uint16)


MAX_HOLE_FRACTION = 0.5  # LaMa is trained on holes of up to about half the image


class LargeHoleWarning(UserWarning):
    """The mask makes more than MAX_HOLE_FRACTION of the image a hole (inverted or lossy mask?)."""


def mask_array(mask) -> np.ndarray:
    """A PIL mask as the array `_hole` reads: 8-bit modes as grey (PIL's L conversion, the
    luma LaMa reads masks as), with alpha as grey + alpha (H, W, 2); 16-bit as uint16; F as
    float32."""
    mask = upright(mask)
    if mask.mode in _GREY_16:
        return np.asarray(mask).astype(np.uint16)
    if mask.mode == "I":
        return _as_uint16(np.asarray(mask), "a 32-bit integer (mode I) mask")
    if mask.mode == "F":
        return np.asarray(mask, np.float32)
    try:
        return np.asarray(mask.convert("LA" if _has_alpha(mask) else "L"))
    except (ValueError, OSError) as e:
        raise ValueError(f"unsupported mask mode {mask.mode}: {e}") from None


def _full_scale(dtype: np.dtype) -> float:
    """The value of a fully set mask pixel: 255 for uint8, 65535 for uint16, else 1."""
    return float(np.iinfo(dtype).max) if dtype in (np.uint8, np.uint16) else 1.0


def check_mask_threshold(threshold) -> None:
    """ValueError unless `threshold` is a number in [0, 1)."""
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold < 1):
        raise ValueError(f"mask_threshold must be a number in [0, 1), got {threshold!r}")


def hole_map(mask, shape, threshold: float = 0.0) -> np.ndarray:
    """Boolean (H, W) hole map of a mask (PIL image or array; see `inpaint`).

    A pixel's value is its grey level (luma for colour); when the mask has an alpha channel
    that is not fully opaque everywhere, the alpha channel instead. A hole is a value above
    threshold * full scale (`_full_scale`; threshold 0: LaMa's nonzero rule).
    """
    check_mask_threshold(threshold)
    if is_pil(mask):
        mask = mask_array(mask)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] in (1, 2, 3, 4):
        colour, alpha = np.split(mask, [1 if mask.shape[2] <= 2 else 3], axis=2)
    elif mask.ndim == 2:
        colour, alpha = mask[..., None], mask[..., :0]
    else:
        raise ValueError(f"mask must be H x W (or H x W x 1, x 2, x 3, x 4), got shape {mask.shape}")
    if mask.dtype.kind not in "biuf":
        raise ValueError(f"unsupported mask dtype {mask.dtype}")
    if alpha.size and mask.dtype not in (np.bool_, np.uint8, np.uint16) and mask.dtype.kind != "f":
        raise ValueError(f"a mask with an alpha channel must be bool, uint8, uint16 or float, got {mask.dtype}")
    if mask.dtype.kind == "f" and not np.all(np.isfinite(mask)):
        raise ValueError("mask contains NaN or infinite values")
    if mask.shape[:2] != tuple(shape):
        raise ValueError(f"mask size {mask.shape[1]}x{mask.shape[0]} (WxH) does not match the image size "
                         f"{shape[1]}x{shape[0]}")
    full = _full_scale(mask.dtype)
    if alpha.size and not np.all(alpha == full):
        value = alpha[..., 0]
    elif colour.shape[2] == 3:
        value = luma(colour.astype(np.float32))
    else:
        value = colour[..., 0]
    return value > threshold * full


def check_hole(hole: np.ndarray, what: str = "") -> float:
    """The hole's share of the image; a LargeHoleWarning when it exceeds MAX_HOLE_FRACTION."""
    fraction = float(hole.mean())
    if fraction > MAX_HOLE_FRACTION:
        warnings.warn(f"{what}the hole covers {100 * fraction:.1f} % of the image (LaMa fills holes of up to about "
                      "half the image): is the mask inverted, or grey or lossy (see mask_threshold)?",
                      LargeHoleWarning, stacklevel=3)
    return fraction
