"""Tests for jax_refine._torch_pickle: the safe, torch-free checkpoint reader."""
import importlib.util
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = ROOT / "jax_refine" / "_torch_pickle.py"
GOLDEN = ROOT / "tests" / "golden"
CKPT = GOLDEN / "tinylama.ckpt"
OMEGA = GOLDEN / "tinylama_omegaconf.ckpt"
PTH = GOLDEN / "tinylama_generator_state_dict.pth"

# Loaded by file path so the tests depend neither on jax_refine/__init__ nor on jax.
_spec = importlib.util.spec_from_file_location("_torch_pickle_under_test", MODULE_FILE)
tp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tp)

needs_golden = pytest.mark.skipif(not CKPT.exists(), reason="golden fixtures not present")


# ------------------------------------------------------------------- helpers
def leaves(obj, prefix=""):
    """Flatten nested dicts/lists into {path: ndarray} (torch tensors -> numpy)."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(leaves(v, f"{prefix}/{getattr(k, '__name__', k)}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(leaves(v, f"{prefix}/{i}"))
    elif isinstance(obj, np.ndarray):
        out[prefix] = obj
    elif type(obj).__module__.startswith("torch") and hasattr(obj, "numpy"):
        out[prefix] = obj.detach().numpy()
    return out


def assert_same_arrays(ours, ref):
    assert ours.keys() == ref.keys()
    for k in ref:
        assert isinstance(ours[k], np.ndarray) and ours[k].flags.c_contiguous, k
        assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape, k
        np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)


def write_zip(path, pkl, storages=(), root="archive", byteorder=b"little", compress=zipfile.ZIP_STORED):
    """A torch-style zip: <root>/data.pkl, byteorder, version, data/<key> entries."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        if pkl is not None:
            z.writestr(f"{root}/data.pkl", pkl)
        z.writestr(f"{root}/byteorder", byteorder)
        for key, raw in dict(storages).items():
            z.writestr(f"{root}/data/{key}", raw, compress_type=compress)
        z.writestr(f"{root}/version", b"3\n")
    return path


# Hand-assembled protocol-2 opcodes, so tests build tensor pickles without torch.
def _str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(v):
    return b"J" + struct.pack("<i", v)


def _tup(xs):
    return b"(" + b"".join(_int(x) for x in xs) + b"t"


def tensor_op(key, numel, offset, size, stride, stype="FloatStorage"):
    pid = b"(" + _str("storage") + b"ctorch\n" + stype.encode() + b"\n" + _str(key) + _str("cpu") + _int(numel) + b"tQ"
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + _int(offset) + _tup(size) + _tup(stride)
            + b"\x89}tR")


def dict_pickle(**tensors):
    return b"\x80\x02}" + b"".join(_str(k) + v + b"s" for k, v in tensors.items()) + b"."


def crafted_file(tmp_path, compress=zipfile.ZIP_STORED):
    base = np.arange(12, dtype="<f4")
    pkl = dict_pickle(
        full=tensor_op("0", 12, 0, (3, 4), (4, 1)),
        transposed=tensor_op("0", 12, 0, (4, 3), (1, 4)),
        strided=tensor_op("0", 12, 5, (2,), (3,)),
        scalar=tensor_op("0", 12, 7, (), ()),
        empty=tensor_op("0", 12, 0, (0, 3), (3, 1)),
        bf16=tensor_op("1", 3, 0, (3,), (1,), "BFloat16Storage"),
        long=tensor_op("2", 2, 0, (2,), (1,), "LongStorage"),
    )
    bf16 = (np.array([1.5, -2.0, 3.25], "<f4").view("<u4") >> 16).astype("<u2")
    storages = {"0": base.tobytes(), "1": bf16.tobytes(), "2": np.array([7, -9], "<i8").tobytes()}
    expected = {"/full": base.reshape(3, 4), "/transposed": base.reshape(3, 4).T.copy(),
                "/strided": base[[5, 8]], "/scalar": np.array(base[7]), "/empty": np.zeros((0, 3), "f4"),
                "/bf16": np.array([1.5, -2.0, 3.25], "f4"), "/long": np.array([7, -9], "i8")}
    return write_zip(tmp_path / "crafted.pt", pkl, storages, compress=compress), expected


def assert_fails(path, *words, cls=None):
    with pytest.raises(cls or tp.CheckpointError) as info:
        tp.read_torch_file(path)
    msg = str(info.value)
    assert Path(path).name in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


# ------------------------------------------------------------ golden files
@needs_golden
@pytest.mark.parametrize("path", [CKPT, OMEGA, PTH], ids=lambda p: p.name)
def test_golden_tensors_match_torch(path):
    ours = tp.read_torch_file(path)
    torch = pytest.importorskip("torch")
    try:
        ref = torch.load(path, weights_only=False, map_location="cpu")
    except Exception:  # omegaconf / pytorch_lightning not installed: same weights as CKPT
        assert path == OMEGA
        ours = ours["state_dict"]
        ref = torch.load(CKPT, weights_only=False, map_location="cpu")["state_dict"]
    assert_same_arrays(leaves(ours), leaves(ref))


@needs_golden
def test_golden_structure_and_omegaconf_hparams():
    plain, omega, sd = (tp.read_torch_file(p) for p in (CKPT, OMEGA, PTH))
    assert plain.keys() == omega.keys()
    assert plain["pytorch-lightning_version"] == "1.2.9" and plain["epoch"] == 39
    hp = tp.to_plain(omega["hyper_parameters"])
    assert hp == plain["hyper_parameters"] and hp["generator"]["ngf"] == 8
    assert_same_arrays(leaves(omega["state_dict"]), leaves(plain["state_dict"]))
    # PL 1.2 callbacks are keyed by the (placeholder) class ModelCheckpoint.
    (key, state), = omega["callbacks"].items()
    assert isinstance(key, type) and "ModelCheckpoint" in repr(key)
    assert state["best_model_path"] == "/experiments/best.ckpt"
    assert state["best_model_score"].shape == ()
    assert tp.to_plain(omega["callbacks"]) == {
        "<placeholder pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint>": state}
    assert {f"generator.{k}" for k in sd} == {k for k in plain["state_dict"] if k.startswith("generator.")}
    assert plain["state_dict"]["generator.model.1.bn_l.num_batches_tracked"].shape == ()


@needs_golden
def test_reads_without_torch(tmp_path):
    code = (
        "import sys, importlib.util; sys.modules['torch'] = None\n"
        f"spec = importlib.util.spec_from_file_location('m', {str(MODULE_FILE)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"for p in {[str(CKPT), str(OMEGA), str(PTH)]!r}:\n"
        "    sd = m.read_torch_file(p)\n"
        "    sd = sd.get('state_dict', sd)\n"
        "    assert len(sd) > 100 and all(v.dtype.kind in 'fi' for v in sd.values())\n"
        "assert sys.modules['torch'] is None\n"
        "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


@needs_golden
def test_arrays_are_writable_views_that_never_touch_the_file(tmp_path):
    path = tmp_path / "copy.ckpt"
    path.write_bytes(CKPT.read_bytes())
    w = tp.read_torch_file(path)["state_dict"]["generator.model.1.ffc.convl2l.weight"]
    assert w.base is not None and w.flags.writeable  # zero-copy view into the mapping
    before = w.copy()
    w[...] = 0
    again = tp.read_torch_file(path)["state_dict"]["generator.model.1.ffc.convl2l.weight"]
    np.testing.assert_array_equal(again, before)
    assert path.read_bytes() == CKPT.read_bytes()


# --------------------------------------------------------- crafted tensors
@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_crafted_views_offsets_and_dtypes(tmp_path, compress):
    path, expected = crafted_file(tmp_path, compress)
    assert_same_arrays(leaves(tp.read_torch_file(path)), expected)


def test_crafted_file_agrees_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    path, _ = crafted_file(tmp_path)
    ref = leaves(torch.load(path, weights_only=False, map_location="cpu")
                 | {"bf16": torch.zeros(3)})  # torch's bf16 has no numpy twin: checked above
    ours = leaves(tp.read_torch_file(path))
    ours["/bf16"] = np.zeros(3, "f4")
    assert_same_arrays(ours, ref)


def test_torch_saved_parameters_views_and_dtypes(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {"param": torch.nn.Parameter(torch.ones(2, 3)), "dtype": torch.int64, "column": base[:, 1],
           "block": base[1:3, 2:5], "transposed": base.t(), "row": base[2], "half": base.half(),
           "double": base.double(), "int8": base.to(torch.int8), "bool": base > 7,
           "complex": torch.complex(base, -base), "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4)}
    path = tmp_path / "mixed.pth"
    torch.save(obj, path)
    ours = tp.read_torch_file(path)
    assert ours["dtype"] == np.dtype("int64")
    assert_same_arrays(leaves(ours), leaves(obj))


# ---------------------------------------------------------- malicious files
class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    """name -> (pickle bytes that run `touch marker` under plain pickle.loads, refused global)."""
    import builtins
    import subprocess as sp
    cmd = f"touch {marker}"
    popen = _Reduce(sp.Popen, ["touch", str(marker)])
    return {
        "os.system": (pickle.dumps(_Reduce(os.system, cmd), protocol=2), f"{os.system.__module__}.system"),
        "builtins.eval": (pickle.dumps(_Reduce(builtins.eval, f"__import__('os').system({cmd!r})"),
                                       protocol=2), "__builtin__.eval"),
        "subprocess.Popen": (pickle.dumps(popen, protocol=4), "subprocess.Popen"),
        "subprocess.Popen-proto2": (pickle.dumps(popen, protocol=2), ".Popen"),  # py2 name 'commands'
        "os.system-proto0": (b"cos\nsystem\n(S'" + cmd.encode() + b"'\ntR.", "os.system"),
        "exec-via-INST": (b"(S'import os; os.system(\"" + cmd.encode() + b"\")'\nibuiltins\nexec\n.",
                          "builtins.exec"),
        "getattr-chain": (b"\x80\x02cbuiltins\ngetattr\n(cbuiltins\n__import__\n(X\x02\x00\x00\x00ostRX"
                          b"\x06\x00\x00\x00systemtR(" + _str(cmd) + b"tR.", "builtins.__import__"),
    }


@pytest.mark.parametrize("name", list(_payloads("x")))
def test_malicious_pickles_are_refused(tmp_path, name):
    marker = tmp_path / "pwned"
    pkl, refused = _payloads(marker)[name]
    path = write_zip(tmp_path / "evil.ckpt", pkl, root="evil")
    assert_fails(path, "refusing to call", refused, cls=tp.UnsafePickleError)
    assert not marker.exists()


def test_copyreg_reconstructor_only_builds_placeholders(tmp_path):
    real = b"ccopyreg\n_reconstructor\n(c__builtin__\nlist\nc__builtin__\nlist\nNtR."
    assert_fails(write_zip(tmp_path / "rec.pt", real), "_reconstructor", cls=tp.UnsafePickleError)
    inert = b"ccopyreg\n_reconstructor\n(cos\n_wrap_close\nc__builtin__\nobject\nNtR(dS'a'\nI1\nsb."
    obj = tp.read_torch_file(write_zip(tmp_path / "ok.pt", inert))
    assert "os._wrap_close" in repr(obj) and obj._state == {"a": 1}
    assert tp.to_plain(obj) == "<placeholder os._wrap_close>"


def test_placeholder_classes_are_cached_and_inert(tmp_path):
    pkl = b"\x80\x02(cos\nsystem\ncos\nsystem\ncos\nsystem\n)\x81tq\x00."
    a, b, inst = tp.read_torch_file(write_zip(tmp_path / "p.pt", pkl))
    assert a is b and hash(a) == hash(b) and isinstance(inst, a)
    with pytest.raises(tp.UnsafePickleError, match="os.system"):
        a("echo hi")


@pytest.mark.parametrize("target", [
    b"cos\nsystem\n",                               # cached placeholder class
    b"ctorch\nFloatStorage\n",                      # shared dtype marker
    b"ctorch._utils\n_rebuild_tensor_v2\n",          # allowlisted function
    b"(" + _str("storage") + b"ctorch\nFloatStorage\n" + _str("0") + _str("cpu") + _int(1) + b"tQ",
], ids=["placeholder", "storage-type", "function", "storage"])
@pytest.mark.parametrize("state", [b"(N}S'numel'\nI99\nstb.", b"}S'numel'\nI99\nsb."], ids=["slots", "dict"])
def test_build_cannot_mutate_shared_objects(tmp_path, target, state):
    path = write_zip(tmp_path / "build.pt", b"\x80\x02" + target + state, {"0": b"\0" * 4})
    assert_fails(path)
    crafted, expected = crafted_file(tmp_path)  # later reads are unaffected
    assert_same_arrays(leaves(tp.read_torch_file(crafted)), expected)


# ------------------------------------------------------------- broken files
def test_not_a_zip(tmp_path):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    assert_fails(tmp_path / "empty.ckpt", "not a torch checkpoint")
    (tmp_path / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    assert_fails(tmp_path / "random.ckpt", "not a torch checkpoint")
    assert_fails(tmp_path / "missing.ckpt")


def test_legacy_format(tmp_path):
    path = tmp_path / "legacy.pt"
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"\x80\x02}.")
    assert_fails(path, "legacy", "re-save")


@needs_golden
def test_truncated_golden(tmp_path):
    raw = CKPT.read_bytes()
    path = tmp_path / "half.ckpt"
    path.write_bytes(raw[: len(raw) // 2])
    assert_fails(path, "truncated")


def test_zip_without_data_pkl(tmp_path):
    assert_fails(write_zip(tmp_path / "nopkl.ckpt", None, {"0": b"\0" * 4}), "data.pkl")


def test_corrupt_pickle(tmp_path):
    pkl = dict_pickle(a=tensor_op("0", 1, 0, (), ()))[:-9]
    assert_fails(write_zip(tmp_path / "cut.ckpt", pkl, {"0": b"\0" * 4}), "unreadable")


def test_big_endian_refused(tmp_path):
    assert_fails(write_zip(tmp_path / "be.ckpt", b"\x80\x02}.", byteorder=b"big"), "byteorder")


def test_missing_storage(tmp_path):
    path = write_zip(tmp_path / "nostorage.ckpt", dict_pickle(w=tensor_op("7", 4, 0, (4,), (1,))))
    assert_fails(path, "missing storage", "data/7")


@pytest.mark.parametrize("offset,size,stride,numel,nbytes", [
    (0, (5,), (1,), 4, 16),        # size larger than storage
    (2, (2, 2), (2, 1), 4, 16),    # offset pushes the view out
    (0, (2, 3), (4, 1), 4, 16),    # stride walks out
    (0, (4,), (1,), 4, 8),         # entry shorter than numel says
])
def test_view_outside_storage(tmp_path, offset, size, stride, numel, nbytes):
    pkl = dict_pickle(w=tensor_op("0", numel, offset, size, stride))
    path = write_zip(tmp_path / "oob.ckpt", pkl, {"0": b"\0" * nbytes})
    assert_fails(path, "storage")


# ------------------------------------------------------------------ to_plain
def test_to_plain_containers():
    Node = tp._placeholder("omegaconf.nodes", "AnyNode")
    node = Node.__new__(Node)
    node.__setstate__({"_val": 3, "_metadata": None})
    cyc = []
    cyc.append(cyc)
    assert tp.to_plain({"a": (node, [node]), "b": tp._placeholder("typing", "Any"), "c": cyc}) == {
        "a": (3, [3]), "b": "<placeholder typing.Any>", "c": ["<cycle>"]}
