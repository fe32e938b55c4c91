"""Image files and folders: the items of a job, reading and writing images.

Modes (what `find_items` accepts; see the CLI's epilog):
    IMAGE MASK -> OUT          one image
    DIR -> OUTDIR              LaMa's layout: every *_mask*.png under DIR is a mask of its image
    IMAGEDIR MASKDIR -> OUTDIR each image takes MASKDIR/<stem>.png or <stem>_mask*.png
    IMAGEDIR MASK -> OUTDIR    one mask for every image

Promises: no input is ever written; a malformed or unreadable image, mask or folder entry
(symlink loops, FIFOs, devices, directories where files belong, damaged files) is an
`ItemError` of its own item, never a crash; any name the file system allows works (bytes
that are not UTF-8, newlines, leading dashes, 255 bytes; `printable` shows them); outputs are
written atomically (a locked temporary file `.<name>.<random>.partial` beside the output,
fsynced, then renamed), and a later run removes the temporary files that writers which are
gone left for the outputs it writes, never a live writer's. 16-bit colour files are read and
written at 16 bits (`colour16`); what an output's format cannot keep of its input (depth,
alpha, losslessness) is said in a warning (`save_atomic`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import os
import re
import secrets
import stat
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import colour16, images

try:
    import fcntl
except ImportError:  # Windows: no locks; temporary files are never taken for abandoned
    fcntl = None

# Images read in IMAGEDIR modes (PIL reads more, but these are the usual photo formats).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
# LaMa's image suffixes for the `x_mask*.png` layout, tried in this order.
LAMA_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def printable(text) -> str:
    """`text` (a str, path or bytes) as one line any terminal shows: bytes that are not UTF-8
    as \\xNN, control characters (newline, tab, escape, ...) as Python escapes."""
    text = os.fsdecode(text) if isinstance(text, (bytes, os.PathLike)) else str(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        raw = text.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class UsageError(ValueError):
    """Bad arguments, settings or paths: the job cannot start (the CLI's exit status 2)."""


class ItemError(Exception):
    """One item cannot be processed: reported as `<path>: <reason>` and skipped."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclasses.dataclass
class Item:
    """One image to inpaint. `mask` None: the shared mask. `problem`: why it cannot be
    processed, found before opening it (`output` may then be None: a folder that could not be
    listed), and `problem_path` the file it concerns (default: `name`)."""

    name: Path            # how reports name the item
    image: Path | None
    mask: Path | None
    output: Path | None
    problem: str | None = None
    problem_path: Path | None = None

    def error(self) -> ItemError:
        return ItemError(self.problem_path or self.name, self.problem)


# --------------------------------------------------------------------------------------
# Finding the work
# --------------------------------------------------------------------------------------


class Found(NamedTuple):
    """The work `find_items` found: the items, the shared mask file (or None), the mode
    ("single" | "lama" | "folders" | "shared-mask") and the folders it left out (the output
    folder where it lies inside a LaMa-layout input folder)."""

    items: list[Item]
    shared_mask: Path | None
    mode: str
    left_out: list[Path]


def find_items(source, mask, output, image_suffixes=None, keep_ext: bool = False) -> Found:
    """The `Found` work of a job's paths; UsageError when they make no job."""
    source, out = Path(source), Path(output)
    mask = Path(mask) if mask is not None else None
    for path in (source, mask):
        if path is not None and not os.path.exists(path):
            raise UsageError(f"{path}: no such file or directory")
    if mask is None and not source.is_dir():
        raise UsageError("one image needs its mask: jax-refine inpaint IMAGE MASK -o OUT")
    if mask is not None and source.is_file() and mask.is_dir():
        raise UsageError(f"{mask} is a folder but {source} is a file: give a mask file")
    if image_suffixes and mask is not None:
        raise UsageError("--image-suffix applies to the DIR (LaMa layout) mode only")
    if keep_ext and not (mask is not None and source.is_dir()):
        raise UsageError("--keep-ext applies to the IMAGEDIR MASKDIR and IMAGEDIR MASK modes only")
    if source.is_dir() and out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")

    try:
        if mask is None:
            # LaMa's img_suffix is appended as given; a bare extension ("jpg") gets its dot.
            suffixes = tuple("." + s if s.isalnum() else s for s in (image_suffixes or LAMA_IMAGE_SUFFIXES))
            items, left_out = lama_items(source, out, suffixes)
            if not items:
                raise UsageError(f"{source}: no masks (*_mask*.png) found")
            return Found(items, None, "lama", left_out)
        if source.is_dir():
            shared = None if mask.is_dir() else mask
            items = folder_items(source, mask if shared is None else None, out, keep_ext, shared_mask=shared)
            if not items:
                raise UsageError(f"{source}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
            return Found(items, shared, "folders" if shared is None else "shared-mask", [])
    except OSError as e:  # the top folder itself cannot be listed
        raise UsageError(f"{e.filename or source}: cannot list: {e.strerror or e}") from None
    if out.is_dir():
        out = out / (source.stem + ".png")
    output_format(out)
    return Found([Item(source, source, mask, out)], None, "single", [])


def resolved(path: Path) -> Path:
    """The path with symlinks resolved as far as they go (a symlink loop stays as it is)."""
    return Path(os.path.realpath(path))


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _names_by_lowercase(directory: Path, cache: dict) -> dict[str, list[str]]:
    """{name.lower(): [names]} of a directory's entries (computed once per directory)."""
    if directory not in cache:
        index = {}
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(directory)):
                index.setdefault(name.lower(), []).append(name)
        cache[directory] = index
    return cache[directory]


def lama_items(indir: Path, outdir: Path, suffixes) -> tuple[list[Item], list[Path]]:
    """LaMa's layout: masks `*_mask*.png` under indir (recursively, sorted; symlinked folders
    are not followed); a sub-folder that cannot be listed is an item of its own that fails.
    Returns (items, the folders left out: outdir where it lies inside indir)."""
    out_resolved, in_resolved = resolved(outdir), resolved(indir)
    masks, unlisted, left_out = [], [], []
    for root, dirs, files in os.walk(indir, onerror=unlisted.append):
        root = Path(root)
        # Never read our own outputs back as inputs when OUTDIR lies inside DIR.
        # Hidden folders are skipped, as LaMa's glob does.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if out_resolved != in_resolved:
            left_out += [root / d for d in dirs if _inside(resolved(root / d), out_resolved)]
            dirs[:] = [d for d in dirs if root / d not in left_out]
        masks += [root / f for f in files if "_mask" in f and f.lower().endswith(".png")
                  and not f.startswith(".")]
    masks.sort(key=lambda p: str(p))
    items, listings = [], {}
    for mask in masks:
        base = mask.name.rsplit("_mask", 1)[0]
        names = _names_by_lowercase(mask.parent, listings)
        image = None
        for suffix in suffixes:
            found = [n for n in names.get((base + suffix).lower(), ()) if n.startswith(base)]
            found.sort(key=lambda n: n[len(base):] != suffix)  # the exact case first
            if found:
                image = mask.parent / found[0]
                break
        output = outdir / mask.relative_to(indir).with_suffix(".png")
        problem = None
        if image is None:
            tried = "|".join(suffixes)
            problem = f"no image for this mask (looked for {mask.parent / base}{{{tried}}}, any case)"
        items.append(Item(mask, image, mask, output, problem))
    if unlisted and unlisted[0].filename == os.fspath(indir):
        raise unlisted[0]
    return items + [Item(Path(e.filename), None, None, None, f"cannot list this folder: {e.strerror or e}")
                    for e in unlisted], left_out


def _entries(directory: Path) -> list[Path]:
    """The non-hidden entries of a folder that are not folders, sorted (symlink loops, FIFOs
    and the like included: reading them fails with a clear error)."""
    return sorted(p for p in directory.iterdir() if not p.name.startswith(".") and not p.is_dir())


def folder_items(imagedir: Path, maskdir: Path | None, outdir: Path, keep_ext: bool,
                 shared_mask: Path | None = None) -> list[Item]:
    """IMAGEDIR MASKDIR (matched by stem) or IMAGEDIR + one shared MASK file."""
    images = [p for p in _entries(imagedir) if p.suffix.lower() in IMAGE_EXTENSIONS]
    if shared_mask is not None:
        shared = resolved(shared_mask)
        return [Item(image, image, None, outdir / (image.stem + (image.suffix if keep_ext else ".png")))
                for image in images if resolved(image) != shared]
    masks, items = _MaskIndex(maskdir), []
    for image in images:
        output = outdir / (image.stem + (image.suffix if keep_ext else ".png"))
        mask, problem = masks.find(image)
        items.append(Item(image, image, mask, output, problem))
    # A file that is another image's mask (images and masks in one folder) is not an image.
    used = {resolved(item.mask) for item in items if item.mask is not None}
    return [item for item in items if resolved(item.image) not in used]


class _MaskIndex:
    """The *.png files of MASKDIR by stem (`<stem>.png`) and by prefix (`<stem>_mask*.png`)."""

    def __init__(self, maskdir: Path):
        self.maskdir = maskdir
        self.by_stem, self.by_prefix = {}, {}
        for path in _entries(maskdir):
            if not path.name.lower().endswith(".png"):
                continue
            self.by_stem.setdefault(path.stem, []).append(path)
            start = path.name.find("_mask")
            while start >= 0:  # every '_mask' could end the stem of some image
                self.by_prefix.setdefault(path.name[:start], []).append(path)
                start = path.name.find("_mask", start + 1)

    def find(self, image: Path) -> tuple[Path | None, str | None]:
        """(mask, None) or (None, why not)."""
        own = resolved(image)
        exact = [p for p in self.by_stem.get(image.stem, ()) if resolved(p) != own]
        if exact:
            return exact[0], None
        suffixed = [p for p in self.by_prefix.get(image.stem, ()) if resolved(p) != own]
        if len(suffixed) == 1:
            return suffixed[0], None
        if suffixed:
            return None, "several masks match: " + ", ".join(p.name for p in suffixed)
        where = self.maskdir / image.stem
        return None, f"no mask for this image (looked for {where}.png or {where}_mask*.png)"


def _file_key(path: Path):
    """(device, inode) of an existing file, else None: catches hard links and aliases."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_outputs(items: list[Item], extra_inputs=()) -> None:
    """Refuse (UsageError) outputs that would overwrite an input; mark an item whose output
    another item already writes as a problem."""
    inputs = set(extra_inputs)
    for item in items:
        inputs.update(p for p in (item.image, item.mask) if p is not None)
    by_path = {os.path.normcase(resolved(p)): p for p in inputs}
    by_key = {k: p for p in inputs if (k := _file_key(p)) is not None}
    clashes = []
    for item in (item for item in items if item.output is not None):
        key = _file_key(item.output)
        victim = by_path.get(os.path.normcase(resolved(item.output))) or (by_key.get(key) if key else None)
        if victim is not None:
            clashes.append(f"{printable(item.output)} (output for {printable(item.name)}) is the input "
                           f"{printable(victim)}")
    if clashes:
        shown = "\n  ".join(clashes[:10]) + (f"\n  ... and {len(clashes) - 10} more" if len(clashes) > 10 else "")
        raise UsageError(f"refusing to overwrite input files; choose another output:\n  {shown}")
    first = {}
    for item in (item for item in items if item.problem is None):
        target = os.path.normcase(resolved(item.output))
        if target in first:
            item.problem = f"{first[target].name} writes the same output {item.output}"
        else:
            first[target] = item


# --------------------------------------------------------------------------------------
# Reading images
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _reading(path: Path, what: str):
    """Turns any problem while reading the file at `path` into an ItemError naming it."""
    from PIL import UnidentifiedImageError

    try:
        yield
    except FileNotFoundError:
        raise ItemError(path, "no such file") from None
    except UnidentifiedImageError:
        raise ItemError(path, f"cannot read {what}: not an image file of a format PIL reads") from None
    except OSError as e:
        raise ItemError(path, f"cannot read {what}: {e.strerror or e}") from None
    except Exception as e:  # PIL raises SyntaxError, ValueError, ... for damaged files
        raise ItemError(path, f"cannot read {what}: {e}") from None


_FILE_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def _open_regular(path: Path):
    """A binary file object of the regular file at `path` (symlinks followed); OSError for
    anything else (OSError). Opened without blocking, so a FIFO cannot hang the run."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"not a regular file ({_FILE_KINDS.get(stat.S_IFMT(mode), 'special')})")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_image(path: Path, what: str = "image"):
    """A fully read PIL image, or for a 16-bit colour file (RGB, RGBA: PNG, TIFF; grey +
    alpha: PNG), which PIL's modes hold at 8 bits only, uint16 values (H, W, C) with EXIF
    orientation applied (see `colour16`); any problem raises ItemError naming the file."""
    from PIL import Image

    with _reading(path, what), _open_regular(path) as file:
        with Image.open(file) as image:
            deep = colour16.deep_tiles(image)
            image.load()
        if deep is None:
            return image
        file.seek(0)
        with Image.open(file) as second:
            second.tile = deep[0]
            second.load()
        return colour16.combine(images.upright(image), images.upright(second), deep[1])


# Formats whose files may be lossy: JPEG always, WebP unless its bitstream is VP8L, TIFF with
# JPEG compression.
_LOSSY_FORMATS = ("JPEG", "MPO", "JPEG2000")


def stored_as(path: Path | None) -> tuple[bytes | None, bool]:
    """(ICC profile or None, whether the format stores it losslessly) of the image file at
    `path`, from its header; (None, True) for None or a file that cannot be read any more."""
    from PIL import Image

    if path is None:
        return None, True
    try:
        with _open_regular(path) as file, Image.open(file) as image:
            lossy = (image.format in _LOSSY_FORMATS or (image.format == "WEBP" and not _webp_lossless(file))
                     or image.info.get("compression") in ("jpeg", "tiff_jpeg"))
            return image.info.get("icc_profile"), not lossy
    except Exception:  # noqa: BLE001 - gone or changed since it was read: nothing to keep
        return None, True


def _webp_lossless(file) -> bool:
    """Whether a WebP file's (first frame's) bitstream is lossless (a VP8L chunk)."""
    file.seek(12)
    while True:
        head = file.read(8)
        if len(head) < 8:
            return False
        kind, size = head[:4], int.from_bytes(head[4:], "little")
        if kind in (b"VP8L", b"VP8 "):
            return kind == b"VP8L"
        if kind == b"ANMF":  # a frame: its 16-byte header, then its own chunks
            file.seek(16, os.SEEK_CUR)
            continue
        file.seek(size + size % 2, os.SEEK_CUR)


def upright_size(path: Path) -> tuple[int, int]:
    """(h, w) of the image at `path` as `inpaint` sees it (EXIF orientation applied), read
    from the file's header without decoding its pixels; ItemError on any problem."""
    from PIL import Image

    with _reading(path, "image"), _open_regular(path) as file, Image.open(file) as image:
        return images.upright_size(image)


def item_size(item: Item) -> tuple[int, int]:
    """`upright_size` of an item's image; ItemError if the item has a problem."""
    if item.problem is not None:
        raise item.error()
    return upright_size(item.image)


def output_complete(path: Path, size: tuple[int, int]) -> bool:
    """Whether `path` is a regular file (not a symlink) holding a whole image of `size`
    (h, w): it decodes to the end. A partial or foreign file is never taken for a result."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        image = open_image(path)
    except (OSError, ItemError):
        return False
    return (np.shape(image)[:2] if isinstance(image, np.ndarray) else (image.height, image.width)) == tuple(size)


# --------------------------------------------------------------------------------------
# Writing images
# --------------------------------------------------------------------------------------


def output_format(path: Path) -> str:
    """PIL format name from the output's extension; UsageError if none can write it."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise UsageError(f"{path}: cannot tell an image format from the extension {path.suffix!r} "
                         "(use .png, .jpg, .webp, .tif, ...)")
    return fmt


# The modes a result is written in when its format cannot store its own, in order; 16-bit and
# float values are rescaled (PIL's own conversion clips them to 8 bits).
_FALLBACK_MODES = {"F": ("I;16", "L"), "I": ("I;16", "L"), "I;16": ("L",), "LA": ("L",), "RGBA": ("RGB",),
                   "CMYK": ("RGB",), "YCbCr": ("RGB",), "HSV": ("RGB",), "LAB": ("RGB",)}
_FULL_SCALE = {"F": 1.0, "I": 65535.0, "I;16": 65535.0, "L": 255.0}
# ICC colour spaces (header bytes 16-20) and the modes that can carry them
_ICC_SPACES = {b"GRAY": ("L", "LA", "I;16", "I", "F"), b"RGB ": ("RGB", "RGBA"), b"CMYK": ("CMYK",),
               b"YCbr": ("YCbCr",), b"HSV ": ("HSV",), b"Lab ": ("LAB",)}


@functools.lru_cache(maxsize=None)
def _can_store(fmt: str, mode: str) -> bool:
    """Whether PIL writes `mode` images in format `fmt` (tried on a 1 x 1 image)."""
    from PIL import Image

    try:
        Image.new(mode, (1, 1)).save(io.BytesIO(), format=fmt)
    except (OSError, ValueError, KeyError):
        return False
    return True


def _in_mode(image, mode: str):
    """`image` converted to `mode`, rescaling between bit depths (F [0, 1], 16 bits, 8 bits)."""
    from PIL import Image

    if image.mode in ("F", "I", "I;16") and mode in ("I;16", "L"):
        values = np.asarray(image, np.float64) * (_FULL_SCALE[mode] / _FULL_SCALE[image.mode])
        return Image.fromarray(np.clip(np.rint(values), 0, _FULL_SCALE[mode]).astype(
            np.uint16 if mode == "I;16" else np.uint8))
    return image.convert(mode)


def encodable(image, fmt: str):
    """`image` in a mode `fmt` can store: its own, else the first of its `_FALLBACK_MODES`
    that works (a float or 16-bit result in PNG is 16-bit; in JPEG, 8-bit grey)."""
    for mode in (image.mode, *_FALLBACK_MODES.get(image.mode, ())):
        if _can_store(fmt, mode):
            return image if mode == image.mode else _in_mode(image, mode)
    raise ValueError(f"{fmt} cannot store a {image.mode} image")


def _icc_fits(profile: bytes, mode: str) -> bool:
    return mode in _ICC_SPACES.get(bytes(profile[16:20]), ())


PARTIAL_SUFFIX = ".partial"
NAME_MAX = 255  # bytes in a file name (Linux, macOS, Windows)
_PARTIAL_EXTRA = len("..") + 16 + len(PARTIAL_SUFFIX)  # what a temporary name adds to the output's


def partial_stem(name: str) -> str:
    """The part of `write_atomic`'s temporary names that stands for the output `name`: the
    name itself, or, where that would make the temporary name longer than NAME_MAX bytes, its
    first bytes, '~' and 16 hex digits of its SHA-256."""
    raw = os.fsencode(name)
    if len(raw) + _PARTIAL_EXTRA <= NAME_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return os.fsdecode(raw[:NAME_MAX - _PARTIAL_EXTRA - len(digest) - 1]) + "~" + digest


def write_atomic(path: Path, write) -> None:
    """Create `path` by write(binary file) into `.<partial_stem>.<16 random hex>.partial`
    beside it (mode 0666 & ~umask), fsync, then rename: `path` is the old file or the whole
    new one, never a part. The temporary file holds an exclusive lock (flock) until the
    rename, which tells `remove_stale_partials` that its writer is alive. Any exception
    (OSError, KeyboardInterrupt, ...) raised once the name is chosen removes the temporary
    file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        tmp = path.parent / f".{partial_stem(path.name)}.{secrets.token_hex(8)}{PARTIAL_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            with os.fdopen(fd, "wb") as f:
                if not _hold(f.fileno(), tmp):
                    continue  # a cleaner took it in the instant before our lock
                write(f)
                f.flush()
                os.fsync(f.fileno())
                if fcntl is not None:
                    os.replace(tmp, path)  # still locked: a cleaner never sees it unlocked
            if fcntl is None:  # Windows renames no open file
                os.replace(tmp, path)
            return
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    raise OSError(f"{path}: could not hold a temporary file beside it (removed by another process each time)")


def _same_file(fd: int, path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _hold(fd: int, path) -> bool:
    """Lock the open file `fd` (waiting while a cleaner looks at it); whether `path` is still
    that file. Where the file system has no locks, cleaners cannot lock it either, and keep it."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
    return _same_file(fd, path)


def _take_if_abandoned(path) -> bool:
    """Remove the temporary file `path` if no live writer holds its lock; whether it did.
    Without file locks (Windows) none is removed: it may be a live writer's."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: a live writer holds it (or no locks here)
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not _same_file(fd, path):
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def save_atomic(image, path: Path, source: Path | None = None) -> list[str]:
    """Write a PIL image or 16-bit colour values (`open_image`) to `path` atomically, format
    from the extension, in a mode it can store (`encodable`; 16-bit colour as 16-bit PNG or
    TIFF, 8-bit elsewhere). What the input file `source` stores is kept where the format can:
    its ICC profile where it fits the mode written, losslessness (WebP is written lossless
    when the input is lossless). Returns a warning for each thing the output cannot keep
    (bit depth, alpha, losslessness)."""
    from PIL import Image

    fmt = output_format(path)
    icc_profile, lossless = stored_as(source)
    warnings = []
    if isinstance(image, np.ndarray):
        if fmt in colour16.WRITERS:
            data = colour16.WRITERS[fmt](image, icc_profile)
            write_atomic(path, lambda f: f.write(data))
            return warnings
        warnings.append(f"{fmt} stores 8 bits per channel: the 16-bit image is written at 8 bits")
        image = Image.fromarray(np.rint(image / 257.0).astype(np.uint8))
    written = encodable(image, fmt)
    if _BITS.get(written.mode, 8) < _BITS.get(image.mode, 8) or image.mode == "F" != written.mode:
        warnings.append(f"{fmt} cannot store {_DEPTHS[image.mode]} images: written at "
                        f"{_BITS.get(written.mode, 8)} bits")
    if "A" in image.getbands() and "A" not in written.getbands():
        warnings.append(f"{fmt} cannot store transparency: the alpha channel is dropped")
    lossless_webp = fmt == "WEBP" and lossless
    if lossless and fmt in _LOSSY_FORMATS:
        warnings.append(f"{fmt} is lossy: the known pixels of the lossless input are not kept exactly")
    # PNG at zlib level 1, as LaMa's cv2.imwrite writes it: half the time of PIL's level 6
    # for ~10 % larger files (the encoder is the largest part of writing a result)
    params = ({"lossless": True} if lossless_webp else {"quality": 95} if fmt in ("JPEG", "WEBP")
              else {"compress_level": 1} if fmt == "PNG" else {})
    if icc_profile and _icc_fits(icc_profile, written.mode):
        params["icc_profile"] = icc_profile
    write_atomic(path, lambda f: written.save(f, format=fmt, **params))
    return warnings


_BITS = {"F": 32, "I": 16, "I;16": 16}  # bits of a channel's values (mode I holds 0..65535, `images`); else 8
_DEPTHS = {"F": "floating-point", "I": "16-bit", "I;16": "16-bit"}


# `write_atomic`'s temporary files: "." + partial_stem(output name) + "." + 16 random hex digits
# (or 8 of tempfile's characters: what earlier versions made) + ".partial"
_PARTIAL_NAME = re.compile(r"\.(?P<stem>.+)\.(?:[0-9a-f]{16}|[a-z0-9_]{8})" + re.escape(PARTIAL_SUFFIX), re.DOTALL)


def remove_stale_partials(outputs) -> list[Path]:
    """Remove the temporary files that writers which are gone (killed, interrupted) left for
    these output paths: regular files of exactly `write_atomic`'s naming whose lock no
    process holds, never a live writer's (another job's in the same folder), nothing else;
    returns what was removed."""
    by_folder: dict[Path, set[str]] = {}
    for output in outputs:
        by_folder.setdefault(output.parent, set()).add(partial_stem(output.name))
    removed = []
    for folder, stems in by_folder.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:  # not created yet
            continue
        for entry in entries:
            match = _PARTIAL_NAME.fullmatch(entry.name)
            if (match and match["stem"] in stems and entry.is_file(follow_symlinks=False)
                    and _take_if_abandoned(entry.path)):
                removed.append(Path(entry.path))
    return removed
