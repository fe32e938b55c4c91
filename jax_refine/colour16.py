"""16-bit colour image files, which PIL's modes hold at 8 bits only: reading and writing them.

PIL decodes 16-bit RGB and RGBA PNG and TIFF files (48 and 64 bits per pixel) and 16-bit grey +
alpha PNG into 8-bit modes, keeping each sample's high byte. Reading here uses PIL's own
decoders (every compression, PNG filter and interlacing PIL reads), with the raw mode of the
decode swapped: the same tiles unpacked with the other byte order give each sample's low byte
(16-bit grey + alpha decodes as 8-bit RGBA, one byte per channel: both bytes at once). Writing
16-bit RGB / RGBA / grey + alpha is a plain PNG (filter Sub, zlib) or TIFF (Adobe Deflate; grey
+ alpha as RGBA) of the values, a few lines each (PIL cannot write them; no further dependency
for this).
"""

from __future__ import annotations

import struct
import sys
import zlib

import numpy as np

# raw modes of PIL's 16-bit colour decodes -> the raw mode giving the low bytes
_LOW_BYTES = {";16B": ";16L", ";16L": ";16B", ";16N": ";16B" if sys.byteorder == "little" else ";16L"}
_BOTH_BYTES = {"LA;16B": "RGBA"}  # 16-bit grey + alpha PNG: 4 bytes a pixel, as 8-bit RGBA


def _rawmode(tile) -> str | None:
    args = tile.args
    return args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else None


def _with_rawmode(tile, rawmode: str):
    args = tile.args
    return tile._replace(args=rawmode if isinstance(args, str) else (rawmode, *args[1:]))


def deep_tiles(image) -> tuple[list, bool] | None:
    """For an opened (not yet loaded) PIL image that PIL would decode to 8 bits although its
    file holds 16-bit colour: (the tiles that decode the missing bytes, whether they decode
    both bytes of each sample; see the module docstring); None for every other image."""
    if image.mode not in ("RGB", "RGBA") or not image.tile:
        return None
    rawmodes = [_rawmode(tile) for tile in image.tile]
    if image.mode == "RGBA" and all(mode in _BOTH_BYTES for mode in rawmodes):
        return [_with_rawmode(tile, _BOTH_BYTES[mode]) for tile, mode in zip(image.tile, rawmodes)], True
    suffixes = [mode[len(image.mode):] if mode and mode.startswith(image.mode + ";") else None for mode in rawmodes]
    if all(suffix in _LOW_BYTES for suffix in suffixes):
        tiles = [_with_rawmode(tile, image.mode + _LOW_BYTES[suffix]) for tile, suffix in zip(image.tile, suffixes)]
        return tiles, False
    return None


def combine(first, second, both: bool) -> np.ndarray:
    """uint16 (H, W, C) of a 16-bit colour file from its usual 8-bit decode `first` and
    `second`, its decode with `deep_tiles` (PIL images): C = 3 (RGB), 4 (RGBA) or, where
    `both`, 2 (grey + alpha, every byte in `second`)."""
    low = np.asarray(second).astype(np.uint16)
    if both:
        return np.stack([low[..., 0] << 8 | low[..., 1], low[..., 2] << 8 | low[..., 3]], axis=-1)
    return np.asarray(first).astype(np.uint16) << 8 | low


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_PNG_COLOUR_TYPES = {2: 4, 3: 2, 4: 6}  # channels -> grey + alpha, RGB, RGBA


def png(values: np.ndarray, icc_profile: bytes | None = None) -> bytes:
    """A 16-bit PNG of uint16 values (H, W, 2 | 3 | 4): grey + alpha, RGB or RGBA; rows
    filtered with Sub, zlib level 1 (as the 8-bit outputs); the ICC profile as iCCP."""
    h, w, c = values.shape
    raw = values.astype(">u2").reshape(h, w * c).view(np.uint8)
    rows = np.empty((h, 1 + raw.shape[1]), np.uint8)
    rows[:, 0] = 1  # Sub: each byte minus the same byte of the pixel to its left
    rows[:, 1:] = raw
    rows[:, 1 + 2 * c:] -= raw[:, :-2 * c]
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, _PNG_COLOUR_TYPES[c], 0, 0, 0))]
    if icc_profile:
        chunks.append(_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc_profile)))
    chunks += [_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


_SHORT, _LONG, _UNDEFINED = 3, 4, 7


def tiff(values: np.ndarray, icc_profile: bytes | None = None) -> bytes:
    """A 16-bit baseline TIFF (little-endian, one Adobe Deflate strip) of uint16 values
    (H, W, 2 | 3 | 4): RGB or RGBA (alpha unassociated), grey + alpha as RGBA (PIL reads no
    16-bit grey + alpha TIFF); the ICC profile as tag 34675."""
    if values.shape[2] == 2:
        values = values[..., [0, 0, 0, 1]]
    h, w, c = values.shape
    strip = zlib.compress(values.astype("<u2").tobytes(), 1)
    bits = struct.pack(f"<{c}H", *[16] * c)
    icc = icc_profile or b""
    bits_at = 8 + len(strip)
    icc_at = bits_at + len(bits)
    ifd_at = icc_at + len(icc) + (icc_at + len(icc)) % 2  # word-aligned
    entries = [(256, _LONG, 1, w), (257, _LONG, 1, h),
               (258, _SHORT, c, bits_at), (259, _SHORT, 1, 8), (262, _SHORT, 1, 2), (273, _LONG, 1, 8),
               (277, _SHORT, 1, c), (278, _LONG, 1, h), (279, _LONG, 1, len(strip)), (284, _SHORT, 1, 1)]
    if c == 4:
        entries.append((338, _SHORT, 1, 2))  # ExtraSamples: unassociated alpha
    if icc:
        entries.append((34675, _UNDEFINED, len(icc), icc_at))
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, count)
        + (struct.pack("<HH", value, 0) if kind == _SHORT and count == 1 else struct.pack("<I", value))
        for tag, kind, count, value in entries) + struct.pack("<I", 0)
    head = b"II*\0" + struct.pack("<I", ifd_at) + strip + bits + icc
    return head + b"\0" * (ifd_at - len(head)) + ifd


WRITERS = {"PNG": png, "TIFF": tiff}  # the formats that store 16-bit colour
