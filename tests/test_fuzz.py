"""Fuzz / property tests of the checkpoint reader and the converter (hypothesis).

Whatever the file, reading and converting it must return or raise CheckpointError (nothing
else), never run code from it (a canary file that the payloads try to create never
appears), finish quickly (5 s to read a file, 30 s to convert it) and keep memory flat. The suite runs a fixed (derandomized) set of
examples in well under a minute; `JAX_REFINE_FUZZ_EXAMPLES=N` runs N random examples per
test instead (e.g. 5000 for a long run).
"""

import os
import resource
import struct
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from jax_refine import CheckpointError, convert  # noqa: E402
from jax_refine._sources import open_source  # noqa: E402
from jax_refine._torch_pickle import read_torch_file  # noqa: E402

import torch_writer as tw  # noqa: E402
from conftest import GOLDEN  # noqa: E402

LONG = int(os.environ.get("JAX_REFINE_FUZZ_EXAMPLES", "0"))
READ_SECONDS, CONVERT_SECONDS = 5.0, 30.0  # per example: reading a file; converting it (the promise)
CANARY = Path(tempfile.gettempdir()) / f"jax-refine-fuzz-canary-{os.getpid()}"


def fuzz(examples):
    """hypothesis settings: `examples` fixed examples, or LONG random ones."""
    return settings(max_examples=LONG or examples, derandomize=not LONG, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def flat_memory_and_no_canary():
    CANARY.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < 600e6, f"peak memory grew by {grown / 1e6:.0f} MB"
    assert not CANARY.exists(), "code from a fuzzed file ran"


def read_or_refuse(action, seconds=READ_SECONDS):
    """Run `action`; it may return or raise CheckpointError, within `seconds`."""
    start = time.perf_counter()
    try:
        action()
    except CheckpointError:
        pass
    assert time.perf_counter() - start < seconds


# ---------------------------------------------------------------- random opcode streams

def _s(text):
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


_COMMAND = f"touch {CANARY}"
_GLOBALS = [b"c%s\n%s\n" % (m.encode(), n.encode()) for m, n in [
    ("os", "system"), ("builtins", "eval"), ("builtins", "exec"), ("subprocess", "Popen"), ("builtins", "getattr"),
    ("builtins", "__import__"), ("posix", "system"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"), ("torch._tensor", "_rebuild_from_type_v2"), ("torch", "FloatStorage"),
    ("torch", "BFloat16Storage"), ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("_codecs", "encode"), ("builtins", "bytes"), ("builtins", "bytearray"), ("builtins", "str"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
    ("builtins", "int"), ("copyreg", "_reconstructor"), ("torch.jit._pickle", "build_intlist"),
    ("omegaconf.dictconfig", "DictConfig"), ("numpy.core.multiarray", "_reconstruct")]]
_FIXED = [
    b"N", b"\x88", b"\x89", b"K\x05", b"K\x00", b"J\xff\xff\xff\x7f", b"M\x01\x00", b"I12\n", b"L99L\n", b"F1.5\n",
    b"G" + struct.pack(">d", 2.0 ** 70), b"\x8a\x09" + (2 ** 64).to_bytes(9, "little"), _s("storage"), _s("cpu"),
    _s("0"), _s("latin1"), _s(_COMMAND), _s("_content"), b"C\x02hi", b"S'a'\n",
    b"(", b"t", b"l", b"d", b"]", b"}", b")", b"\x85", b"\x86", b"\x87", b"a", b"e", b"s", b"u", b"\x8f", b"\x90",
    b"\x91", b"0", b"1", b"2", b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"r\x00\x00\x00\x04", b"j\x00\x00\x00\x04",
    b"\x94", b"p1\n", b"g1\n", b"p99999999999999999999\n", b"R", b"\x81", b"\x92", b"b", b"o", b"Q", b"Pxyz\n",
    b"ios\nsystem\n", b"\x93", b"\x82\x01", b"\x95\x00\x00\x00\x00\x00\x00\x00\x10", b"\x96", b"\x97", b"\x98",
    *_GLOBALS]
_TOKENS = st.one_of(st.sampled_from(_FIXED), st.binary(max_size=6))


def _archive(directory, pickle_bytes, storage=bytes(64), compress=zipfile.ZIP_STORED):
    path = Path(directory) / "fuzz.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes, compress_type=compress)
        z.writestr("archive/data/0", storage, compress_type=compress)
        z.writestr("archive/version", "3\n")
    return path


@fuzz(1000)
@given(st.lists(_TOKENS, max_size=60), st.sampled_from([b"\x80\x02", b"\x80\x04", b""]))
def test_random_opcode_streams(tokens, proto):
    with tempfile.TemporaryDirectory() as directory:
        path = _archive(directory, proto + b"".join(tokens) + b".")
        read_or_refuse(lambda: read_torch_file(path))


# --------------------------------------------------------------- random containers: a round trip

_KEYS = st.one_of(st.text(max_size=8), st.integers(-2 ** 60, 2 ** 60), st.tuples(st.integers(0, 9), st.text(max_size=3)))
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 60, 2 ** 60), st.floats(allow_nan=False),
                    st.text(max_size=20), st.binary(max_size=20),
                    hnp.arrays(st.sampled_from([np.float32, np.float16, np.int64, np.float64]),
                               hnp.array_shapes(min_dims=0, max_dims=4, max_side=4)))
_CONTAINERS = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.tuples(inner, inner), st.dictionaries(_KEYS, inner, max_size=5)), max_leaves=30)


def _tensors(obj):
    if isinstance(obj, np.ndarray):
        return tw.Tensor(obj)
    if isinstance(obj, dict):
        return {k: _tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors(v) for v in obj)
    return obj


def _same(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@fuzz(150)
@given(_CONTAINERS, st.sampled_from([2, 3, 4]))
def test_random_containers_read_back_equal(obj, protocol):
    with tempfile.TemporaryDirectory() as directory:
        path = tw.save(Path(directory) / "c.ckpt", _tensors(obj), protocol=protocol)
        assert _same(obj, read_torch_file(path))


# --------------------------------------------------------------------- random zip layouts

_VALID_PICKLE = tw.pickle_bytes({"w": tw.Tensor(np.arange(4, dtype=np.float32), key="0")})[0]
_NAMES = st.sampled_from(["archive/data.pkl", "other/data.pkl", "archive/data/0", "archive/data/1", "archive/byteorder",
                          "archive/version", "archive/code/__torch__.py", "archive/constants.pkl", "data.pkl",
                          "big-lama/models/best.ckpt", "x/y/models/best.ckpt", "__MACOSX/models/best.ckpt",
                          "big-lama/config.yaml", "../escape", "/abs/data.pkl"])
_CONTENT = st.one_of(st.sampled_from([_VALID_PICKLE, b"", bytes(16), b"big", b"\x80\x02}.", b"little"]),
                     st.binary(max_size=64), st.just(b"golden"))


def _content(value):
    return (GOLDEN / "tinylama.ckpt").read_bytes() if value == b"golden" else value


@pytest.mark.filterwarnings("ignore:Duplicate name")
@fuzz(80)
@given(st.lists(st.tuples(_NAMES, _CONTENT, st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])), max_size=6),
       st.one_of(st.none(), st.integers(0, 4000)))
def test_random_zip_layouts(entries, cut):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "layout.zip"
        with zipfile.ZipFile(path, "w") as z:
            for name, content, compress in entries:
                z.writestr(name, _content(content), compress_type=compress)
        if cut is not None:
            path.write_bytes(path.read_bytes()[:cut])

        def read_every_tensor():
            source = open_source(path, scratch=directory)
            for key in list(source.tensors)[:50]:
                source.tensors[key]

        read_or_refuse(read_every_tensor)


# ------------------------------------------------------------------ the converter, mutated files

_GOLDEN_BYTES = (GOLDEN / "tinylama.ckpt").read_bytes()


@fuzz(12)
@given(st.lists(st.tuples(st.integers(0, len(_GOLDEN_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.one_of(st.none(), st.integers(0, len(_GOLDEN_BYTES))))
def test_converter_on_mutated_checkpoints(flips, cut):
    data = bytearray(_GOLDEN_BYTES)
    for offset, value in flips:
        data[offset] = value
    with tempfile.TemporaryDirectory() as directory:
        src = Path(directory) / "mutated.ckpt"
        src.write_bytes(bytes(data[:cut]))
        read_or_refuse(lambda: convert(src, Path(directory) / "out"), CONVERT_SECONDS)
        assert not list(Path(directory).glob(".out.*"))


_GOLDEN_STATE, _GOLDEN_HP = tw.golden_checkpoint()


@fuzz(10)
@given(st.dictionaries(st.sampled_from(sorted(_GOLDEN_STATE)),
                       hnp.arrays(st.sampled_from([np.float32, np.float16, np.float64, np.int64, np.complex64, bool]),
                                  hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)),
                       min_size=1, max_size=4),
       st.lists(st.sampled_from(sorted(_GOLDEN_STATE)), max_size=3))
@pytest.mark.slow
def test_converter_on_random_tensors(replaced, removed):
    """The golden generator with some tensors replaced by random shapes and dtypes, some removed."""
    state = {k: v for k, v in {**_GOLDEN_STATE, **replaced}.items() if k not in removed}
    with tempfile.TemporaryDirectory() as directory:
        src = tw.save(Path(directory) / "random.ckpt", tw.lightning(state, _GOLDEN_HP))
        read_or_refuse(lambda: convert(src, Path(directory) / "out"), CONVERT_SECONDS)
