"""Safe, torch-free reader of torch zip-format files (``.ckpt``, ``.pth``, TorchScript ``.pt``).

Why: converting LaMa weights must not require torch, and must not run code hidden in a
downloaded pickle.  The unpickler below resolves only an allowlist of harmless globals;
every other global becomes an inert placeholder class that may be instantiated with
``__new__`` (its BUILD state is kept) but refuses to be called, so REDUCE-style payloads
(``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) raise instead of running.
TorchScript archives are read the same way: their modules become placeholders holding their
attributes (`module_tensors` lists the tensors), their code is never looked at.

Bounded work: the pickle is run by Python's pure-Python unpickler (whose memo is a dict, so a
huge memo index costs nothing) with every opcode that hashes, copies or mutates checked:
dict keys and set elements must be cheap to hash (no deep or shared tuples, no colliding
integers), the allowlisted constructors charge what they copy, BUILD only reaches
placeholders and OrderedDicts, and the pickle itself may hold at most `MAX_PICKLE_BYTES`.
Every allocation a file can ask for (decompressing an entry, copying a strided tensor,
widening bfloat16) is charged to a `MemoryBudget` before it is made.

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

import io
import mmap
import os
import pickle
import struct
import zipfile
from collections import OrderedDict, defaultdict
from typing import Any

import numpy as np

__all__ = ["CheckpointError", "MemoryBudget", "UnsafePickleError", "module_tensors", "read_torch_file",
           "release_pages", "to_plain"]

_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
MAX_PICKLE_BYTES = 8 << 20     # a LaMa checkpoint's data.pkl is well under 1 MiB
MAX_ZIP_ENTRIES = 100_000      # Big-LaMa's archives hold a few thousand
MAX_NDIM = 8
_MAX_KEY_NODES = 64            # elements of one dict key / set element (tuples included)
_INT_HASH_LIMIT = (1 << 61) - 1  # ints beyond it share hashes (hash(i) = i mod 2**61 - 1)


class CheckpointError(ValueError):
    """Any problem with a checkpoint file; the message names the file and the problem.

    Defined here, in the reader that depends on nothing but numpy, and public as
    `jax_refine.CheckpointError` (`checkpoint`)."""


class UnsafePickleError(CheckpointError):
    """The pickle tried to call or instantiate a global that is not allowed."""


class MemoryBudget:
    """Bytes that what a file says may make the reader and converter allocate (decompressed
    entries, copies of strided tensors, widened bfloat16, converted weights): at most twice
    the file's size plus 64 MiB. `charge` refuses an allocation before it is made."""

    SLACK = 64 << 20

    def __init__(self, file_size: int):
        self.file_size, self.limit, self.used = file_size, 2 * file_size + self.SLACK, 0

    def charge(self, nbytes: int, what: str) -> None:
        if self.used + nbytes > self.limit:
            raise CheckpointError(
                f"{what} needs {nbytes:,} bytes, beyond what a file of {self.file_size:,} bytes may use "
                f"({self.limit:,} bytes: twice its size + 64 MiB, {self.used:,} already used)")
        self.used += nbytes


def _describe(obj) -> str:
    """A short name for an object from the file (never its repr, which may be huge)."""
    if isinstance(obj, (_PlaceholderMeta, _Placeholder)):
        return repr(obj)
    if isinstance(obj, (str, bytes)) and len(obj) <= 60:
        return repr(obj)
    return type(obj).__name__


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
    """Sealed wrapper of an allowlisted function; called with the reader and the arguments."""

    __slots__ = ("name", "func")

    def __repr__(self):
        return f"<allowed {self.name}>"


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
            raw = self.reader.entry_bytes(self.key, self.numel * self.stype.dtype.itemsize)
            arr = np.frombuffer(raw, self.stype.dtype, self.numel)
            if self.stype.name == "BFloat16Storage":
                self.reader.budget.charge(4 * self.numel, f"widening bfloat16 storage {self.key!r}")
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
                release_pages(raw)
            object.__setattr__(self, "_array", arr)
        return self._array


def _geometry(storage, offset, size, stride) -> tuple[tuple, tuple]:
    """(size, stride) as int tuples, checked: at most MAX_NDIM dims, values in [0, 2**62)."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor storage is a {_describe(storage)}, not a storage")
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
            and len(size) == len(stride) <= MAX_NDIM):
        raise CheckpointError("bad tensor geometry: size and stride must be sequences of equal length "
                              f"<= {MAX_NDIM}")
    size, stride = tuple(size), tuple(stride)
    if not all(type(v) is int and 0 <= v < 1 << 62 for v in (offset, *size, *stride)):
        raise CheckpointError(f"bad tensor geometry size={size} stride={stride} offset={_describe(offset)}")
    return size, stride


def _rebuild_tensor_v2(reader, storage, storage_offset, size, stride, *_grad_hooks_metadata):
    """Return the tensor as an ndarray: a C-contiguous view of the storage, or a copy."""
    size, stride = _geometry(storage, storage_offset, size, stride)
    flat = storage.array()
    if 0 in size:
        return np.zeros(size, flat.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise CheckpointError(f"tensor (size={size}, stride={stride}, offset={storage_offset}) exceeds "
                              f"storage {storage.key!r} of {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(flat[storage_offset:], size, [s * flat.itemsize for s in stride])
    if view.flags.c_contiguous:
        return view
    reader.budget.charge(int(np.prod(size, dtype=object)) * flat.itemsize,
                         f"a strided tensor of size {size} over storage {storage.key!r}")
    copy = view.copy()
    release_pages(flat)
    return copy


def _rebuild_parameter(reader, data, *_grad_hooks_state):
    """``torch.nn.Parameter`` is just its data here."""
    return data


def _rebuild_from_type_v2(reader, func, new_type, args, state):
    """Tensor subclasses: rebuild the plain tensor (``func`` must itself be allowlisted)."""
    if not isinstance(func, _Func) or not isinstance(args, tuple):
        raise UnsafePickleError(f"refusing _rebuild_from_type_v2 with {_describe(func)}")
    return reader.call(func, args)


def _safe_reconstructor(reader, cls, base, state):
    """``copyreg._reconstructor`` restricted to placeholder classes (no code runs)."""
    if isinstance(cls, _PlaceholderMeta):
        return cls.__new__(cls, base, state)
    raise UnsafePickleError(f"refusing copyreg._reconstructor for {_describe(cls)}")


# ----------------------------------------------------- plain values, checked
def _check_key(reader, key) -> None:
    """Refuse a dict key / set element whose hash is costly or collides by construction."""
    todo, seen = [key], 0
    while todo:
        item = todo.pop()
        seen += 1
        if seen > _MAX_KEY_NODES:
            raise CheckpointError(f"a dict key or set element has more than {_MAX_KEY_NODES} parts")
        if type(item) is tuple:
            todo.extend(item)
        elif type(item) is int and not -_INT_HASH_LIMIT < item < _INT_HASH_LIMIT:
            raise CheckpointError("an integer dict key or set element beyond 2**61 is refused")
        elif not isinstance(item, (str, bytes, bool, int, float, type(None), frozenset, np.dtype,
                                   _Sealed, _Placeholder, _PlaceholderMeta)):
            raise CheckpointError(f"a dict key or set element of type {_describe(item)} is refused")
    reader.spend(seen)


def _items(reader, iterable, what) -> list:
    """The elements of a list/tuple/set/dict argument, charged to the work budget."""
    if not isinstance(iterable, (list, tuple, set, frozenset, dict, str, bytes, bytearray)):
        raise CheckpointError(f"{what} of a {_describe(iterable)} is refused")
    reader.spend(len(iterable))
    return list(iterable)


def _pairs(reader, args, what) -> list:
    if not args:
        return []
    if len(args) != 1:
        raise CheckpointError(f"{what} takes one argument")
    source = args[0]
    items = list(source.items()) if isinstance(source, dict) else _items(reader, source, what)
    reader.spend(len(items))
    if not all(type(p) is tuple and len(p) == 2 for p in items):
        raise CheckpointError(f"{what} needs (key, value) pairs")
    for key, _ in items:
        _check_key(reader, key)
    return items


def _new_dict(reader, *args):
    return dict(_pairs(reader, args, "dict()"))


def _new_ordered_dict(reader, *args):
    return OrderedDict(_pairs(reader, args, "OrderedDict()"))


def _new_defaultdict(reader, *args):
    """A defaultdict without its factory (nothing here ever indexes a missing key)."""
    return defaultdict(None)


def _hashed(reader, args, kind):
    items = _items(reader, args[0], f"{kind.__name__}()") if args else []
    for item in items:
        _check_key(reader, item)
    return kind(items)


def _new_set(reader, *args):
    return _hashed(reader, args, set)


def _new_frozenset(reader, *args):
    return _hashed(reader, args, frozenset)


def _new_list(reader, *args):
    return _items(reader, args[0], "list()") if args else []


def _new_tuple(reader, *args):
    return tuple(_items(reader, args[0], "tuple()")) if args else ()


def _new_number(kind):
    def build(reader, *args):
        if not all(isinstance(a, (int, float, str, bytes)) for a in args) or len(args) > 2:
            raise CheckpointError(f"{kind.__name__}() of {', '.join(_describe(a) for a in args)} is refused")
        return kind(*args)
    return build


def _new_str(reader, *args):
    if not args:
        return ""
    if isinstance(args[0], str) and len(args) == 1:
        return args[0]
    if isinstance(args[0], (bytes, bytearray)) and len(args) in (2, 3) and all(isinstance(a, str) for a in args[1:]):
        return str(*args)
    raise CheckpointError(f"str() of {_describe(args[0])} is refused")


def _byte_string(reader, args, kind):
    """bytes/bytearray from nothing, bytes, a (str, 'latin-1') pair or a list of ints; never
    from an int (which would allocate that many bytes)."""
    if not args:
        return kind()
    source = args[0]
    if isinstance(source, (bytes, bytearray)) and len(args) == 1:
        return kind(source)
    if isinstance(source, str) and len(args) == 2 and args[1] in ("latin-1", "latin1"):
        return kind(source, "latin-1")
    if isinstance(source, (list, tuple)) and len(args) == 1:
        return kind(_items(reader, source, f"{kind.__name__}()"))
    raise CheckpointError(f"{kind.__name__}() of {_describe(source)} is refused")


def _new_bytes(reader, *args):
    return _byte_string(reader, args, bytes)


def _new_bytearray(reader, *args):
    return _byte_string(reader, args, bytearray)


def _codecs_encode(reader, text, encoding="utf-8", errors="strict"):
    """``_codecs.encode(str, 'latin1')``: how protocol-2 pickles store ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode of {_describe(text)} with {_describe(encoding)}")
    reader.spend(len(text))
    return text.encode("latin-1")


def _identity(reader, value, *_type_tag):
    """``torch.jit._pickle.build_intlist`` & co. and ``restore_type_tag``: the value itself."""
    return value


def _tensor_from_id(reader, data):
    return data if type(data) is int else None


def _func(name, func) -> _Func:
    return _Func(name=name, func=func)


# The only globals resolved to real objects; everything else becomes a placeholder.
# Deliberately absent: eval, exec, getattr, __import__, open, os.*, subprocess.*, ...
# Every callable is one of our checked functions; dtypes and storage types are inert values.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _func("OrderedDict", _new_ordered_dict),
    ("collections", "defaultdict"): _func("defaultdict", _new_defaultdict),
    ("_codecs", "encode"): _func("_codecs.encode", _codecs_encode),
    ("copyreg", "_reconstructor"): _func("copyreg._reconstructor", _safe_reconstructor),
    ("torch._utils", "_rebuild_tensor_v2"): _func("_rebuild_tensor_v2", _rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _func("_rebuild_parameter", _rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _func("_rebuild_parameter_with_state", _rebuild_parameter),
    ("torch._tensor", "_rebuild_from_type_v2"): _func("_rebuild_from_type_v2", _rebuild_from_type_v2),
    ("torch.jit._pickle", "build_tensor_from_id"): _func("build_tensor_from_id", _tensor_from_id),
}
_ALLOWED.update({("torch.jit._pickle", n): _func(n, _identity) for n in (
    "build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag")})
_BUILTINS = {"dict": _new_dict, "list": _new_list, "tuple": _new_tuple, "set": _new_set,
             "frozenset": _new_frozenset, "int": _new_number(int), "long": _new_number(int),
             "float": _new_number(float), "complex": _new_number(complex), "bool": _new_number(bool),
             "str": _new_str, "bytes": _new_bytes, "bytearray": _new_bytearray}
_ALLOWED.update({(m, n): _func(n, f) for m in ("builtins", "__builtin__") for n, f in _BUILTINS.items()})
_ALLOWED.update({("torch", n): t for n, t in _STORAGE_TYPES.items()})
_ALLOWED.update({("torch", n): d for n, d in _TORCH_DTYPES.items()})


# ---------------------------------------------------------------------- reader
_DISPATCH = dict(pickle._Unpickler.dispatch)


def _opcode(op: bytes):
    def register(method):
        _DISPATCH[op[0]] = method
        return method
    return register


class _Reader(pickle._Unpickler):
    """Restricted pure-Python unpickler over one open zip archive (see the module docstring)."""

    dispatch = _DISPATCH

    def __init__(self, zf: zipfile.ZipFile, mm: mmap.mmap, root: str, budget: MemoryBudget):
        info = zf.getinfo(root + "data.pkl")
        if info.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"{info.filename} holds {info.file_size:,} bytes of pickle, more than the "
                                  f"{MAX_PICKLE_BYTES:,} any LaMa checkpoint needs")
        budget.charge(info.file_size, info.filename)
        data = zf.read(info)
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self.zf, self.mm, self.root, self.budget = zf, mm, root, budget
        self.storages: dict[str, _Storage] = {}
        self.work, self.work_limit = 0, 4 * len(data) + 1_000_000

    def spend(self, steps: int) -> None:
        """Charge copies and hashing to a work budget linear in the pickle's size."""
        self.work += steps
        if self.work > self.work_limit:
            raise CheckpointError(f"the pickle asks for more than {self.work_limit:,} steps of work "
                                  f"(shared references copied over and over?)")

    def call(self, func, args):
        if isinstance(func, _Func):
            return func.func(self, *args)
        if isinstance(func, _PlaceholderMeta):
            func(*args)  # refuses
        raise UnsafePickleError(f"refusing to call a {_describe(func)}")

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        return _placeholder(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and type(pid[4]) is int and pid[4] >= 0):
            raise CheckpointError(f"unsupported persistent id (a {_describe(pid)})")
        _, stype, key, _location, numel = pid
        if self.root + "data/" + key not in self.zf.NameToInfo:
            raise CheckpointError(f"missing storage entry {self.root}data/{key}")
        if key not in self.storages:
            self.storages[key] = _Storage(self, stype, key, numel)
        return self.storages[key]

    def entry_bytes(self, key: str, need: int):
        """Bytes of a storage entry (at least `need`): an mmap slice if stored, else a
        decompressed copy charged to the budget."""
        info = self.zf.getinfo(self.root + "data/" + key)
        if info.file_size < need:
            raise CheckpointError(f"storage {key!r} has {info.file_size} bytes, needs {need}")
        if info.compress_type != zipfile.ZIP_STORED:
            self.budget.charge(info.file_size, f"decompressing {info.filename}")
            return bytearray(self.zf.read(info))
        head = self.mm[info.header_offset:info.header_offset + 30]
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise CheckpointError(f"corrupt local header for {info.filename}")
        start = (info.header_offset + 30 + int.from_bytes(head[26:28], "little")
                 + int.from_bytes(head[28:30], "little"))
        if start + info.file_size > len(self.mm):
            raise CheckpointError(f"entry {info.filename} runs past the end of the file")
        return memoryview(self.mm)[start:start + info.file_size]

    # --- opcodes that call, hash, copy or mutate: checked versions -----------------
    @_opcode(pickle.REDUCE)
    def load_reduce(self):
        args = self.stack.pop()
        if not isinstance(args, tuple):
            raise CheckpointError("REDUCE arguments are not a tuple")
        self.stack[-1] = self.call(self.stack[-1], args)

    def _instantiate(self, klass, args):  # INST and OBJ
        if isinstance(klass, _PlaceholderMeta) and not args:
            self.append(klass.__new__(klass))
        else:
            self.append(self.call(klass, tuple(args)))

    @_opcode(pickle.NEWOBJ)
    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    @_opcode(pickle.NEWOBJ_EX)
    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _new(self, cls, args, kwargs):
        if not isinstance(cls, _PlaceholderMeta) or not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise UnsafePickleError(f"refusing NEWOBJ of {_describe(cls)}")
        return cls.__new__(cls, *args, **kwargs)

    @_opcode(pickle.BUILD)
    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _Placeholder):
            inst.__setstate__(state)
        elif type(inst) is OrderedDict and isinstance(state, dict):  # e.g. a state_dict's _metadata
            if not all(type(k) is str and not k.startswith("__") for k in state):
                raise CheckpointError("an OrderedDict's state must have plain attribute names")
            self.spend(len(state))
            vars(inst).update(state)
        else:
            raise UnsafePickleError(f"refusing to BUILD a {_describe(inst)}")

    def _target(self, kind, what):
        target = self.stack[-1]
        if not isinstance(target, kind):
            raise CheckpointError(f"{what} on a {_describe(target)}")
        return target

    @_opcode(pickle.DICT)
    def load_dict(self):
        items = self.pop_mark()
        self.append({})
        self._set_items(items)

    @_opcode(pickle.SETITEM)
    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items([key, value])

    @_opcode(pickle.SETITEMS)
    def load_setitems(self):
        self._set_items(self.pop_mark())

    def _set_items(self, items):
        target = self._target(dict, "SETITEM")
        if len(items) % 2:
            raise CheckpointError("SETITEMS with an odd number of items")
        for i in range(0, len(items), 2):
            _check_key(self, items[i])
            target[items[i]] = items[i + 1]

    @_opcode(pickle.ADDITEMS)
    def load_additems(self):
        items = self.pop_mark()
        target = self._target(set, "ADDITEMS")
        for item in items:
            _check_key(self, item)
        target.update(items)

    @_opcode(pickle.FROZENSET)
    def load_frozenset(self):
        items = self.pop_mark()
        for item in items:
            _check_key(self, item)
        self.append(frozenset(items))

    @_opcode(pickle.APPEND)
    def load_append(self):
        value = self.stack.pop()
        self._target(list, "APPEND").append(value)

    @_opcode(pickle.APPENDS)
    def load_appends(self):
        items = self.pop_mark()
        self._target(list, "APPENDS").extend(items)

    @_opcode(pickle.PUT)
    def load_put(self):
        index = int(self.readline()[:-1])
        if not 0 <= index < 1 << 32:
            raise CheckpointError("PUT index out of range")
        self.memo[index] = self.stack[-1]

    def get_extension(self, code):  # EXT1/EXT2/EXT4 would reach the process's copyreg registry
        raise UnsafePickleError("refusing a copyreg extension code")


def _zip_entry_count(f, size: int) -> int | None:
    """Entries a zip file's end-of-central-directory record announces (None: no record)."""
    tail_start = max(0, size - (1 << 16) - 22)
    f.seek(tail_start)
    tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        return None
    count = int.from_bytes(tail[at + 10:at + 12], "little")
    locator = at - 20
    if count == 0xFFFF and locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
        f.seek(int.from_bytes(tail[locator + 8:locator + 16], "little"))
        record = f.read(56)
        if record[:4] == b"PK\x06\x06" and len(record) == 56:
            count = int.from_bytes(record[32:40], "little")
    return count


def open_zip(path: str) -> zipfile.ZipFile:
    """A ZipFile of `path`, refused beforehand when its directory announces more than
    MAX_ZIP_ENTRIES entries (each costs memory to list). Raises CheckpointError."""
    with open(path, "rb") as f:
        count = _zip_entry_count(f, os.fstat(f.fileno()).st_size)
    if count is not None and count > MAX_ZIP_ENTRIES:
        raise CheckpointError(f"{path}: the zip directory lists {count:,} entries (at most {MAX_ZIP_ENTRIES:,} "
                              "are read)")
    try:
        return zipfile.ZipFile(path)
    except OSError:  # a seek before the file's start: its directory points outside the file
        raise CheckpointError(f"{path}: truncated or corrupt zip file (its directory points outside the file)") from None
    except (zipfile.BadZipFile, ValueError, EOFError, struct.error, NotImplementedError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt zip file ({str(exc)[:200]})") from None


def read_torch_file(path: str | os.PathLike, budget: MemoryBudget | None = None) -> Any:
    """Unpickle a torch zip-format file without torch and without executing code from it.

    Tensors come back as numpy arrays (C-contiguous, correct dtype/shape; 0-d for scalars);
    a TorchScript archive comes back as its placeholder module (see `module_tensors`).
    Allocations are charged to `budget` (default: one for this file's size).
    Raises CheckpointError (UnsafePickleError for refused globals) naming the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(16)
            if not zipfile.is_zipfile(f):
                if head[:1] == b"\x80" and head[2:4] == b"\x8a\x0a" and head[4:14] == _LEGACY_MAGIC:
                    raise CheckpointError("legacy (pre-1.6) torch format is unsupported; "
                                          "re-save it with torch>=1.6 (torch.save default)")
                if head[:4] == b"PK\x03\x04":
                    raise CheckpointError("truncated or corrupt zip file")
                raise CheckpointError("not a torch checkpoint (zip) file")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        budget = budget or MemoryBudget(size)
        with open_zip(path) as zf:
            pkls = [n for n in zf.namelist() if n.endswith("/data.pkl")]
            if len(pkls) != 1:
                raise CheckpointError(f"expected one '<root>/data.pkl' entry, found {len(pkls)}")
            root = pkls[0][:-len("data.pkl")]
            if root + "byteorder" in zf.NameToInfo:
                order = zf.read(root + "byteorder")[:16].decode("ascii", "replace").strip()
                if order != "little":
                    raise CheckpointError(f"byteorder {order!r} is unsupported (only little)")
            reader = _Reader(zf, mm, root, budget)
            try:
                return reader.load()
            finally:  # storages refer back to the reader: break the cycle at once
                reader.storages.clear()
                reader.memo.clear()
    except CheckpointError as exc:  # raised deep in the reader, mostly without the path
        raise type(exc)(_with_path(path, exc)) from None
    except Exception as exc:  # zipfile/pickle/OS errors: report them as a bad file
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None


def _with_path(path: str, exc: Exception) -> str:
    message = str(exc)
    return message if message.startswith(path + ":") else f"{path}: {message}"


def release_pages(array) -> None:
    """Let the OS drop the file pages behind `array`, a view returned by read_torch_file (or
    a memoryview of the mapping), from memory now instead of when the file is unmapped. The
    pages are re-read from the file if the view is touched again, so writes made through it
    are lost. A no-op for arrays that are not views into a mapped checkpoint.
    """
    base = array  # walk ndarray / as_strided bases down to the memoryview of the mapping
    while not isinstance(base, (memoryview, mmap.mmap)) and getattr(base, "base", None) is not None:
        base = base.base
    mm = base.obj if isinstance(base, memoryview) else base
    if not isinstance(mm, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED") or mm.closed:
        return
    view = np.asarray(array)
    start = view.__array_interface__["data"][0] - np.frombuffer(mm, np.uint8, 1).__array_interface__["data"][0]
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages only: neighbours keep theirs
    end = (start + view.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if 0 <= first < end <= len(mm):
        mm.madvise(mmap.MADV_DONTNEED, first, end - first)


# ------------------------------------------------------- what the file holds
def module_tensors(module, max_depth: int = 64) -> dict[str, np.ndarray]:
    """{dotted attribute path: array} of a TorchScript module read by `read_torch_file`: the
    tensors among the attributes of the module and of its submodules (placeholders of
    ``__torch__.*`` classes), each object visited once, as torch's state_dict names them.
    Modules with a custom ``__getstate__`` (non-dict state) contribute nothing."""
    found, seen = {}, set()
    todo = [("", module, 0)]
    while todo:
        prefix, obj, depth = todo.pop()
        if id(obj) in seen or not isinstance(obj._state, dict):
            continue
        seen.add(id(obj))
        if depth > max_depth:
            raise CheckpointError(f"TorchScript modules nested deeper than {max_depth} levels")
        for name, value in obj._state.items():
            if not isinstance(name, str):
                continue
            if isinstance(value, np.ndarray):
                found.setdefault(prefix + name, value)
            elif isinstance(value, _Placeholder) and value._global.startswith("__torch__."):
                todo.append((prefix + name + ".", value, depth + 1))
    return found


def is_torchscript_module(obj) -> bool:
    return isinstance(obj, _Placeholder) and obj._global.startswith("__torch__.")


def to_plain(obj: Any, max_depth: int = 100, max_nodes: int = 100_000) -> Any:
    """Convert placeholders (OmegaConf DictConfig/ListConfig/ValueNode state) and plain
    containers into plain dicts/lists/scalars, recursively; other placeholders become
    ``'<placeholder module.Name>'``, cycles ``'<cycle>'``. Arrays and scalars are returned
    unchanged. Raises CheckpointError beyond `max_depth` levels or `max_nodes` objects
    (shared references expanded: a 'billion laughs' structure stops here)."""
    count = [0]

    def plain(obj, active, depth):
        if isinstance(obj, _PlaceholderMeta):
            return f"<placeholder {obj._global}>"
        if not isinstance(obj, (_Placeholder, dict, list, tuple, set, frozenset)):
            return obj
        count[0] += 1
        if count[0] > max_nodes:
            raise CheckpointError(f"hyper-parameters with more than {max_nodes:,} objects once shared "
                                  "references are expanded")
        if depth > max_depth:
            raise CheckpointError(f"hyper-parameters nested deeper than {max_depth} levels")
        if id(obj) in active:
            return "<cycle>"
        active = active | {id(obj)}
        if isinstance(obj, _Placeholder):
            state = obj._state if isinstance(obj._state, dict) else {}
            if obj._global.startswith("omegaconf.") and "_content" in state:
                return plain(state["_content"], active, depth + 1)
            if obj._global.startswith("omegaconf.") and "_val" in state:
                return plain(state["_val"], active, depth + 1)
            return f"<placeholder {obj._global}>"
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                key, value = plain(k, active, depth + 1), plain(v, active, depth + 1)
                try:
                    out[key] = value
                except TypeError:  # a key that became unhashable: keep the entry under its type
                    out[_describe(k)] = value
            return out
        items = [plain(v, active, depth + 1) for v in obj]
        if isinstance(obj, list):
            return items
        try:
            return type(obj)(items)
        except TypeError:  # a set whose elements became unhashable
            return items

    return plain(obj, frozenset(), 0)
