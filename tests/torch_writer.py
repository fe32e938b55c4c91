"""torch.save's zip format written without torch, for hostile and malformed test files.

`save(path, obj)` pickles `obj` (with Python's pure-Python pickler) into `<root>/data.pkl`
and writes each tensor's storage as `<root>/data/<key>`, as torch.save does. Besides plain
containers, `obj` may hold:
- `Tensor(array)` (or with an explicit storage key, offset, size and stride): pickled as
  `torch._utils._rebuild_tensor_v2` over a persistent storage id;
- `Instance(module, name, state)`: an object of the class module.name (NEWOBJ + BUILD), e.g.
  OmegaConf's DictConfig;
- `Global(module, name)`: the global itself;
- `Raw(opcodes)`: pickle opcodes written as they are (they must leave one object on the stack).
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import zipfile
from collections import OrderedDict

import numpy as np

_STORAGE = {"float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage", "int64": "LongStorage",
            "int32": "IntStorage", "uint8": "ByteStorage", "bool": "BoolStorage", "complex64": "ComplexFloatStorage"}


@dataclasses.dataclass(eq=False)
class Global:
    module: str
    name: str

    def __call__(self, *args):  # pickle's save_reduce wants a callable; this one is never called
        raise TypeError(f"{self.module}.{self.name} is a stand-in")


@dataclasses.dataclass(eq=False)
class Instance:
    module: str
    name: str
    state: object


@dataclasses.dataclass(eq=False)
class Raw:
    opcodes: bytes


@dataclasses.dataclass(eq=False)
class Tensor:
    """A tensor over the storage `key` holding `array`'s elements (flattened), viewed with
    `size`/`stride`/`offset` (default: `array`'s own shape, C order)."""

    array: np.ndarray
    key: str | None = None
    size: tuple | None = None
    stride: tuple | None = None
    offset: int = 0


@dataclasses.dataclass(eq=False)
class _Storage:
    key: str
    array: np.ndarray


class _Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, protocol, storages):
        super().__init__(file, protocol)
        self.storages = storages

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            name = _STORAGE[obj.array.dtype.name]
            return ("storage", Global("torch", name), obj.key, "cpu", obj.array.size)
        return None

    def save_global_ref(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def save_instance(self, obj):
        self.save(Global(obj.module, obj.name))
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        self.save(obj.state)
        self.write(pickle.BUILD)

    def save_raw(self, obj):
        self.write(obj.opcodes)

    def save_tensor(self, obj):
        key = obj.key if obj.key is not None else str(len(self.storages))
        array = np.asarray(obj.array, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        storage = self.storages.setdefault(key, _Storage(key, array.reshape(-1)))
        size = tuple(array.shape) if obj.size is None else tuple(obj.size)
        stride = _c_strides(size) if obj.stride is None else tuple(obj.stride)
        self.save_reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                         (storage, obj.offset, size, stride, False, OrderedDict()), obj=obj)

    dispatch[Global] = save_global_ref
    dispatch[Instance] = save_instance
    dispatch[Raw] = save_raw
    dispatch[Tensor] = save_tensor


def _c_strides(size):
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def pickle_bytes(obj, protocol=2) -> tuple[bytes, dict]:
    """(data.pkl bytes, {storage key: flat array}) of `obj`."""
    buffer, storages = io.BytesIO(), {}
    _Pickler(buffer, protocol, storages).dump(obj)
    return buffer.getvalue(), {k: s.array for k, s in storages.items()}


def save(path, obj, *, root="archive", protocol=2, compress=zipfile.ZIP_STORED, storages=None):
    """Write `obj` as a torch zip checkpoint at `path`; `storages` {key: bytes} replace or add
    storage entries (e.g. shorter or huge ones)."""
    data, arrays = pickle_bytes(obj, protocol)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{root}/data.pkl", data)
        z.writestr(f"{root}/byteorder", "little")
        for key, array in arrays.items():
            if storages is None or key not in storages:
                z.writestr(f"{root}/data/{key}", array.tobytes(), compress_type=compress)
        for key, raw in (storages or {}).items():
            z.writestr(f"{root}/data/{key}", raw, compress_type=compress)
        z.writestr(f"{root}/version", "3\n")
    return path


def golden_checkpoint():
    """(state_dict {'generator.<key>': array}, hyper_parameters) of the golden tinylama.ckpt."""
    from jax_refine._sources import open_source

    from conftest import GOLDEN

    source = open_source(GOLDEN / "tinylama.ckpt")
    state = {k: np.array(v) for k, v in source.tensors.items() if k.startswith("generator.")}
    return state, source.hyper_parameters


def lightning(state, hyper_parameters, **extra):
    """A Lightning-style checkpoint dict of `state` (arrays become Tensors)."""
    return {"epoch": 1, "state_dict": {k: v if isinstance(v, (Tensor, Raw)) else Tensor(v) for k, v in state.items()},
            "hyper_parameters": hyper_parameters, **extra}
