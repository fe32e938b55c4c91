"""jax-refine checkpoints: the native format, written atomically and read strictly.

A checkpoint is a directory:
  params/          orbax tree of the Lama state (parameters and BatchNorm statistics)
  jax_refine.json  {"format", "format_version", "config" (the generator config, refine_defaults
                   included, and its "architecture": a key of ARCHITECTURES, "ffc_resnet"
                   when absent), "source" (where the weights came from), "converter_version",
                   "params_sha256" (`params_digest` of params/; older checkpoints lack it)}

Reading is strict, because a checkpoint is an input like any other file: jax_refine.json
must stay within `CONFIG_LIMITS` and `REFINE_DEFAULT_LIMITS` (checked before anything is
built), the stored shapes must match the configuration (checked from orbax's metadata,
before any array is read), the parameters must match their recorded digest and be finite.
The digest is verified on every load: hashing 200 MB took 0.22 s on the development
machine (SHA extensions, shared CPUs), small beside reading Big-LaMa's 205 MB.

Outputs appear atomically: a checkpoint is assembled in a locked `.<name>.<hex>.partial`
directory beside it and renamed into place; such directories left by a killed process are
removed by the next write to the same place, and SIGINT or SIGTERM at any instant removes
them at once (SIGTERM then exits with status 143). A full disk is one OSError (ENOSPC).
`overwrite` replaces only a previous jax-refine checkpoint, and never a directory holding
the source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from . import __version__
from ._torch_pickle import CheckpointError
from . import pix2pixhd
from .model import Lama, LamaConfig, abstract_model, eval_mode
from .contract import Generator

try:
    import fcntl
except ImportError:  # Windows: no locks, stale staging directories are not cleaned
    fcntl = None

FORMAT = "jax-refine-lama"
FORMAT_VERSION = 1
METADATA_FILE = "jax_refine.json"
_MAX_METADATA_BYTES = 1 << 20

MAX_DOWNSAMPLING, MAX_BLOCKS = 8, 64  # LaMa's generators use 3 and 9 or 18
# What a checkpoint's configuration may claim, {field: (low, high)}: the converter's limits
# (a file claiming n_downsampling=100000 would otherwise build 100000 layers).
CONFIG_LIMITS = {"ngf": (1, 1024), "n_downsampling": (1, MAX_DOWNSAMPLING), "n_blocks": (1, MAX_BLOCKS),
                 "input_nc": (1, 64), "output_nc": (1, 64), "max_features": (1, 8192)}
# What a checkpoint's refine_defaults may recommend, {RefineConfig field: (low, high)}: bounds
# that keep the work of one inpaint bounded (LaMa's defaults: 15 iterations, 3 scales, 1.8 MP).
# Only a file is held to them; the API and the command line may ask for more.
REFINE_DEFAULT_LIMITS = {"n_iters": (1, 1000), "max_scales": (1, 8), "px_budget": (1, 1 << 25),
                         "min_side": (1, 8192), "modulo": (8, 512), "erosion": (1, 255),
                         "early_stop_window": (1, 1000), "tile_pixels": (1, 1 << 26), "lr": (0, 10)}


class Architecture(NamedTuple):
    """A generator kind checkpoints can hold: its config class, model class (both filling
    `contract`) and a constructor of an abstract model (shapes only) from a config."""

    config: type
    model: type
    abstract: Callable


ARCHITECTURES = {
    "ffc_resnet": Architecture(LamaConfig, Lama, abstract_model),
    pix2pixhd.ARCHITECTURE: Architecture(pix2pixhd.Pix2PixHDConfig, pix2pixhd.Pix2PixHD, pix2pixhd.abstract_model),
}


def config_record(config) -> dict:
    """The "config" entry of jax_refine.json: the config's fields and its architecture."""
    return {"architecture": config.architecture, **dataclasses.asdict(config)}


def config_from_record(record: Mapping, source: str):
    """The generator config of a "config" entry (`config_record`; without "architecture", a
    Big-LaMa-family "ffc_resnet" one). Raises CheckpointError."""
    fields = dict(record)
    architecture = fields.pop("architecture", "ffc_resnet")
    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"{source}: unknown generator architecture {architecture!r} in {METADATA_FILE} "
                              f"(known: {', '.join(ARCHITECTURES)})")
    try:
        return ARCHITECTURES[architecture].config(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: invalid config in {METADATA_FILE}: {e}") from None


def abstract_generator(config):
    """An abstract model (shape/dtype structs only) of a registered architecture's config."""
    return ARCHITECTURES[config.architecture].abstract(config)


def save(model: Generator, dst: str | os.PathLike, *, source: Mapping | None = None, overwrite: bool = False) -> Path:
    """Write `model` (e.g. a trained one) as a jax-refine checkpoint directory."""
    from flax import nnx
    flat = {path: np.asarray(v) for path, v in nnx.to_flat_state(nnx.state(model))}
    return save_flat(flat, model.config, dst, source=source or {}, overwrite=overwrite)


def save_flat(flat: Mapping[tuple, np.ndarray], config, dst, *, source: Mapping, overwrite=False) -> Path:
    """Write flat {flax path: array} + metadata atomically to the directory `dst` (replacing
    only a previous jax-refine checkpoint, with `overwrite`)."""
    dst = Path(dst).absolute()
    check_destination(dst, overwrite)
    with staging(dst) as tmp:
        write_into(tmp, flat, config, source)
        install(tmp, dst, overwrite)
    return dst


def check_destination(dst: Path, overwrite: bool, source: Path | None = None) -> None:
    """Refuse (FileExistsError) a destination whose writing would lose data: one that is or
    contains `source`, an existing one without `overwrite`, and anything but a previous
    jax-refine checkpoint (params/ and jax_refine.json, nothing else) with it."""
    if source is not None:
        real_source, real_dst = Path(os.path.realpath(source)), Path(os.path.realpath(dst))
        if real_dst == real_source or real_dst in real_source.parents:
            raise FileExistsError(f"{dst} holds the source {source}: refusing to write the checkpoint there "
                                  "(choose another destination)")
    if not os.path.lexists(dst):
        return
    if not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite=True / --overwrite to replace a previous "
                              "jax-refine checkpoint)")
    problem = _not_a_checkpoint(dst)
    if problem:
        raise FileExistsError(f"refusing to replace {dst}: {problem}; --overwrite only replaces a jax-refine "
                              "checkpoint")


def _not_a_checkpoint(path: Path) -> str | None:
    """Why `path` is not a jax-refine checkpoint directory (None when it is one)."""
    if not path.is_dir():
        return "it is not a directory"
    others = sorted(set(os.listdir(path)) - {"params", METADATA_FILE})
    if others:
        return f"it holds other files ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''})"
    try:
        read_metadata(path)
    except CheckpointError:
        return f"it has no valid {METADATA_FILE}"
    return None


def write_into(tmp: Path, flat: Mapping[tuple, np.ndarray], config, source: Mapping) -> None:
    """params/ (orbax) and jax_refine.json of a checkpoint, into the directory `tmp`."""
    import orbax.checkpoint as ocp

    tree = {}
    for path, array in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(str(part), {})
        node[str(path[-1])] = array
    nbytes = sum(int(np.prod(np.shape(a))) * np.dtype(a.dtype).itemsize for a in flat.values())
    check_free_space(tmp.parent, nbytes)  # errors name the folder the checkpoint goes to
    with _orbax_errors_as_os_errors(tmp.parent):
        # synchronous: the async StandardCheckpointer first copies every array to host buffers
        ocp.Checkpointer(ocp.StandardCheckpointHandler()).save(tmp / "params", args=ocp.args.StandardSave(tree))
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config_record(config),
                "source": dict(source), "converter_version": __version__, "params_sha256": params_digest(flat)}
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def check_free_space(directory: Path, nbytes: int) -> None:
    """Raise OSError(ENOSPC) naming the need when `directory`'s file system has less than
    `nbytes` (plus 2 % and 1 MiB for file system overhead) free."""
    need = int(nbytes * 1.02) + (1 << 20)
    free = shutil.disk_usage(directory).free
    if free < need:
        raise OSError(errno.ENOSPC, f"No space left on device: {need / 1e6:,.1f} MB needed, "
                                    f"{free / 1e6:,.1f} MB free", str(directory))


@contextlib.contextmanager
def _orbax_errors_as_os_errors(directory: Path) -> Iterator[None]:
    """orbax's write errors (a full disk is a ValueError 'RESOURCE_EXHAUSTED ... os_error_code=28',
    logged with its traceback from orbax's writer thread) as one OSError, without the log."""
    try:
        with _orbax_quiet():
            yield
    except OSError:
        raise
    except Exception as e:
        text = str(e)
        code = errno.ENOSPC if "os_error_code='28'" in text or "No space left" in text else errno.EIO
        raise OSError(code, os.strerror(code) if code == errno.ENOSPC else f"could not write params: {_first_line(e)}",
                      str(directory)) from None


@contextlib.contextmanager
def _orbax_quiet() -> Iterator[None]:
    """Inside, orbax's log records (absl's logger) below CRITICAL and the exceptions its
    threads cannot raise (tensorstore's callbacks into a closed event loop, on damaged
    files) are dropped: the caller reports the error once."""
    absl, hook = logging.getLogger("absl"), sys.unraisablehook
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        absl.setLevel(level)
        sys.unraisablehook = hook


def params_digest(flat: Mapping[tuple, object]) -> str:
    """SHA-256 of flat {state path: array}: every path (parts joined by '/'), dtype, shape and
    the bytes, in path order; the same for the arrays saved and the arrays read back."""
    arrays = {"/".join(str(p) for p in path): array for path, array in flat.items()}
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(np.asarray(arrays[key]))
        digest.update(f"{key}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def install(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Rename the finished `tmp` to `dst`; a previous checkpoint there is moved aside first
    and removed after (it is put back if the rename fails). SIGINT and SIGTERM wait until
    this is done, so a reader finds the old or the new checkpoint, never neither for good."""
    with signals_deferred():
        if not os.path.lexists(dst):
            os.rename(tmp, dst)
            return
        check_destination(dst, overwrite)  # again: it may have changed since the conversion began
        aside = _staging_name(dst)
        os.rename(dst, aside)
        try:
            os.rename(tmp, dst)
        except BaseException:
            os.rename(aside, dst)
            raise
        if aside.is_symlink():
            aside.unlink()
        else:
            shutil.rmtree(aside, ignore_errors=True)


# Staging directories: `.<dst name>.<16 hex>.partial`, locked (flock) while in use; the
# 8-character variant is what tempfile.mkdtemp made before version 0.1.1.
def _staging_name(dst: Path) -> Path:
    return dst.parent / f".{dst.name}.{secrets.token_hex(8)}.partial"


def _is_staging_name(name: str, dst: Path) -> bool:
    return re.fullmatch(re.escape(f".{dst.name}.") + r"(?:[0-9a-f]{16}|[a-z0-9_]{8})\.partial", name) is not None


@contextlib.contextmanager
def staging(dst: Path) -> Iterator[Path]:
    """A fresh, locked directory beside `dst` (mode 0777 & ~umask), removed unless it was
    renamed away (with the parents it needed); first removes stale staging directories of
    `dst` (killed conversions). It is removed on SIGINT or SIGTERM at any instant: its name
    is known before it exists, and the signals wait while it is made and removed."""
    with sigterm_as_exit():
        created = [p for p in (dst.parent, *dst.parent.parents) if not p.exists()]
        path, lock = None, None
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(dst)
            with signals_deferred():
                for _ in range(3):
                    path = _staging_name(dst)
                    os.mkdir(path)
                    lock = _try_lock(path) if fcntl else -1
                    if lock is not None:
                        break
                    shutil.rmtree(path, ignore_errors=True)  # a cleaner took it in the instant before our lock
                else:
                    raise OSError(f"could not lock a staging directory beside {dst}")
            yield path
        except BaseException:
            with signals_deferred():
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True)
                for parent in created:  # innermost first; only if still empty
                    with contextlib.suppress(OSError):
                        parent.rmdir()
            raise
        finally:
            if lock is not None and lock >= 0:
                os.close(lock)


EXIT_TERMINATED = 128 + signal.SIGTERM


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """In the main thread, where SIGTERM has its default action (end the process at once),
    make it raise SystemExit(143) inside, so that cleanups run first; the process then ends
    with the same status."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(EXIT_TERMINATED)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM arriving inside are raised again on leaving (in the main thread,
    where Python runs signal handlers; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None:  # None: installed outside Python, left alone
            previous[signum] = signal.signal(signum, lambda number, frame: pending.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in pending:
            signal.raise_signal(signum)


def remove_stale_staging(dst: Path) -> list[Path]:
    """Remove the staging directories of `dst` that no live process holds (left by a killed
    conversion); returns them. Nothing is removed where file locks are unavailable."""
    removed = []
    if fcntl is None or not dst.parent.is_dir():
        return removed
    for entry in os.scandir(dst.parent):
        if not _is_staging_name(entry.name, dst) or not entry.is_dir(follow_symlinks=False):
            continue
        lock = _try_lock(entry.path)
        if lock is None:
            continue
        try:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
        finally:
            os.close(lock)
    return removed


def _try_lock(path) -> int | None:
    """A descriptor of directory `path` holding its exclusive lock, or None when another
    process holds it or the directory is gone. The lock ends with the descriptor (and with
    the process, however it dies)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def read_metadata(path: str | os.PathLike) -> dict:
    """The jax_refine.json of a checkpoint directory, validated (`check_config`)."""
    path = Path(path)
    meta_file = path / METADATA_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not a jax-refine checkpoint directory (no {METADATA_FILE}); "
                              "convert LaMa weights first with `jax-refine convert SRC DST`")
    try:
        with open(meta_file, "rb") as f:
            text = f.read(_MAX_METADATA_BYTES + 1)
        if len(text) > _MAX_METADATA_BYTES:
            raise CheckpointError(f"{meta_file}: over {_MAX_METADATA_BYTES:,} bytes, not a jax-refine metadata file")
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{meta_file}: corrupt metadata: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_file}: corrupt metadata: a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_file}: unsupported format {meta.get('format')!r} "
                              f"version {meta.get('format_version')!r}")
    check_config(meta.get("config"), str(meta_file))
    return meta


def check_config(config, where: str) -> None:
    """Raise CheckpointError unless `config` (a checkpoint's "config") keeps within
    `CONFIG_LIMITS` and its refine_defaults name RefineConfig fields within
    `REFINE_DEFAULT_LIMITS`; runs before anything is built from it."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: config is {show(config)}, expected an object")
    problems = [f"{name}={show(config[name])} (allowed: an int in {low}..{high})"
                for name, (low, high) in CONFIG_LIMITS.items()
                if name in config and not _within(config[name], low, high, int)]
    pairs = config.get("refine_defaults", [])
    if isinstance(pairs, dict):
        pairs = list(pairs.items())
    if not isinstance(pairs, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str)
                                              for p in pairs):
        problems.append(f"refine_defaults is {show(pairs)}, expected [name, value] pairs")
    else:
        for name, value in pairs:
            low, high = REFINE_DEFAULT_LIMITS.get(name, (None, None))
            if low is not None and not _within(value, low, high, float if name == "lr" else int):
                problems.append(f"refine_defaults {name}={show(value)} (allowed: {low}..{high})")
        if not problems:
            from .plan import RefineConfig  # its own checks: the names, choices and types
            try:
                RefineConfig(**dict(pairs))
            except (TypeError, ValueError) as e:
                problems.append(f"refine_defaults: {e}")
    if problems:
        raise CheckpointError(f"{where}: configuration out of bounds: " + "; ".join(problems))


def _within(value, low, high, kind) -> bool:
    """`value` is an int (float: a finite real) in [low, high]; bools are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        return False
    return math.isfinite(value) and low <= value <= high


def show(value) -> str:
    """A value from a file, briefly: short scalars and strings as repr, others by type."""
    if isinstance(value, (bool, int, float, type(None))) or (isinstance(value, str) and len(value) <= 40):
        return repr(value)
    return f"a {type(value).__name__}"


def load(path: str | os.PathLike) -> Generator:
    """Load a jax-refine checkpoint directory as a ready (inference-mode) generator of the
    architecture it records (`ARCHITECTURES`).

    Checked in this order, each before the next costs anything: jax_refine.json's bounds,
    the stored shapes against the configuration, then the arrays' digest and finiteness.
    """
    path = Path(path).absolute()
    meta = read_metadata(path)
    config = config_from_record(meta["config"], str(path))
    abstract = abstract_generator(config)  # built once: tracing its constructor is most of a small model's load
    stored = read_params(path, config, abstract)
    check_params(stored, meta.get("params_sha256"), str(path))
    return model_from_flat(stored, config, str(path), abstract)


def read_params(path: Path, config, abstract=None) -> dict[tuple, np.ndarray]:
    """params/ of the checkpoint `path` as flat {path of str parts: numpy array}, after the
    stored shapes were checked against `config` from orbax's metadata (no array read yet);
    abstract: `abstract_generator(config)`, if the caller has it."""
    import jax
    import orbax.checkpoint as ocp

    damaged = f"{path}: params/ is damaged or incomplete (convert the model again)"
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        with _orbax_quiet():
            metadata = checkpointer.metadata(path / "params").item_metadata
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
        raise CheckpointError(f"{damaged}: {_first_line(e)}") from None
    if metadata is None or not isinstance(metadata.tree, Mapping):
        raise CheckpointError(f"{damaged}: its metadata is unreadable")
    check_shapes({key: tuple(getattr(m, "shape", ()) or ()) for key, m in _flatten(metadata.tree).items()},
                 config, str(path), abstract)
    try:
        # as numpy arrays, not jax.Arrays placed as when saved: then every process of a
        # jax.distributed job restores its own copy (orbax refuses the saved topology there)
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata.tree)
        with _orbax_quiet():
            tree = checkpointer.restore(path / "params", args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    except Exception as e:
        raise CheckpointError(f"{damaged}: {_first_line(e)}") from None
    return {key: np.asarray(value) for key, value in _flatten(tree).items()}


def _flatten(tree, prefix=()) -> dict[tuple, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix + (str(key),)))
        else:
            flat[prefix + (str(key),)] = value
    return flat


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_shapes(shapes: Mapping[tuple, tuple], config, source: str, abstract=None) -> None:
    """Raise CheckpointError (every missing, unexpected and mis-shaped entry) unless `shapes`
    {state path of str parts: shape} are those of a generator of `config` (whose
    `abstract_generator`, if the caller has it, is `abstract`)."""
    from flax import nnx

    expected = {tuple(str(p) for p in path): tuple(v.shape)
                for path, v in nnx.to_flat_state(nnx.state(abstract or abstract_generator(config)))}
    missing = sorted(".".join(k) for k in set(expected) - set(shapes))
    unexpected = sorted(".".join(k) for k in set(shapes) - set(expected))
    misshaped = [f"{'.'.join(k)}: {shapes[k]} (expected {shape})"
                 for k, shape in sorted(expected.items()) if k in shapes and shapes[k] != shape]
    if missing or unexpected or misshaped:
        raise CheckpointError(mismatch_message(source, config, missing, unexpected, misshaped))


def check_params(flat: Mapping[tuple, np.ndarray], digest: str | None, source: str) -> None:
    """Raise CheckpointError when the arrays do not match `digest` (`params_digest`, None:
    not recorded) or hold NaN or infinity (which would fill every hole black)."""
    if digest is not None and params_digest(flat) != digest:
        raise CheckpointError(f"{source}: the parameters do not match the digest recorded when they were written "
                              "(a damaged or modified checkpoint); convert or save it again")
    not_finite = sorted(".".join(k) for k, a in flat.items() if a.dtype.kind == "f" and not np.isfinite(a).all())
    if not_finite:
        raise CheckpointError(f"{source}: weights hold NaN or infinite values in {len(not_finite)} tensors:"
                              + listing(not_finite))


def model_from_flat(flat: Mapping[tuple, np.ndarray], config, source: str = "weights", abstract=None) -> Generator:
    """An inference-mode generator of `config` from flat {state path: array}; paths may use
    str or int parts. Strict: one CheckpointError lists every missing, unexpected and
    mis-shaped entry (`check_shapes`). abstract: `abstract_generator(config)`, if the caller has it.
    """
    from flax import nnx

    stored = {tuple(str(p) for p in path): np.asarray(v) for path, v in flat.items()}
    abstract = abstract or abstract_generator(config)
    check_shapes({key: value.shape for key, value in stored.items()}, config, source, abstract)
    graphdef, abstract_state = nnx.split(abstract)
    expected = {tuple(str(p) for p in path): (path, v) for path, v in nnx.to_flat_state(abstract_state)}
    state = nnx.from_flat_state(
        {path: variable.replace(jnp.asarray(stored[key], jnp.float32)) for key, (path, variable) in expected.items()})
    return eval_mode(nnx.merge(graphdef, state))


def listing(items, limit=20, indent="    ") -> str:
    shown = items[:limit] + ([f"... and {len(items) - limit} more"] if len(items) > limit else [])
    return "".join(f"\n{indent}{item}" for item in shown)


def mismatch_message(source, config, missing, unexpected, misshaped, not_float=()):
    def section(title, items):
        return f"\n  {title} ({len(items)}):" + listing(list(items)) if items else ""
    return (f"{source}: the generator weights do not match a LaMa generator with {config}:"
            + section("missing keys", missing) + section("unexpected keys", unexpected)
            + section("mis-shaped keys", misshaped) + section("not floating point (complex, integer, bool)", not_float))


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file (`hashlib.file_digest`: read in chunks)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()
