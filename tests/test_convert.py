"""The converter: every container, strictness, safety, atomic output, and torch-free operation."""

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jax_refine import CheckpointError, UnsafePickleError, convert, load
from jax_refine.checkpoint import FORMAT
from jax_refine.convert import read_generator
from jax_refine.model import count_parameters

import lama_files
from conftest import GOLDEN

CONTAINERS = ["tinylama.ckpt", "tinylama_omegaconf.ckpt", "tinylama_generator_state_dict.pth"]
REPO = Path(__file__).resolve().parents[1]


def leftovers(directory):
    return [p.name for p in Path(directory).iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("container", CONTAINERS)
def test_every_container_converts_to_the_same_model(container, tmp_path, tiny_checkpoint):
    dst = convert(GOLDEN / container, tmp_path / "out")
    meta = json.loads((dst / "jax_refine.json").read_text())
    assert meta["format"] == FORMAT
    assert meta["config"] == {"architecture": "ffc_resnet", "ngf": 8, "n_downsampling": 3, "n_blocks": 2,
                              "ratio": 0.75, "input_nc": 4, "output_nc": 3, "max_features": 1024,
                              "hole_fill": "zeros", "output": "sigmoid", "refine_defaults": []}
    assert meta["source"]["file"] == container and len(meta["source"]["sha256"]) == 64
    model, reference = load(dst), load(tiny_checkpoint)
    assert count_parameters(model) == 135_571
    from flax import nnx
    for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(reference))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def _write_checkpoint(path, obj, root="archive"):
    """A torch zip-format file holding `obj` (numpy arrays become torch tensors)."""
    torch = pytest.importorskip("torch")

    def to_torch(x):
        if isinstance(x, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(x))
        if isinstance(x, dict):
            return {k: to_torch(v) for k, v in x.items()}
        return x

    torch.save(to_torch(obj), path)
    return path


def _golden_generator():
    state, hparams = read_generator(GOLDEN / "tinylama.ckpt")
    return {k: np.array(v) for k, v in state.items()}, hparams


@pytest.mark.slow
def test_big_lama_layout_converts_to_exactly_50975875_parameters(tmp_path):
    rng = np.random.default_rng(0)
    lines = [l.split("\t") for l in (GOLDEN / "keys_biglama.txt").read_text().splitlines() if not l.startswith("#")]
    state = {}
    for key, shape, dtype in lines:
        shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        state[key] = (np.zeros(shape, np.int64) if dtype == "int64"
                      else rng.standard_normal(shape, dtype=np.float32))
    src = _write_checkpoint(tmp_path / "best.ckpt", {"state_dict": state, "epoch": 1})
    model = load(convert(src, tmp_path / "big-lama"))
    assert count_parameters(model) == 50_975_875
    np.testing.assert_array_equal(  # spot check: torch (O, I, kh, kw) -> (kh, kw, I, O), block 17 stacked last
        np.asarray(model.blocks.conv2.convg2l.kernel[17]),
        state["generator.model.22.conv2.ffc.convg2l.weight"].transpose(2, 3, 1, 0))


def test_shape_mismatch_missing_and_unexpected_keys_are_listed(tmp_path):
    state, _ = _golden_generator()
    state["model.5.conv1.ffc.convl2l.weight"] = np.zeros((16, 16, 1, 1), np.float32)
    del state["model.11.bias"]
    state["model.99.weight"] = np.zeros(3, np.float32)
    src = _write_checkpoint(tmp_path / "bad.pth", state)
    with pytest.raises(CheckpointError) as err:
        convert(src, tmp_path / "out")
    message = str(err.value)
    assert "bad.pth" in message
    assert "missing keys (1)" in message and "model.11.bias" in message
    assert "unexpected keys (1)" in message and "model.99.weight" in message
    assert "mis-shaped keys (1)" in message and "model.5.conv1.ffc.convl2l.weight: (16, 16, 1, 1) (expected (16, 16, 3, 3))" in message
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_non_lama_state_dict_is_refused(tmp_path):
    src = _write_checkpoint(tmp_path / "resnet.pth", {"conv1.weight": np.zeros((8, 3, 3, 3), np.float32)})
    with pytest.raises(CheckpointError, match=r"resnet\.pth: no LaMa generator weights"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_generator_options_are_refused(tmp_path):
    state, hparams = _golden_generator()
    hparams["generator"]["resnet_conv_kwargs"]["enable_lfu"] = True
    src = _write_checkpoint(tmp_path / "lfu.ckpt", {"state_dict": {"generator." + k: v for k, v in state.items()},
                                                    "hyper_parameters": hparams})
    with pytest.raises(CheckpointError, match="unsupported option enable_lfu=True"):
        convert(src, tmp_path / "out")


def test_hyper_parameters_contradicting_the_tensors_are_refused(tmp_path):
    state, hparams = _golden_generator()
    hparams["generator"]["n_blocks"] = 18
    src = _write_checkpoint(tmp_path / "h.ckpt", {"state_dict": {"generator." + k: v for k, v in state.items()},
                                                  "hyper_parameters": hparams})
    with pytest.raises(CheckpointError, match="n_blocks=18 in hyper_parameters but the tensors imply 2"):
        convert(src, tmp_path / "out")


class _Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("payload", ["reduce", "eval"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    obj = (_Exploit(f"touch {marker}") if payload == "reduce"
           else type("E", (), {"__reduce__": lambda self: (eval, (f"__import__('os').system('touch {marker}')",))})())
    src = tmp_path / "evil.ckpt"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"state_dict": obj}, protocol=2))
        z.writestr("evil/version", "3\n")
    with pytest.raises(UnsafePickleError, match="evil.ckpt: refusing to call"):
        convert(src, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_files_give_a_clear_error_and_no_output(tmp_path, damage):
    data = (GOLDEN / "tinylama.ckpt").read_bytes()
    data = {"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage]
    src = tmp_path / f"{damage}.ckpt"
    src.write_bytes(data)
    with pytest.raises(CheckpointError, match=f"{damage}.ckpt"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_existing_destination_is_not_overwritten(tmp_path):
    dst = tmp_path / "out"
    convert(GOLDEN / "tinylama.ckpt", dst)
    before = (dst / "jax_refine.json").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already exists"):
        convert(GOLDEN / "tinylama_generator_state_dict.pth", dst)
    assert (dst / "jax_refine.json").stat().st_mtime_ns == before
    convert(GOLDEN / "tinylama_generator_state_dict.pth", dst, overwrite=True)  # a previous checkpoint: replaced
    assert json.loads((dst / "jax_refine.json").read_text())["source"]["file"] == "tinylama_generator_state_dict.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _lama_folder(tmp_path):
    folder = tmp_path / "big-lama"
    (folder / "models").mkdir(parents=True)
    (folder / "config.yaml").write_text("generator: {}\n")
    (folder / "models" / "best.ckpt").write_bytes((GOLDEN / "tinylama.ckpt").read_bytes())
    (folder / "models" / "notes.txt").write_text("mine")
    return folder


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["models", "folder", "same-file"])
def test_overwrite_never_replaces_a_folder_holding_the_source(tmp_path, where):
    """Issue 15.1: `convert big-lama/models/best.ckpt big-lama/models --overwrite` deleted the folder."""
    folder = _lama_folder(tmp_path)
    before = _tree(folder)
    src = folder / "models" / "best.ckpt"
    dst = {"models": folder / "models", "folder": folder, "same-file": src}[where]
    with pytest.raises(FileExistsError, match="holds the source"):
        convert(src, dst, overwrite=True)
    assert _tree(folder) == before
    assert not [p for p in tmp_path.rglob("*.partial")]


def test_overwrite_replaces_only_a_jax_refine_checkpoint(tmp_path):
    user_dir = tmp_path / "photos"
    user_dir.mkdir()
    (user_dir / "a.png").write_bytes(b"png")
    user_file = tmp_path / "notes.txt"
    user_file.write_text("keep")
    checkpoint_plus = tmp_path / "ckpt"
    convert(GOLDEN / "tinylama.ckpt", checkpoint_plus)
    (checkpoint_plus / "mine.txt").write_text("keep")
    for dst, reason in [(user_dir, r"holds other files \(a.png\)"), (user_file, "not a directory"),
                        (checkpoint_plus, r"holds other files \(mine.txt\)")]:
        with pytest.raises(FileExistsError, match=reason):
            convert(GOLDEN / "tinylama.ckpt", dst, overwrite=True)
    assert (user_dir / "a.png").read_bytes() == b"png" and user_file.read_text() == "keep"
    assert (checkpoint_plus / "mine.txt").read_text() == "keep"


def test_load_refuses_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a jax-refine checkpoint"):
        load(tmp_path)


def assert_same_model(dst, tiny_checkpoint):
    from flax import nnx

    model, reference = load(dst), load(tiny_checkpoint)
    for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(reference))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """{format: path} of the published formats (TorchScript only with torch installed)."""
    root = tmp_path_factory.mktemp("published")
    paths = {"zip": lama_files.lama_zip(root / "big-lama.zip"), "folder": lama_files.lama_folder(root / "big-lama"),
             "safetensors": lama_files.safetensors(root / "big-lama.safetensors")}
    if lama_files.torch is not None:
        paths["torchscript"] = lama_files.torchscript(root / "big-lama.pt")
    return paths


@pytest.mark.parametrize("kind", ["torchscript", "zip", "folder", "safetensors"])
def test_published_formats_convert_to_the_same_model(published, kind, tmp_path, tiny_checkpoint):
    if kind not in published:
        pytest.skip("torch makes the TorchScript fixture")
    dst = convert(published[kind], tmp_path / "out")
    meta = json.loads((dst / "jax_refine.json").read_text())
    assert meta["source"]["format"] == {"torchscript": "torchscript", "zip": "lama-zip", "folder": "lama-folder",
                                        "safetensors": "safetensors"}[kind]
    assert_same_model(dst, tiny_checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging dir, no extracted file left


@pytest.mark.slow
def test_formats_are_recognised_by_content_not_name(published, tmp_path, tiny_checkpoint):
    for kind, path in published.items():
        if path.is_file():
            disguised = tmp_path / f"{kind}.txt"
            disguised.write_bytes(path.read_bytes())
            assert_same_model(convert(disguised, tmp_path / f"{kind}-out"), tiny_checkpoint)


@pytest.mark.parametrize("prefix", ["model.model.", "model.generator.", "module.", ""])
def test_the_generator_is_found_under_any_prefix(prefix, tmp_path, tiny_checkpoint):
    state, _ = _golden_generator()
    other = {"discriminator.model.0.weight": np.zeros((2, 2), np.float32)}
    src = _write_checkpoint(tmp_path / "prefixed.pth", {prefix + k: v for k, v in state.items()} | other)
    assert_same_model(convert(src, tmp_path / "out"), tiny_checkpoint)


def test_missing_generator_lists_what_was_found(tmp_path):
    state = {f"encoder.layer{i}.weight": np.zeros(2, np.float32) for i in range(5)} | {"head.bias": np.zeros(1)}
    src = _write_checkpoint(tmp_path / "other.pth", state)
    with pytest.raises(CheckpointError, match=r"other\.pth: no LaMa generator weights found") as err:
        convert(src, tmp_path / "out")
    assert "6 entries" in str(err.value) and "encoder.layer0" in str(err.value) and "head.bias" in str(err.value)


def test_torchscript_code_never_runs_even_with_torch_installed(tmp_path, tiny_checkpoint):
    """A TorchScript __setstate__ that creates a canary file on torch.jit.load: the canary
    appears when torch loads the archive (so the payload is live), never when we convert it,
    whatever the file is called."""
    pytest.importorskip("torch")
    canary = tmp_path / "canary"
    src = lama_files.torchscript(tmp_path / "weights.ckpt", canary=canary)
    assert_same_model(convert(src, tmp_path / "out"), tiny_checkpoint)
    from jax_refine.cli import main

    assert main(["convert", str(src), str(tmp_path / "cli-out")]) == 0
    assert not canary.exists()
    subprocess.run([sys.executable, "-c", f"import torch; torch.jit.load({str(src)!r})"], check=True,
                   capture_output=True, timeout=300)
    assert canary.exists()


_NO_TORCH = """
import sys

class Blocker:  # records every attempt to import torch and makes it fail
    attempts = []

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            self.attempts.append(name)
            raise ImportError(f"{name} is blocked for this test")
        return None

sys.meta_path.insert(0, Blocker())
from jax_refine.cli import main
codes = [main(["convert", src, dst]) for src, dst in zip(sys.argv[1::2], sys.argv[2::2])]
print(codes, Blocker.attempts, sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


@pytest.mark.slow
def test_cli_converts_every_published_format_without_torch(published, tmp_path):
    """`jax-refine convert` of TorchScript, the zip, the folder and safetensors in a process
    where importing torch fails: every conversion succeeds and no import of torch is tried."""
    pytest.importorskip("torch")  # to make the TorchScript fixture
    args = [str(a) for kind, path in sorted(published.items()) for a in (path, tmp_path / kind)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", _NO_TORCH, *args], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[0, 0, 0, 0] [] []"
    assert all((tmp_path / kind / "jax_refine.json").is_file() for kind in published)


@pytest.mark.slow
def test_converter_works_where_import_torch_fails(tmp_path):
    script = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import jax_refine
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch importable")
for name in {CONTAINERS!r}:
    jax_refine.convert({str(GOLDEN)!r} + "/" + name, {str(tmp_path)!r} + "/" + name)
    jax_refine.load({str(tmp_path)!r} + "/" + name)
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_cli_convert_script_without_torch(tmp_path):
    """`python convert/convert_lama.py SRC DST` in a clone, with torch unavailable."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('torch is blocked for this test')\n")
    env = dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{REPO}")
    result = subprocess.run([sys.executable, str(REPO / "convert" / "convert_lama.py"), str(GOLDEN / "tinylama.ckpt"),
                             str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "jax_refine.json").is_file()
