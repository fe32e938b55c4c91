"""jax-refine checkpoints: the native format, written atomically and read strictly.

A checkpoint is a directory:
  params/          orbax tree of the Lama state (parameters and BatchNorm statistics)
  jax_refine.json  {"format", "format_version", "config" (the generator config, refine_defaults
                   included, and its "architecture": a key of ARCHITECTURES, "ffc_resnet"
                   when absent), "source" (where the weights came from), "converter_version"}

Outputs appear atomically: a checkpoint is assembled in a locked `.<name>.<hex>.partial`
directory beside it and renamed into place; such directories left by a killed process are
removed by the next write to the same place. `overwrite` replaces only a previous
jax-refine checkpoint, and never a directory holding the source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from . import __version__
from ._torch_pickle import CheckpointError
from . import pix2pixhd
from .model import Lama, LamaConfig, abstract_model, eval_mode

try:
    import fcntl
except ImportError:  # Windows: no locks, stale staging directories are not cleaned
    fcntl = None

FORMAT = "jax-refine-lama"
FORMAT_VERSION = 1
METADATA_FILE = "jax_refine.json"

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


def save(model: Lama, dst: str | os.PathLike, *, source: Mapping | None = None, overwrite: bool = False) -> Path:
    """Write `model` (e.g. a trained one) as a jax-refine checkpoint directory."""
    from flax import nnx
    flat = {path: np.asarray(v) for path, v in nnx.to_flat_state(nnx.state(model))}
    return save_flat(flat, model.config, dst, source=source or {}, overwrite=overwrite)


def save_flat(flat: Mapping[tuple, np.ndarray], config: LamaConfig, dst, *, source: Mapping, overwrite=False) -> Path:
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


def write_into(tmp: Path, flat: Mapping[tuple, np.ndarray], config: LamaConfig, source: Mapping) -> None:
    """params/ (orbax) and jax_refine.json of a checkpoint, into the directory `tmp`."""
    import orbax.checkpoint as ocp

    tree = {}
    for path, array in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(str(part), {})
        node[str(path[-1])] = array
    # synchronous: the async StandardCheckpointer first copies every array to host buffers
    ocp.Checkpointer(ocp.StandardCheckpointHandler()).save(tmp / "params", args=ocp.args.StandardSave(tree))
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config_record(config),
                "source": dict(source), "converter_version": __version__}
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def install(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Rename the finished `tmp` to `dst`; a previous checkpoint there is moved aside first
    and removed after (it is put back if the rename fails)."""
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
    `dst` (killed conversions)."""
    created = [p for p in (dst.parent, *dst.parent.parents) if not p.exists()]
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(dst)
    for _ in range(3):
        path = _staging_name(dst)
        os.mkdir(path)
        lock = _try_lock(path) if fcntl else -1
        if lock is not None:
            break
        shutil.rmtree(path, ignore_errors=True)  # a cleaner took it in the instant before our lock
    else:
        raise OSError(f"could not lock a staging directory beside {dst}")
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        for parent in created:  # innermost first; only if still empty
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    finally:
        if lock >= 0:
            os.close(lock)


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
    """The jax_refine.json of a checkpoint directory, validated."""
    path = Path(path)
    meta_file = path / METADATA_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not a jax-refine checkpoint directory (no {METADATA_FILE}); "
                              "convert LaMa weights first with `jax-refine convert SRC DST`")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_file}: corrupt metadata: {e}") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_file}: unsupported format {meta.get('format')!r} "
                              f"version {meta.get('format_version')!r}")
    return meta


def load(path: str | os.PathLike) -> Lama:
    """Load a jax-refine checkpoint directory as a ready (inference-mode) generator of the
    architecture it records (`ARCHITECTURES`)."""
    import jax
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    meta = read_metadata(path)
    config = config_from_record(meta["config"], str(path))
    try:
        # as numpy arrays, not jax.Arrays placed as when saved: then every process of a
        # jax.distributed job restores its own copy (orbax refuses the saved topology there)
        checkpointer = ocp.PyTreeCheckpointer()
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                checkpointer.metadata(path / "params").item_metadata.tree)
        tree = checkpointer.restore(path / "params", args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
        raise CheckpointError(f"{path}: could not read params: {e}") from None
    stored = {}

    def collect(node, prefix):
        for key, value in node.items():
            if isinstance(value, Mapping):
                collect(value, prefix + (key,))
            else:
                stored[prefix + (key,)] = np.asarray(value)

    collect(tree, ())
    return model_from_flat(stored, config, str(path))


def model_from_flat(flat: Mapping[tuple, np.ndarray], config: LamaConfig, source: str = "weights") -> Lama:
    """An inference-mode Lama from flat {state path: array}; paths may use str or int parts.

    Strict: one CheckpointError lists every missing, unexpected and mis-shaped entry.
    """
    from flax import nnx

    graphdef, abstract_state = nnx.split(abstract_generator(config))
    stored = {tuple(str(p) for p in path): np.asarray(v) for path, v in flat.items()}
    expected = {tuple(str(p) for p in path): (path, v) for path, v in nnx.to_flat_state(abstract_state)}
    missing = sorted(".".join(k) for k in set(expected) - set(stored))
    unexpected = sorted(".".join(k) for k in set(stored) - set(expected))
    misshaped = [f"{'.'.join(k)}: {stored[k].shape} (expected {tuple(v.shape)})"
                 for k, (_, v) in sorted(expected.items()) if k in stored and stored[k].shape != tuple(v.shape)]
    if missing or unexpected or misshaped:
        raise CheckpointError(mismatch_message(source, config, missing, unexpected, misshaped))
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


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
