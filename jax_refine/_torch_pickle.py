"""Safe, torch-free reader of torch zip-format checkpoints (``.ckpt`` / ``.pth``).

Why: converting LaMa weights must not require torch, and must not run code hidden in a
downloaded pickle.  The unpickler below resolves only an allowlist of harmless globals;
every other global becomes an inert placeholder class that may be instantiated with
``__new__`` (its BUILD state is kept) but refuses to be called, so REDUCE-style payloads
(``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) raise instead of running.

Memory: the file is memory-mapped copy-on-write (``mmap.ACCESS_COPY``).  Tensors whose
layout is C-contiguous are returned as zero-copy numpy views into that mapping; the views
keep the mapping alive, are writable, and writes never reach the file.  Storages that the
caller never touches are therefore never copied or even read from disk.  Non-contiguous
tensors, bfloat16 tensors and storages in compressed zip entries are copies.  Tensors that
share a storage share memory, as in torch.  Do not truncate or rewrite the file while the
arrays are alive (the OS would fault on access to a vanished page).

bfloat16 storages come back as float32 (exact: every bfloat16 value is a float32), so the
output dtype does not depend on whether ``ml_dtypes`` is installed.
"""
from __future__ import annotations

import mmap
import os
import pickle
import zipfile
from collections import OrderedDict, defaultdict
from typing import Any

import numpy as np

__all__ = ["CheckpointError", "UnsafePickleError", "read_torch_file", "release_pages", "to_plain"]

_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


class CheckpointError(ValueError):
    """Any problem with a checkpoint file; the message names the file and the problem."""


class UnsafePickleError(CheckpointError):
    """The pickle tried to call or instantiate a global that is not allowed."""


# ---------------------------------------------------------------- placeholders
class _PlaceholderMeta(type):
    """Metaclass of placeholders: calling the class (REDUCE/OBJ/INST) is refused."""

    def __call__(cls, *args, **kwargs):
        raise UnsafePickleError(f"refusing to call {cls._global}")

    def __setattr__(cls, name, value):  # classes are cached across files: keep them inert
        raise UnsafePickleError(f"refusing to modify {cls._global}")

    def __repr__(cls):
        return f"<placeholder class {cls._global}>"


class _Placeholder(metaclass=_PlaceholderMeta):
    """Inert stand-in for an instance of a non-allowed class, made by NEWOBJ or
    ``copyreg._reconstructor``; keeps ``_args``/``_kwargs`` and the BUILD ``_state``."""

    _global = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self._args, self._kwargs, self._state = args, kwargs, None
        return self

    def __setstate__(self, state):
        self._state = state

    def __repr__(self):
        return f"<placeholder {self._global} instance>"


_PLACEHOLDERS: dict[tuple[str, str], type] = {}


def _placeholder(module: str, name: str) -> type:
    """One cached (hence identical and hashable) placeholder class per global."""
    key = (module, name)
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = _PlaceholderMeta(name, (_Placeholder,), {"_global": f"{module}.{name}"})
    return _PLACEHOLDERS[key]


def _safe_reconstructor(cls, base, state):
    """``copyreg._reconstructor`` restricted to placeholder classes (no code runs)."""
    if isinstance(cls, _PlaceholderMeta):
        return cls.__new__(cls, base, state)
    raise UnsafePickleError(f"refusing copyreg._reconstructor for {cls!r}")


class _Sealed:
    """Base of our objects the pickle can reach: no ``__dict__`` and no setattr, so a BUILD
    opcode cannot alter them (some are shared module-wide, others guard bounds checks)."""

    __slots__ = ()

    def __init__(self, **fields):
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise UnsafePickleError(f"refusing to modify {type(self).__name__}.{name}")


class _Func(_Sealed):
    """Sealed wrapper of an allowlisted function."""

    __slots__ = ("func",)

    def __call__(self, *args):
        return self.func(*args)


# --------------------------------------------------------------------- tensors
class _StorageType(_Sealed):
    """Dtype marker standing for ``torch.<X>Storage`` in persistent ids."""

    __slots__ = ("name", "dtype")


_STORAGE_TYPES = {
    f"{n}Storage": _StorageType(name=f"{n}Storage", dtype=np.dtype(d))
    for n, d in [("Float", "float32"), ("Double", "float64"), ("Half", "float16"),
                 ("BFloat16", "uint16"), ("Long", "int64"), ("Int", "int32"), ("Short", "int16"),
                 ("Char", "int8"), ("Byte", "uint8"), ("Bool", "bool"),
                 ("ComplexFloat", "complex64"), ("ComplexDouble", "complex128")]
}
# ``torch.float32`` & co. pickle as the globals ``torch <name>``; bfloat16 -> float32 as above.
_TORCH_DTYPES = {n: np.dtype(n) for n in ("float32", "float64", "float16", "int64", "int32",
                                          "int16", "int8", "uint8", "bool", "complex64", "complex128")}
_TORCH_DTYPES["bfloat16"] = np.dtype("float32")


class _Storage(_Sealed):
    """Lazy storage: a flat array over ``<root>/data/<key>``, built once on first use."""

    __slots__ = ("reader", "stype", "key", "numel", "_array")

    def __init__(self, reader: "_Reader", stype: _StorageType, key: str, numel: int):
        super().__init__(reader=reader, stype=stype, key=key, numel=numel, _array=None)

    def array(self) -> np.ndarray:
        if self._array is None:
            raw = self.reader.entry_bytes(self.key)
            need = self.numel * self.stype.dtype.itemsize
            if len(raw) < need:
                self.reader.fail(f"storage {self.key!r} has {len(raw)} bytes, needs {need}")
            arr = np.frombuffer(raw, self.stype.dtype, self.numel)
            if self.stype.name == "BFloat16Storage":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            object.__setattr__(self, "_array", arr)
        return self._array


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_grad_hooks_metadata):
    """Return the tensor as an ndarray: a C-contiguous view of the storage, or a copy."""
    if not isinstance(storage, _Storage):
        raise TypeError(f"tensor storage is {type(storage).__name__}, not a storage")
    size, stride, off = tuple(size), tuple(stride), storage_offset
    if not all(type(v) is int and v >= 0 for v in (off, *size, *stride)) or len(size) != len(stride):
        storage.reader.fail(f"bad tensor geometry size={size} stride={stride} offset={off}")
    flat = storage.array()
    if 0 in size:
        return np.zeros(size, flat.dtype)
    last = off + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        storage.reader.fail(f"tensor (size={size}, stride={stride}, offset={off}) exceeds "
                            f"storage {storage.key!r} of {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(flat[off:], size, [s * flat.itemsize for s in stride])
    return view if view.flags.c_contiguous else view.copy()


def _rebuild_parameter(data, *_grad_hooks_state):
    """``torch.nn.Parameter`` is just its data here."""
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    """Tensor subclasses: rebuild the plain tensor (``func`` is itself allowlisted)."""
    return func(*args)


# The only globals resolved to real objects; everything else becomes a placeholder.
# Deliberately absent: eval, exec, getattr, __import__, open, os.*, subprocess.*, ...
# Builtin types and numpy's builtin dtypes are immutable; our functions are sealed.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("collections", "defaultdict"): defaultdict,
    ("__builtin__", "long"): int,
    ("copyreg", "_reconstructor"): _Func(func=_safe_reconstructor),
    ("torch._utils", "_rebuild_tensor_v2"): _Func(func=_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Func(func=_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Func(func=_rebuild_parameter),
    ("torch._tensor", "_rebuild_from_type_v2"): _Func(func=_rebuild_from_type_v2),
}
_ALLOWED.update({(m, t.__name__): t for m in ("builtins", "__builtin__") for t in (
    dict, list, tuple, set, frozenset, int, float, complex, bool, str, bytes, bytearray)})
_ALLOWED.update({("torch", n): t for n, t in _STORAGE_TYPES.items()})
_ALLOWED.update({("torch", n): d for n, d in _TORCH_DTYPES.items()})


# ---------------------------------------------------------------------- reader
class _Reader(pickle.Unpickler):
    """Restricted unpickler over one open zip archive."""

    def __init__(self, path: str, zf: zipfile.ZipFile, mm: mmap.mmap, root: str):
        super().__init__(zf.open(root + "data.pkl"))
        self.path, self.zf, self.mm, self.root = path, zf, mm, root
        self.storages: dict[str, _Storage] = {}

    def fail(self, msg: str):
        raise CheckpointError(f"{self.path}: {msg}")

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        return _placeholder(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and type(pid[4]) is int and pid[4] >= 0):
            self.fail(f"unsupported persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if self.root + "data/" + key not in self.zf.NameToInfo:
            self.fail(f"missing storage entry {self.root}data/{key}")
        if key not in self.storages:
            self.storages[key] = _Storage(self, stype, key, numel)
        return self.storages[key]

    def entry_bytes(self, key: str):
        """Bytes of a storage entry: an mmap slice if stored, else a decompressed copy."""
        info = self.zf.getinfo(self.root + "data/" + key)
        if info.compress_type != zipfile.ZIP_STORED:
            return bytearray(self.zf.read(info))
        head = self.mm[info.header_offset:info.header_offset + 30]
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            self.fail(f"corrupt local header for {info.filename}")
        start = (info.header_offset + 30 + int.from_bytes(head[26:28], "little")
                 + int.from_bytes(head[28:30], "little"))
        if start + info.file_size > len(self.mm):
            self.fail(f"entry {info.filename} runs past the end of the file")
        return memoryview(self.mm)[start:start + info.file_size]


def read_torch_file(path: str | os.PathLike) -> Any:
    """Unpickle a torch zip-format file without torch and without executing code from it.

    Tensors come back as numpy arrays (C-contiguous, correct dtype/shape; 0-d for scalars).
    Raises CheckpointError (UnsafePickleError for refused globals) on any problem.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if not zipfile.is_zipfile(f):
                if head[:1] == b"\x80" and head[2:4] == b"\x8a\x0a" and head[4:14] == _LEGACY_MAGIC:
                    raise CheckpointError(f"{path}: legacy (pre-1.6) torch format is unsupported; "
                                          "re-save it with torch>=1.6 (torch.save default)")
                if head[:4] == b"PK\x03\x04":
                    raise CheckpointError(f"{path}: truncated or corrupt zip file")
                raise CheckpointError(f"{path}: not a torch checkpoint (zip) file")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        zf = zipfile.ZipFile(path)
        with zf:
            pkls = [n for n in zf.namelist() if n.endswith("/data.pkl")]
            if len(pkls) != 1:
                raise CheckpointError(f"{path}: expected one '<root>/data.pkl' entry, found {len(pkls)}")
            root = pkls[0][:-len("data.pkl")]
            if root + "byteorder" in zf.NameToInfo:
                order = zf.read(root + "byteorder").decode("ascii", "replace").strip()
                if order != "little":
                    raise CheckpointError(f"{path}: byteorder {order!r} is unsupported (only little)")
            return _Reader(path, zf, mm, root).load()
    except UnsafePickleError as exc:  # raised deep in the unpickler, without the path
        raise UnsafePickleError(f"{path}: {exc}") from None
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile/pickle/OS errors: report them as a bad file
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc


def release_pages(array: np.ndarray) -> None:
    """Let the OS drop the file pages behind `array`, a view returned by read_torch_file,
    from memory now instead of when the file is unmapped. The pages are re-read from the
    file if the view is touched again, so writes made through it are lost. A no-op for
    arrays that are not views into a mapped checkpoint.
    """
    base = array  # walk ndarray / as_strided bases down to the memoryview of the mapping
    while not isinstance(base, (memoryview, mmap.mmap)) and getattr(base, "base", None) is not None:
        base = base.base
    mm = base.obj if isinstance(base, memoryview) else base
    if not isinstance(mm, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED") or mm.closed:
        return
    start = array.__array_interface__["data"][0] - np.frombuffer(mm, np.uint8, 1).__array_interface__["data"][0]
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages only: neighbours keep theirs
    end = (start + array.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if 0 <= first < end <= len(mm):
        mm.madvise(mmap.MADV_DONTNEED, first, end - first)


# -------------------------------------------------------------------- to_plain
def to_plain(obj: Any, _active: frozenset = frozenset()) -> Any:
    """Convert placeholders (OmegaConf DictConfig/ListConfig/ValueNode state) and plain
    containers into plain dicts/lists/scalars, recursively; other placeholders become
    ``'<placeholder module.Name>'``.  Arrays and scalars are returned unchanged."""
    if isinstance(obj, _PlaceholderMeta):
        return f"<placeholder {obj._global}>"
    if not isinstance(obj, (_Placeholder, dict, list, tuple, set, frozenset)):
        return obj
    if id(obj) in _active:
        return "<cycle>"
    active = _active | {id(obj)}
    if isinstance(obj, _Placeholder):
        state = obj._state if isinstance(obj._state, dict) else {}
        if obj._global.startswith("omegaconf.") and "_content" in state:
            return to_plain(state["_content"], active)
        if obj._global.startswith("omegaconf.") and "_val" in state:
            return to_plain(state["_val"], active)
        return f"<placeholder {obj._global}>"
    if isinstance(obj, dict):
        return {to_plain(k, active): to_plain(v, active) for k, v in obj.items()}
    items = [to_plain(v, active) for v in obj]
    return items if isinstance(obj, list) else type(obj)(items)
