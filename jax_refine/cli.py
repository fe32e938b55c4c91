"""The `jax-refine` command: convert LaMa checkpoints and inpaint image files.

    jax-refine inpaint photo.jpg photo_mask.png -o photo_filled.png --model big-lama   # downloaded once
    jax-refine convert big-lama.zip big-lama-jax     # or best.ckpt, big-lama.pt, a .safetensors, LaMa's folder
    jax-refine inpaint lama_dir/ -o out/ --model big-lama          # LaMa's x.png + x_mask*.png layout
    jax-refine inpaint images/ masks/ -o out/ --model big-lama     # matched by file stem
    jax-refine inpaint images/ mask.png -o out/ --model big-lama   # one mask for every image
    jax-refine inpaint lama_dir/ -o out/ --batch-size 8 --distributed --skip-existing  # on every host of a pod

Exit status: 0 when every item succeeded, 1 when some item failed (each is reported and
skipped, the others proceed), 2 for usage errors (bad arguments or settings, unreadable
model, an output that would overwrite an input), 130 after Ctrl-C (SIGINT), 143 after
SIGTERM (both finish or remove the writes in progress and print the summary so far).
Outputs are written atomically (a temporary file beside the output, then renamed), so an
interrupted run never leaves a partial image. Names are printed with `files.printable`.
The work itself (items, batches, the split over processes, the pipelined loader) is
`jax_refine.jobs`; this module parses the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import signal
import sys
import threading
from pathlib import Path

from . import __version__
from ._platform import configure_cpu
from .compile_cache import MAX_BYTES, disable_compilation_cache, enable_compilation_cache
from .files import LAMA_IMAGE_SUFFIXES, ItemError, UsageError, find_items, item_size, printable
from .jobs import JobInterrupted, JobSettings, Terminated, run_items, start_distributed
from .model import REMAT_POLICIES
from .plan import COMPUTE_DTYPES, SCALE_SCHEDULES, RefineConfig, resolve_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

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

masks: a pixel's value is its grey level (colour: its luma); a mask with an alpha channel
that is not fully opaque everywhere (strokes on a transparent layer) is read by its alpha
instead. A value above --mask-threshold (default 0, LaMa's rule: any nonzero pixel) is a
hole; a hole over half the image is warned about. The outputs keep every known pixel
(exactly, with lossless formats), in the input's mode where the format can store it
(16-bit grey and colour as 16-bit PNG or TIFF, float TIFF as float TIFF, or as 16-bit PNG,
lossless WebP as lossless WebP); one warning per item says what its output's format cannot
keep (JPEG: 8 bits, no alpha, lossy).

A bad item (unreadable image, size mismatch, missing image or mask, symlink loop, FIFO,
existing output) is reported and skipped. Resume an interrupted run with --skip-existing:
complete outputs are kept (a file is complete when it decodes to the end at its size), the
temporary files the interrupted run left are removed. Exit status: 0 all done, 1 some item
failed, 2 usage error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM: like Ctrl-C, the
writes in progress are finished or removed and the summary so far is printed).

--distributed (TPU pods, GPU clusters): start the same command on every host; each process
inpaints its share (whole batches, balanced by pixels) on its local devices and writes
OUTDIR/.jax-refine/process-I-of-N.json; process 0 prints the summary of the whole job."""


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
    inpaint.add_argument("--skip-existing", action="store_true",
                         help="keep the outputs that are complete and inpaint the rest (resume an interrupted run)")
    inpaint.add_argument("--mask-threshold", metavar="T", type=float, default=0.0,
                         help="a mask value above T times full scale is a hole, 0 <= T < 1 (default: 0, LaMa's "
                              "nonzero rule; e.g. 0.5 for grey, anti-aliased or JPEG masks)")
    inpaint.add_argument("--image-suffix", metavar="SUFFIX", action="append", dest="image_suffixes",
                         help="DIR mode: suffix appended to the mask path cut at '_mask' to find its image, "
                              "any case (repeatable, tried in order; default: " + " ".join(LAMA_IMAGE_SUFFIXES) + ")")
    inpaint.add_argument("--keep-ext", action="store_true",
                         help="IMAGEDIR modes: write OUTDIR/<stem> with the input's extension instead of .png")
    cache = inpaint.add_mutually_exclusive_group()
    cache.add_argument("--compilation-cache", metavar="DIR",
                       help="persistent JAX compilation cache directory, uncapped: later runs skip compiling "
                            "(trusted: do not use a directory others can write; default: $JAX_REFINE_HOME/xla, "
                            f"capped at {MAX_BYTES / 2**30:g} GiB)")
    cache.add_argument("--no-compilation-cache", action="store_true",
                       help="compile everything anew, keep nothing (also: JAX_REFINE_COMPILATION_CACHE=0)")
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
                         help="folder modes: inpaint up to N images of one padded size together, split over this "
                              "process's JAX devices (data parallel); a failing batch is retried image by image "
                              "(default: 1)")
    inpaint.add_argument("-q", "--quiet", action="store_true",
                         help="no progress, failure or warning lines; the summary only when something failed")

    hosts = inpaint.add_argument_group("several processes (jax.distributed)")
    hosts.add_argument("--distributed", action="store_true",
                       help="split the work over the processes of jax.distributed.initialize() (Cloud TPU, SLURM, "
                            "Open MPI, ... are detected; elsewhere give the three options below)")
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    hosts.add_argument("--num-processes", metavar="N", type=int, help="number of processes")
    hosts.add_argument("--process-id", metavar="I", type=int, help="this process's index, 0 .. N-1")

    refine = inpaint.add_argument_group(
        "refinement (RefineConfig; ignored with --no-refine)",
        "Unset options take the model's recommended settings (its refine_defaults), which for LaMa's own "
        "models are LaMa's defaults, shown here.")
    refine.add_argument("--no-refine", dest="method", action="store_const", const="plain", default="refine",
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
    defaults without a model; `plan.resolve_config`); invalid values raise UsageError."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(RefineConfig)
              if getattr(args, field.name) is not None}
    try:
        return resolve_config(model, None, **values)
    except ValueError as e:
        message = str(e).replace("invalid RefineConfig: ", "")
        for name in values:  # name the options, not the dataclass fields
            message = message.replace(f"{name} must", f"--{name.replace('_', '-')} must")
        raise UsageError(f"invalid refinement settings: {message}") from None


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


def run_convert(args) -> int:
    from .checkpoint import CheckpointError, abstract_generator, config_from_record, read_metadata
    from .convert import convert
    from .model import count_parameters

    try:
        dst = convert(args.src, args.dst, overwrite=args.overwrite)
    except (CheckpointError, FileExistsError) as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{e.filename or args.src}: {e.strerror or e}") from None
    config = config_from_record(read_metadata(dst)["config"], str(dst))
    n = count_parameters(abstract_generator(config))
    fields = ", ".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config))
    print(f"converted {args.src}: {type(config).__name__}({fields}), {n:,} parameters -> {dst}")
    return EXIT_OK


def _load_model(path):
    from .api import resolve_model
    from .checkpoint import CheckpointError

    try:
        return resolve_model(path)
    except FileNotFoundError as e:
        if path is None:
            raise UsageError("no bundled default model in this installation: pass --model big-lama") from None
        raise UsageError(str(e)) from None
    except (CheckpointError, OSError) as e:
        raise UsageError(str(e)) from None


def _job_settings(args) -> JobSettings:
    """The JobSettings of the parsed options; invalid values raise UsageError naming the options."""
    try:
        return JobSettings(args.method, None, args.mask_threshold, args.batch_size,
                           args.crop_margin, args.overwrite, args.skip_existing, args.report, args.report_plot)
    except UsageError as e:
        message = str(e)
        for name in ("batch_size", "crop_margin", "mask_threshold", "overwrite", "skip_existing"):
            message = message.replace(name, "--" + name.replace("_", "-"))
        raise UsageError(message) from None


def run_inpaint(args) -> int:
    settings = _job_settings(args)
    if args.dry_run and args.distributed:
        raise UsageError("--dry-run estimates on one process: drop --distributed")
    if (args.coordinator or args.num_processes is not None or args.process_id is not None) and not args.distributed:
        raise UsageError("--coordinator, --num-processes and --process-id need --distributed")
    if args.report_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--report-plot needs matplotlib (pip install matplotlib)") from None
    if args.distributed:  # before anything starts JAX
        start_distributed(args.coordinator, args.num_processes, args.process_id)
    items, shared_mask, mode, left_out = find_items(args.input, args.mask, args.output, args.image_suffixes,
                                                    args.keep_ext)
    if args.compilation_cache:
        enable_compilation_cache(args.compilation_cache)
    elif args.no_compilation_cache:
        disable_compilation_cache()
    model = _load_model(args.model) if any(item.problem is None for item in items) else None
    # unset refinement options take the model's recommended settings
    settings = dataclasses.replace(settings, config=refine_config_from_args(args, model))
    if args.dry_run:
        return dry_run(items, model, settings.method, settings.config)
    summary = run_items(items, model, settings, shared_mask=shared_mask, distributed=args.distributed,
                        verbose=not args.quiet, report_folder=None if mode == "single" else Path(args.output),
                        outer_bar=mode != "single", left_out=left_out)
    if summary.process == 0 and (summary.failures or not args.quiet):
        print(summary)
    return EXIT_FAILED if summary.failures else EXIT_OK


def dry_run(items, model, method: str, config: RefineConfig) -> int:
    """Print the expected peak memory of every item (one compilation per distinct size)."""
    from .api import estimate

    by_size, failed = {}, 0
    for item in items:
        try:
            size = item_size(item)
        except ItemError as e:
            failed += 1
            print(f"failed: {printable(e.path)}: {printable(e.reason)}", file=sys.stderr)
            continue
        if size not in by_size:
            by_size[size] = estimate(size, model, method=method, config=config)
        print(f"{printable(item.image)}: {size[1]}x{size[0]}: {by_size[size]}")
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the `jax-refine` command with `argv` (default: sys.argv[1:]); returns the exit status."""
    configure_cpu()  # before JAX starts its backend (docs/xla-cpu.md §1)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help, --version, or a usage error (already printed)
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
    for stream in (sys.stdout, sys.stderr):  # names the terminal's encoding cannot show, escaped
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    try:
        with _sigterm_stops_the_job():
            return run_convert(args) if args.command == "convert" else run_inpaint(args)
    except UsageError as e:
        print("error: " + "\n".join(map(printable, str(e).split("\n"))), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated) or (isinstance(e, JobInterrupted) and e.terminated)
        if isinstance(e, JobInterrupted):
            print(e.summary)
        print("terminated (SIGTERM)" if terminated else "interrupted", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def command(argv: list[str] | None = None) -> int:
    """The `jax-refine` executable and `python -m jax_refine`: `main`, with the garbage
    collector kept off what lives until exit anyway. Everything imported so far, and at the end
    everything the run made, is moved to the collector's permanent generation (`gc.freeze`), so
    its collections during the run, and the interpreter's at exit (0.35 s of a 4 s command, see
    BENCHMARKS.md), no longer walk it. Not for callers that go on running: they call `main`."""
    gc.freeze()
    status = main(argv)
    gc.freeze()
    return status


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_stops_the_job():
    """SIGTERM (what SLURM, Kubernetes and TPU preemption send first) raises `Terminated` in
    the main thread, as SIGINT raises KeyboardInterrupt; the previous handler afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(command())
