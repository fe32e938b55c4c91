"""The files LaMa's weights are published in, recognised by their content (never by name).

- a torch zip archive: LaMa's Lightning `best.ckpt`, a bare `.pth` state_dict, or a
  TorchScript archive such as IOPaint's `big-lama.pt` (read by `_torch_pickle`, never by
  `torch.jit.load`);
- LaMa's release `big-lama.zip` (its `*/models/best.ckpt` is extracted to a scratch file
  first) and the folder it unzips to (`models/best.ckpt` inside);
- a `.safetensors` file (through the safetensors package's numpy API).

`open_source` returns every tensor of the file under its full name, without reading their
data: torch tensors are views of the mapped file, safetensors ones are read on access.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ._torch_pickle import (CheckpointError, MemoryBudget, is_torchscript_module, module_tensors, open_zip,
                            read_torch_file, to_plain)

FOLDER_CHECKPOINT = Path("models") / "best.ckpt"
_ZIP_CHECKPOINT = re.compile(r"(?:[^/]+/)*models/best\.ckpt")
_EXTRACT_RATIO = 4  # an extracted best.ckpt is ~1.1x its deflated size; more is a zip bomb
_SAFETENSORS_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64", "I32": "int32",
                       "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
SUPPORTED = ("LaMa's best.ckpt, a generator state_dict (.pth), a TorchScript archive such as big-lama.pt, "
             "LaMa's big-lama.zip or its unzipped folder, or a .safetensors file")


@dataclasses.dataclass
class Source:
    """A checkpoint source: all its tensors by full name, its hyper-parameters (plain
    containers) or None, the file whose sha256 identifies it, and its memory budget."""

    kind: str
    tensors: Mapping[str, np.ndarray]
    hyper_parameters: object
    file: Path
    budget: MemoryBudget


def open_source(src: str | os.PathLike, scratch: str | os.PathLike | None = None) -> Source:
    """Recognise and open `src` (a file or LaMa's folder). A LaMa zip's checkpoint is
    extracted into the directory `scratch` (default: the system's temporary directory) and
    unlinked at once (its mapping keeps it readable). Raises CheckpointError."""
    src = Path(src)
    if src.is_dir():
        return _open_folder(src)
    if not src.exists():
        raise CheckpointError(f"{src}: no such file")
    kind = detect(src)
    if kind == "safetensors":
        return Source(kind, _SafetensorsTensors(src), None, src, MemoryBudget(src.stat().st_size))
    if kind == "lama-zip":
        return _open_lama_zip(src, Path(scratch or tempfile.gettempdir()))
    return _open_torch(src, src, MemoryBudget(src.stat().st_size))


def detect(path: Path) -> str:
    """'torch' (a torch archive, or a file only the torch reader can explain), 'lama-zip'
    or 'safetensors', from the first bytes and, for zips, the entry names."""
    with open(path, "rb") as f:
        head = f.read(9)
        size = os.fstat(f.fileno()).st_size
    if head[:4] != b"PK\x03\x04" and _is_safetensors(head, size):
        return "safetensors"
    if head[:4] != b"PK\x03\x04" or not zipfile.is_zipfile(path):
        return "torch"  # legacy torch pickles, truncated zips and other files: its message says which
    with open_zip(str(path)) as zf:
        names = zf.namelist()
    if sum(n.endswith("/data.pkl") for n in names) == 1:
        return "torch"
    if _lama_entries(names):
        return "lama-zip"
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
    raise CheckpointError(f"{path}: a zip archive that is neither a torch checkpoint (one <root>/data.pkl) nor "
                          f"LaMa's big-lama.zip (<folder>/models/best.ckpt); it holds {shown or 'nothing'}")


def _is_safetensors(head: bytes, size: int) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header."""
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8


def _lama_entries(names) -> list[str]:
    return [n for n in names if _ZIP_CHECKPOINT.fullmatch(n) and not n.startswith("__MACOSX/")]


def _open_folder(src: Path) -> Source:
    checkpoint = src / FOLDER_CHECKPOINT
    if checkpoint.is_file():
        return _open_torch(checkpoint, checkpoint, MemoryBudget(checkpoint.stat().st_size), kind="lama-folder")
    if (src / "jax_refine.json").is_file():
        raise CheckpointError(f"{src}: is already a jax-refine checkpoint (load it with jax_refine.load)")
    raise CheckpointError(f"{src}: is a directory without {FOLDER_CHECKPOINT}; expected {SUPPORTED}")


def _open_lama_zip(src: Path, scratch: Path) -> Source:
    size = src.stat().st_size
    with open_zip(str(src)) as zf:
        entries = _lama_entries(zf.namelist())
        if len(entries) != 1:
            raise CheckpointError(f"{src}: holds several LaMa checkpoints ({', '.join(entries[:5])}); unzip it and "
                                  "convert the one you want")
        info = zf.getinfo(entries[0])
        if info.file_size > _EXTRACT_RATIO * size:
            raise CheckpointError(f"{src}: {info.filename} claims {info.file_size:,} bytes, more than "
                                  f"{_EXTRACT_RATIO}x the whole zip (a zip bomb?)")
        free = shutil.disk_usage(scratch).free
        if info.file_size > free:
            raise CheckpointError(f"{src}: extracting {info.filename} needs {info.file_size:,} bytes, "
                                  f"{scratch} has {free:,} free")
        fd, name = tempfile.mkstemp(prefix=".lama-", suffix=".ckpt", dir=scratch)
        try:
            with os.fdopen(fd, "wb") as out, zf.open(info) as entry:
                shutil.copyfileobj(entry, out, 1 << 20)
            source = _open_torch(Path(name), src, MemoryBudget(size), kind="lama-zip", label=f"{src}:{info.filename}")
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"{src}: could not extract {info.filename} ({type(exc).__name__}: "
                                  f"{str(exc)[:200]})") from None
        finally:
            os.unlink(name)  # the mapping keeps the data readable until the arrays are gone
    return source


def _open_torch(path: Path, identity: Path, budget: MemoryBudget, kind: str = "torch", label: str | None = None):
    """Read a torch archive (checkpoint dict, state_dict or TorchScript module)."""
    try:
        obj = read_torch_file(path, budget)
    except CheckpointError as exc:
        if label is None:
            raise
        raise type(exc)(str(exc).replace(str(path), label, 1)) from None
    name = label or str(path)
    if is_torchscript_module(obj):
        return Source("torchscript", module_tensors(obj), None, identity, budget)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        hparams = obj.get("hyper_parameters")
        try:
            hparams = to_plain(hparams)
        except CheckpointError as exc:
            raise CheckpointError(f"{name}: {exc}") from None
        return Source(kind, obj["state_dict"], hparams, identity, budget)
    if isinstance(obj, Mapping):
        return Source(kind, obj, None, identity, budget)
    raise CheckpointError(f"{name}: expected a checkpoint dict, a state_dict or a TorchScript module, found a "
                          f"{type(obj).__name__}")


class _SafetensorsTensors(Mapping):
    """The tensors of a .safetensors file, each read (a copy) when accessed."""

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self._path, self._error = path, SafetensorError
        try:
            self._file = safe_open(str(path), framework="numpy")
            self._keys = list(self._file.keys())
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable safetensors file ({str(exc)[:200]})") from None

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        try:
            dtype = self._file.get_slice(key).get_dtype()
            if dtype not in _SAFETENSORS_DTYPES:
                raise CheckpointError(f"{self._path}: tensor {key!r} has dtype {dtype}, which numpy cannot hold "
                                      "(convert the file to float32 or float16)")
            return self._file.get_tensor(key)
        except CheckpointError:
            raise
        except (self._error, OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{self._path}: tensor {key!r} is unreadable ({str(exc)[:200]})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
