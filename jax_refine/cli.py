"""The `jax-refine` command: convert LaMa checkpoints and inpaint image files.

    jax-refine inpaint photo.jpg photo_mask.png -o photo_filled.png --model big-lama   # downloaded once
    jax-refine convert big-lama.zip big-lama-jax     # or best.ckpt, big-lama.pt, a .safetensors, LaMa's folder
    jax-refine inpaint lama_dir/ -o out/ --model big-lama          # LaMa's x.png + x_mask*.png layout
    jax-refine inpaint images/ masks/ -o out/ --model big-lama     # matched by file stem
    jax-refine inpaint images/ mask.png -o out/ --model big-lama   # one mask for every image

Exit status: 0 when every item succeeded, 1 when some item failed (each is reported and
skipped, the others proceed), 2 for usage errors (bad arguments or settings, unreadable
model, an output that would overwrite an input). Outputs are written atomically (a temporary
file beside the output, then renamed), so an interrupted run never leaves a partial image.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

from . import __version__
from .api import enable_compilation_cache
from .model import REMAT_POLICIES
from .plan import COMPUTE_DTYPES, SCALE_SCHEDULES, RefineConfig, model_defaults

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Images read in IMAGEDIR modes (PIL reads more, but these are the usual photo formats).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
# LaMa's image suffixes for the `x_mask*.png` layout, tried in this order.
LAMA_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

_REFINE_HELP = {
    "n_iters": "forward passes per refined scale (n_iters - 1 Adam steps)",
    "lr": "Adam learning rate of the refinement",
    "min_side": "scales = min(1 + round(log2(min(h, w) / min_side)), max_scales)",
    "max_scales": "largest number of pyramid scales",
    "px_budget": "largest h * w refined; bigger images are first resized to fit",
    "modulo": "pad each scale to a multiple of this (a multiple of 8)",
    "erosion": "side (odd) of the structuring element eroding the hole for the multi-scale loss",
    "early_stop": "stop a scale once the loss improved by less than this fraction over --early-stop-window "
                  "iterations, e.g. 0.01 (default: off, always --n-iters)",
    "early_stop_window": "iterations the --early-stop improvement is measured over",
    "scale_schedule": "halving: each scale half the next (LaMa); adaptive: coarsest scale at --min-side, "
                      "steps growing towards full resolution",
    "remat": "memory policy of the backward pass: decoder (recompute the decoder, its full-resolution "
             "end in row tiles: least memory), none (store everything), blocks (recompute residual "
             "blocks), all (both); see BENCHMARKS.md for what each saves",
    "tile_pixels": "with --remat decoder or all: output pixels per row tile of the full-resolution decoder tail",
    "compute_dtype": "bfloat16 runs the network in bfloat16, FFTs, losses and Adam in float32 (for GPU/TPU; "
                     "on CPU slower and not smaller)",
}
_REFINE_TYPES = {"early_stop": float}  # fields whose default (None) does not give the type
_REFINE_CHOICES = {"scale_schedule": SCALE_SCHEDULES, "remat": REMAT_POLICIES, "compute_dtype": COMPUTE_DTYPES}


class UsageError(Exception):
    """Bad arguments or settings: reported as `error: ...`, exit status 2."""


class ItemError(Exception):
    """One item cannot be processed: reported as `failed: <path>: <reason>` and skipped."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


# --------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------

_INPAINT_USAGE = """\
jax-refine inpaint IMAGE MASK -o OUT [options]
       jax-refine inpaint DIR -o OUTDIR [options]
       jax-refine inpaint IMAGEDIR MASKDIR -o OUTDIR [options]
       jax-refine inpaint IMAGEDIR MASK -o OUTDIR [options]"""

_INPAINT_EPILOG = """\
modes:
  IMAGE MASK -o OUT        one image; OUT's extension picks the format (an existing
                           directory OUT receives OUT/<image stem>.png)
  DIR -o OUTDIR            LaMa's layout: every *_mask*.png under DIR (recursively) is a
                           mask; its image is the mask path cut at the last '_mask' plus an
                           image suffix (.png, .jpg, .jpeg, any case; see --image-suffix);
                           the result goes to OUTDIR/<mask path relative to DIR>.png
  IMAGEDIR MASKDIR -o OUTDIR
                           each image (png, jpg, jpeg, webp, tif, tiff, bmp) of IMAGEDIR
                           takes the mask MASKDIR/<stem>.png or MASKDIR/<stem>_mask*.png;
                           the result goes to OUTDIR/<stem>.png (see --keep-ext)
  IMAGEDIR MASK -o OUTDIR  the mask file MASK applies to every image of IMAGEDIR

A mask pixel that is nonzero is a hole; the outputs keep every known pixel (exactly, with
lossless formats). A bad item (unreadable image, size mismatch, missing image or mask,
existing output) is reported and skipped. Exit status: 0 all done, 1 some item failed,
2 usage error."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jax-refine", description="Big-LaMa inpainting in JAX with multi-scale feature refinement.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    convert = commands.add_parser(
        "convert", help="convert a LaMa PyTorch checkpoint into a jax-refine checkpoint directory",
        description="Convert a LaMa checkpoint (Lightning best.ckpt, generator state_dict .pth, TorchScript "
                    "big-lama.pt, LaMa's big-lama.zip or its unzipped folder, .safetensors; recognised by content) "
                    "into a jax-refine checkpoint directory. Torch is not needed and no code from the file is run; "
                    "nothing is written unless the conversion succeeds.")
    convert.add_argument("src", metavar="SRC", help="LaMa checkpoint file, big-lama.zip, or LaMa's big-lama folder")
    convert.add_argument("dst", metavar="DST", help="jax-refine checkpoint directory to create (not one holding SRC)")
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it is a previous jax-refine checkpoint")

    inpaint = commands.add_parser(
        "inpaint", help="inpaint an image, or folders of images", usage=_INPAINT_USAGE,
        description="Fill the holes of images with LaMa, refined at several scales (unless --no-refine).",
        epilog=_INPAINT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    inpaint.add_argument("input", metavar="IMAGE|DIR|IMAGEDIR", help="image file, LaMa-layout folder, or image folder")
    inpaint.add_argument("mask", metavar="MASK|MASKDIR", nargs="?", help="mask file or mask folder")
    inpaint.add_argument("-o", "--output", metavar="OUT", required=True, help="output file (one image) or folder")
    inpaint.add_argument("--model", metavar="NAME|PATH",
                         help="big-lama (downloaded, verified and converted on first use, then cached), or a "
                              "converted checkpoint directory (`jax-refine convert`); default: the bundled model")
    inpaint.add_argument("--overwrite", action="store_true", help="replace existing outputs (never inputs)")
    inpaint.add_argument("--image-suffix", metavar="SUFFIX", action="append", dest="image_suffixes",
                         help="DIR mode: suffix appended to the mask path cut at '_mask' to find its image, "
                              "any case (repeatable, tried in order; default: " + " ".join(LAMA_IMAGE_SUFFIXES) + ")")
    inpaint.add_argument("--keep-ext", action="store_true",
                         help="IMAGEDIR modes: write OUTDIR/<stem> with the input's extension instead of .png")
    inpaint.add_argument("--compilation-cache", metavar="DIR",
                         help="persistent JAX compilation cache directory: later runs skip compiling "
                              "(trusted: do not use a directory others can write)")
    inpaint.add_argument("--dry-run", action="store_true",
                         help="print each image's expected peak memory (jax_refine.estimate) and write nothing")
    inpaint.add_argument("--report", action="store_true",
                         help="print a refinement report per image: size, iterations, loss curve and time per scale")
    inpaint.add_argument("--report-plot", action="store_true",
                         help="also save the loss curves as OUT.report.png beside each output (needs matplotlib)")
    inpaint.add_argument("--crop-margin", metavar="PX", type=int,
                         help="inpaint each group of nearby holes in a crop with PX pixels of context around it "
                              "(small holes in large images; PX >= the hole size is advisable); default: whole image")
    inpaint.add_argument("--batch-size", metavar="N", type=int, default=1,
                         help="folder modes: inpaint up to N images of one padded size together, split over all JAX "
                              "devices (data parallel); a failing batch is retried image by image (default: 1)")
    inpaint.add_argument("-q", "--quiet", action="store_true",
                         help="no progress output; the summary only when something failed")

    refine = inpaint.add_argument_group(
        "refinement (RefineConfig; ignored with --no-refine)",
        "Unset options take the model's recommended settings (its refine_defaults), which for LaMa's own "
        "models are LaMa's defaults, shown here.")
    refine.add_argument("--no-refine", dest="refine", action="store_false",
                        help="LaMa's plain single-pass prediction, no multi-scale refinement")
    defaults = RefineConfig()
    for field in dataclasses.fields(RefineConfig):
        default = getattr(defaults, field.name)
        option = "--" + field.name.replace("_", "-")
        if field.name == "full_size_output":
            refine.add_argument(
                "--reduced-output", dest="full_size_output", action="store_false", default=None,
                help="when the image exceeds --px-budget, write the reduced-size result (as LaMa does) "
                     "instead of upscaling the fill into the full-size image")
        elif isinstance(default, bool):  # a future boolean setting
            refine.add_argument(option, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"RefineConfig.{field.name} (default: {default})")
        else:
            kind = _REFINE_TYPES.get(field.name, type(default))
            text = _REFINE_HELP.get(field.name, f"RefineConfig.{field.name}")
            choices = _REFINE_CHOICES.get(field.name)
            refine.add_argument(option, dest=field.name, type=kind, default=None, choices=choices,
                                metavar="{" + ",".join(choices) + "}" if choices else kind.__name__.upper(),
                                help=text if "default:" in text else text + f" (default: {default})")
    return parser


def refine_config_from_args(args, model=None) -> RefineConfig:
    """The RefineConfig of the parsed options over the model's recommended settings (LaMa's
    defaults without a model); invalid values raise UsageError."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(RefineConfig)
              if getattr(args, field.name) is not None}
    try:
        base = RefineConfig() if model is None else model_defaults(model)
        return dataclasses.replace(base, **values)
    except ValueError as e:
        message = str(e).replace("invalid RefineConfig: ", "")
        for name in values:  # name the options, not the dataclass fields
            message = message.replace(f"{name} must", f"--{name.replace('_', '-')} must")
        raise UsageError(f"invalid refinement settings: {message}") from None


# --------------------------------------------------------------------------------------
# Finding the work: items
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Item:
    """One image to inpaint. `mask` None: the shared mask. `problem`: known not processable."""

    name: Path            # how reports name the item
    image: Path | None
    mask: Path | None
    output: Path
    problem: str | None = None


def _names_by_lowercase(directory: Path, cache: dict) -> dict[str, list[str]]:
    """{name.lower(): [names]} of a directory's entries (computed once per directory)."""
    if directory not in cache:
        index = {}
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(directory)):
                index.setdefault(name.lower(), []).append(name)
        cache[directory] = index
    return cache[directory]


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def lama_items(indir: Path, outdir: Path, suffixes) -> list[Item]:
    """LaMa's layout: masks `*_mask*.png` under indir (recursively, sorted); see the epilog."""
    out_resolved = outdir.resolve()
    masks = []
    for root, dirs, files in os.walk(indir):
        root = Path(root)
        # Never read our own outputs back as inputs when OUTDIR lies inside DIR.
        # Hidden folders are skipped, as LaMa's glob does.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (
            out_resolved == indir.resolve() or not _inside((root / d).resolve(), out_resolved)))
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
    return items


def _image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def folder_items(imagedir: Path, maskdir: Path | None, outdir: Path, keep_ext: bool,
                 shared_mask: Path | None = None) -> list[Item]:
    """IMAGEDIR MASKDIR (matched by stem) or IMAGEDIR + one shared MASK file."""
    images = _image_files(imagedir)
    if shared_mask is not None:
        shared = shared_mask.resolve()
        return [Item(image, image, None, outdir / (image.stem + (image.suffix if keep_ext else ".png")))
                for image in images if image.resolve() != shared]
    masks, items = _MaskIndex(maskdir), []
    for image in images:
        output = outdir / (image.stem + (image.suffix if keep_ext else ".png"))
        mask, problem = masks.find(image)
        items.append(Item(image, image, mask, output, problem))
    # A file that is another image's mask (images and masks in one folder) is not an image.
    used = {item.mask.resolve() for item in items if item.mask is not None}
    return [item for item in items if item.image.resolve() not in used]


class _MaskIndex:
    """The *.png files of MASKDIR by stem (`<stem>.png`) and by prefix (`<stem>_mask*.png`)."""

    def __init__(self, maskdir: Path):
        self.maskdir = maskdir
        self.by_stem, self.by_prefix = {}, {}
        for path in sorted(maskdir.iterdir()):
            if not path.name.lower().endswith(".png") or path.name.startswith(".") or not path.is_file():
                continue
            self.by_stem.setdefault(path.stem, []).append(path)
            start = path.name.find("_mask")
            while start >= 0:  # every '_mask' could end the stem of some image
                self.by_prefix.setdefault(path.name[:start], []).append(path)
                start = path.name.find("_mask", start + 1)

    def find(self, image: Path) -> tuple[Path | None, str | None]:
        """(mask, None) or (None, why not)."""
        own = image.resolve()
        exact = [p for p in self.by_stem.get(image.stem, ()) if p.resolve() != own]
        if exact:
            return exact[0], None
        suffixed = [p for p in self.by_prefix.get(image.stem, ()) if p.resolve() != own]
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


def check_outputs(items: list[Item], overwrite: bool, extra_inputs=()) -> None:
    """Refuse (UsageError) outputs that would overwrite an input; mark clashing or existing
    outputs as item problems."""
    inputs = set(extra_inputs)
    for item in items:
        inputs.update(p for p in (item.image, item.mask) if p is not None)
    resolved = {os.path.normcase(p.resolve()): p for p in inputs}
    keys = {k: p for p in inputs if (k := _file_key(p)) is not None}
    clashes = []
    for item in items:
        target = os.path.normcase(item.output.resolve())
        key = _file_key(item.output)
        victim = resolved.get(target) or (keys.get(key) if key is not None else None)
        if victim is not None:
            clashes.append(f"{item.output} (output for {item.name}) is the input {victim}")
    if clashes:
        shown = "\n  ".join(clashes[:10]) + (f"\n  ... and {len(clashes) - 10} more" if len(clashes) > 10 else "")
        raise UsageError(f"refusing to overwrite input files; choose another output:\n  {shown}")
    first = {}
    for item in items:
        if item.problem is not None:
            continue
        target = os.path.normcase(item.output.resolve())
        if target in first:
            item.problem = f"{first[target].name} writes the same output {item.output}"
        else:
            first[target] = item
            if not overwrite and os.path.lexists(item.output):
                item.problem = f"output {item.output} exists (pass --overwrite to replace it)"


# --------------------------------------------------------------------------------------
# Reading and writing images
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _reading(path: Path):
    """Turns any problem while reading the image at `path` into an ItemError naming it."""
    try:
        yield
    except FileNotFoundError:
        raise ItemError(path, "no such file") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for damaged files
        raise ItemError(path, f"cannot read image: {e}") from None


def open_image(path: Path):
    """A fully read PIL image; any problem raises ItemError naming the file."""
    from PIL import Image

    with _reading(path), Image.open(path) as image:
        image.load()
    return image


EXIF_ORIENTATION = 0x0112


def upright_size(path: Path) -> tuple[int, int]:
    """(h, w) of the image at `path` as `inpaint` sees it (EXIF orientation applied), read
    from the file's header without decoding its pixels; ItemError on any problem."""
    from PIL import Image

    with _reading(path), Image.open(path) as image:
        w, h = image.size
        transposed = image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # rotated by 90 or 270
    return (w, h) if transposed else (h, w)


def item_size(item: Item) -> tuple[int, int]:
    """`upright_size` of an item's image; ItemError if the item has a problem."""
    if item.problem is not None:
        raise ItemError(item.name, item.problem)
    return upright_size(item.image)


def output_format(path: Path) -> str:
    """PIL format name from the output's extension; UsageError if none can write it."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise UsageError(f"{path}: cannot tell an image format from the extension {path.suffix!r} "
                         "(use .png, .jpg, .webp, .tif, ...)")
    return fmt


_UMASK = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def save_atomic(image, path: Path, icc_profile: bytes | None = None) -> None:
    """Write `image` to `path` via a temporary file in the same directory and os.replace."""
    fmt = output_format(path)
    params = {}
    if icc_profile:
        params["icc_profile"] = icc_profile
    if fmt in ("JPEG", "WEBP"):
        params["quality"] = 95
        if fmt == "JPEG" and image.mode not in ("L", "RGB", "CMYK"):
            image = image.convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=fmt, **params)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------
# Progress and reports
# --------------------------------------------------------------------------------------


def _use_bars() -> bool:
    """Progress bars only on a terminal; logs get one line per item instead."""
    return sys.stderr.isatty()


class Reporter:
    """Progress (tqdm bars on a terminal, else one line per item; nothing with --quiet),
    failures, and the final summary."""

    def __init__(self, total: int, *, quiet: bool, outer_bar: bool):
        self.total, self.quiet = total, quiet
        self.bars = not quiet and _use_bars()
        self.done, self.failures = 0, []
        self.outer = self.inner = None
        self._scale = None  # (scale, last iteration, n_iters) of the refined scale in progress
        if self.bars:
            from tqdm.auto import tqdm

            self._tqdm = tqdm
            if outer_bar:
                self.outer = tqdm(total=total, unit="img", desc="images", file=sys.stderr, dynamic_ncols=True)

    def _write(self, line):
        if self.bars:
            self._tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def progress_callback(self):
        """The `progress=` callable for one inpaint call (None without bars); the inner bar
        over the refined iterations lives until `end_item`."""
        if not self.bars:
            return None

        def callback(event):
            if self.inner is None:
                self.inner = self._tqdm(total=(event.n_scales - 1) * event.n_iters, unit="it", leave=False,
                                        file=sys.stderr, dynamic_ncols=True,
                                        position=1 if self.outer is not None else 0)
            if event.iteration is None:
                self._close_scale()
                h, w = event.size
                self.inner.set_description(f"scale {event.scale + 1}/{event.n_scales} {w}x{h}")
            else:
                self.inner.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
                self.inner.update(1)
                self._scale = (event.scale, event.iteration, event.n_iters)

        return callback

    def _close_scale(self):
        """A scale that stopped early (RefineConfig.early_stop): say so and complete its part of the bar."""
        if self._scale is not None and self._scale[1] < self._scale[2]:
            scale, used, n_iters = self._scale
            self._write(f"scale {scale + 1}: stopped early after {used} of {n_iters} iterations")
            self.inner.update(n_iters - used)
        self._scale = None

    def end_item(self):
        if self.inner is not None:
            self._close_scale()
            self.inner.close()
            self.inner = None

    def succeeded(self, item: Item, seconds: float):
        self.done += 1
        if self.outer is not None:
            self.outer.update(1)
        elif not self.quiet and not self.bars:
            self._write(f"[{self.done + len(self.failures)}/{self.total}] {item.output} ({seconds:.1f} s)")

    def failed(self, path, reason):
        self.failures.append((path, reason))
        if self.outer is not None:
            self.outer.update(1)
        self._write(f"failed: {path}: {reason}")

    def close(self):
        for bar in (self.inner, self.outer):
            if bar is not None:
                bar.close()
        self.inner = self.outer = None

    def report(self, item: Item, info):
        """The refinement report of one image (stdout)."""
        print(f"{item.output}: {format_report(info)}")

    def summary(self):
        if self.quiet and not self.failures:
            return
        print(f"{self.done} done, {len(self.failures)} failed")
        for path, reason in self.failures:
            print(f"  {path}: {reason}")


def format_report(info) -> str:
    """Multi-line text of an InpaintInfo: per scale its size, iterations, losses and time."""
    if not info.refined:
        return "plain prediction (no refinement)"
    lines = [f"refined at {info.work_size[1]}x{info.work_size[0]}, {len(info.scales)} scale(s)"]
    for index, scale in enumerate(info.scales):
        head = f"  scale {index + 1}: {scale.size[1]}x{scale.size[0]}, {scale.seconds:.1f} s"
        if not scale.refined:
            lines.append(head + ", plain forward pass")
            continue
        curve = " ".join(f"{loss:.4f}" for loss in scale.losses.mean(axis=1))
        lines.append(f"{head}, {scale.iterations} iterations, loss {curve}")
    return "\n".join(lines)


def report_plot(info, path: Path) -> None:
    """Save the loss curve of every refined scale as a PNG (matplotlib, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for index, scale in enumerate(info.scales):
        if scale.refined:
            ax.plot(range(1, scale.iterations + 1), scale.losses.mean(axis=1), marker="o",
                    label=f"scale {index + 1} ({scale.size[1]}x{scale.size[0]}, {scale.seconds:.1f} s)")
    ax.set_xlabel("forward pass")
    ax.set_ylabel("refinement loss")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


def run_convert(args) -> int:
    from .convert import convert, read_metadata
    from .model import LamaConfig, abstract_model, count_parameters
    from ._torch_pickle import CheckpointError

    try:
        dst = convert(args.src, args.dst, overwrite=args.overwrite)
    except (CheckpointError, FileExistsError) as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{e.filename or args.src}: {e.strerror or e}") from None
    config = LamaConfig(**read_metadata(dst)["config"])
    n = count_parameters(abstract_model(config))
    fields = ", ".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config))
    print(f"converted {args.src}: LamaConfig({fields}), {n:,} parameters -> {dst}")
    return EXIT_OK


def _plan(args) -> tuple[list[Item], Path | None, str]:
    """(items, shared mask file or None, mode) from the positional arguments."""
    source, out = Path(args.input), Path(args.output)
    mask = Path(args.mask) if args.mask is not None else None
    for path in (source, mask):
        if path is not None and not path.exists():
            raise UsageError(f"{path}: no such file or directory")
    if mask is None and not source.is_dir():
        raise UsageError("one image needs its mask: jax-refine inpaint IMAGE MASK -o OUT")
    if mask is not None and source.is_file() and mask.is_dir():
        raise UsageError(f"{mask} is a folder but {source} is a file: give a mask file")
    if args.image_suffixes and not (mask is None):
        raise UsageError("--image-suffix applies to the DIR (LaMa layout) mode only")
    if args.keep_ext and not (mask is not None and source.is_dir()):
        raise UsageError("--keep-ext applies to the IMAGEDIR MASKDIR and IMAGEDIR MASK modes only")
    if source.is_dir() and out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")

    if mask is None:
        # LaMa's img_suffix is appended as given; a bare extension ("jpg") gets its dot.
        suffixes = tuple("." + s if s.isalnum() else s for s in (args.image_suffixes or LAMA_IMAGE_SUFFIXES))
        items, mode = lama_items(source, out, suffixes), "lama"
        if not items:
            raise UsageError(f"{source}: no masks (*_mask*.png) found")
        return items, None, mode
    if source.is_dir() and mask.is_dir():
        items = folder_items(source, mask, out, args.keep_ext)
        if not items:
            raise UsageError(f"{source}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        return items, None, "folders"
    if source.is_dir():
        items = folder_items(source, None, out, args.keep_ext, shared_mask=mask)
        if not items:
            raise UsageError(f"{source}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        return items, mask, "shared-mask"
    if out.is_dir():
        out = out / (source.stem + ".png")
    output_format(out)
    return [Item(source, source, mask, out)], None, "single"


def _load_model(path):
    from .api import resolve_model
    from ._torch_pickle import CheckpointError

    try:
        return resolve_model(path)
    except FileNotFoundError as e:
        if path is None:
            raise UsageError("no bundled default model in this installation: pass --model big-lama") from None
        raise UsageError(str(e)) from None
    except (CheckpointError, OSError) as e:
        raise UsageError(str(e)) from None


def run_inpaint(args) -> int:
    config = refine_config_from_args(args)
    if args.crop_margin is not None and args.crop_margin < 0:
        raise UsageError(f"--crop-margin must be >= 0, got {args.crop_margin}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.batch_size > 1 and args.crop_margin is not None:
        raise UsageError("--crop-margin inpaints crops one by one: it cannot be combined with --batch-size")
    items, shared_mask_path, mode = _plan(args)
    if not args.dry_run:
        check_outputs(items, args.overwrite, extra_inputs=[shared_mask_path] if shared_mask_path else [])
    shared_mask = None
    if shared_mask_path is not None:
        try:
            shared_mask = open_image(shared_mask_path)
        except ItemError as e:
            raise UsageError(str(e)) from None
    if args.report_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--report-plot needs matplotlib (pip install matplotlib)") from None
    if args.compilation_cache:
        enable_compilation_cache(args.compilation_cache)
    model = None
    if any(item.problem is None for item in items):
        model = _load_model(args.model)
        config = refine_config_from_args(args, model)
        if args.refine and config.modulo % model.config.modulo:
            raise UsageError(f"--modulo {config.modulo} must be a multiple of the model's {model.config.modulo}")

    if args.dry_run:
        return dry_run(items, model, args.refine, config)
    reporter = Reporter(len(items), quiet=args.quiet, outer_bar=mode != "single")
    run = _ItemRunner(args, model, config, shared_mask, reporter)
    try:
        if args.batch_size == 1:
            for item in items:
                run.one(item)
        else:
            run.batched(items, args.batch_size)
    finally:
        reporter.close()
    reporter.summary()
    return EXIT_FAILED if reporter.failures else EXIT_OK


class _ItemRunner:
    """Inpaints items one at a time or in batches of one `batch_key`, reporting each."""

    def __init__(self, args, model, config: RefineConfig, shared_mask, reporter: Reporter):
        self.args, self.model, self.config, self.shared_mask, self.reporter = args, model, config, shared_mask, reporter

    def _open(self, item: Item):
        if item.problem is not None:
            raise ItemError(item.name, item.problem)
        return open_image(item.image), self.shared_mask if item.mask is None else open_image(item.mask)

    def one(self, item: Item, opened=None) -> None:
        from .api import inpaint

        start = time.perf_counter()
        try:
            image, mask = opened or self._open(item)
            try:
                result, info = inpaint(image, mask, self.model, refine=self.args.refine, config=self.config,
                                       progress=self.reporter.progress_callback(), return_info=True,
                                       crop_margin=self.args.crop_margin)
            except ValueError as e:  # size mismatch, unsupported image kind
                raise ItemError(item.image, str(e)) from None
            except Exception as e:  # e.g. out of memory on a huge image: skip it, go on
                raise ItemError(item.image, f"inpainting failed: {type(e).__name__}: {e}") from None
        except ItemError as e:
            self.reporter.end_item()
            self.reporter.failed(e.path, e.reason)
            return
        self._finish(item, image, result, info, time.perf_counter() - start)

    def batched(self, items: list[Item], batch_size: int) -> None:
        """Group the items by `batch_key` (the same padded size; refined, at every pyramid
        level) from their files' headers, then open and run one batch of batch_size at a time,
        data-parallel over all devices, so one batch of images is in memory at a time; a batch
        that fails is retried image by image, so one bad image fails alone."""
        from .api import batch_key

        buckets: dict[tuple, list[Item]] = {}
        for item in items:
            try:
                size = item_size(item)
            except ItemError as e:
                self.reporter.failed(e.path, e.reason)
                continue
            buckets.setdefault(batch_key(size, self.args.refine, self.model, self.config), []).append(item)
        for bucket in buckets.values():
            for start in range(0, len(bucket), batch_size):
                opened = []
                for item in bucket[start:start + batch_size]:
                    try:
                        opened.append((item, *self._open(item)))
                    except ItemError as e:
                        self.reporter.failed(e.path, e.reason)
                if opened:
                    self._run_batch(opened)

    def _run_batch(self, bucket) -> None:
        from .api import inpaint_batch

        start = time.perf_counter()
        try:
            results, infos = inpaint_batch([image for _, image, _ in bucket], [mask for *_, mask in bucket],
                                           self.model, refine=self.args.refine, config=self.config,
                                           batch_size=len(bucket), progress=self.reporter.progress_callback(),
                                           return_info=True)
        except Exception:  # noqa: BLE001 - find the culprit image by image
            self.reporter.end_item()
            for item, image, mask in bucket:
                self.one(item, (image, mask))
            return
        seconds = (time.perf_counter() - start) / len(bucket)
        for (item, image, _), result, info in zip(bucket, results, infos):
            self._finish(item, image, result, info, seconds)

    def _finish(self, item: Item, image, result, info, seconds: float) -> None:
        """Write one result atomically and report it."""
        args, reporter = self.args, self.reporter
        try:
            try:
                save_atomic(result, item.output, image.info.get("icc_profile"))
            except UsageError as e:  # no writer for this extension (--keep-ext)
                raise ItemError(item.output, str(e).split(": ", 1)[-1]) from None
            except (OSError, ValueError, KeyError) as e:
                raise ItemError(item.output, f"cannot write: {e}") from None
        except ItemError as e:
            reporter.end_item()
            reporter.failed(e.path, e.reason)
            return
        reporter.end_item()
        reporter.succeeded(item, seconds)
        if args.report:
            reporter.report(item, info)
        if args.report_plot and info.scales:
            try:
                report_plot(info, item.output.with_name(item.output.name + ".report.png"))
            except OSError as e:
                reporter.failed(item.output, f"cannot write the report plot: {e}")


def dry_run(items: list[Item], model, refine: bool, config: RefineConfig) -> int:
    """Print the expected peak memory of every item (one compilation per distinct size)."""
    from .api import estimate

    by_size, failed = {}, 0
    for item in items:
        try:
            size = item_size(item)
        except ItemError as e:
            failed += 1
            print(f"failed: {e.path}: {e.reason}", file=sys.stderr)
            continue
        if size not in by_size:
            by_size[size] = estimate(size, model, refine=refine, config=config)
        print(f"{item.image}: {size[1]}x{size[0]}: {by_size[size]}")
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the `jax-refine` command with `argv` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help, --version, or a usage error (already printed)
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
    try:
        if args.command == "convert":
            return run_convert(args)
        return run_inpaint(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
