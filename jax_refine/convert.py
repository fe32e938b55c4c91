"""LaMa PyTorch checkpoints -> jax-refine checkpoints (orbax), and loading them back.

Reads, without torch: LaMa's Lightning `best.ckpt` and bare generator state_dicts (`.pth`),
through the restricted unpickler of `_torch_pickle` (loading never executes code from the
file). With torch installed it also reads TorchScript archives such as IOPaint's
`big-lama.pt`. The generator configuration is inferred from the tensor shapes and
cross-checked with the checkpoint's `hyper_parameters`; every key and shape is checked
(no silent partial loads).

A jax-refine checkpoint is a directory:
  params/          orbax StandardCheckpointer tree of the Lama state (params + BN statistics)
  jax_refine.json  {"format", "format_version", "config", "source": {file, sha256}, "converter_version"}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import __version__
from ._torch_pickle import CheckpointError, read_torch_file, release_pages, to_plain
from .model import Lama, LamaConfig, abstract_model, eval_mode

FORMAT = "jax-refine-lama"
FORMAT_VERSION = 1
METADATA_FILE = "jax_refine.json"
_IGNORED_SUFFIX = ".num_batches_tracked"

# torch BatchNorm2d attribute -> nnx.BatchNorm variable
_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


# --------------------------------------------------------------------------------------
# The key map: one explicit rule per torch module kind
# --------------------------------------------------------------------------------------


def _conv_kernel(w):  # Conv2d (O, I, kh, kw) -> (kh, kw, I, O)
    return w.transpose(2, 3, 1, 0)


def _up_kernel(w):  # ConvTranspose2d (I, O, kh, kw) -> flipped (kh, kw, I, O), see model.UpConv
    return w.transpose(2, 3, 0, 1)[::-1, ::-1]


def _ffc_rules(torch_prefix, flax_path, module):
    """Rules for one FFC layer (LaMa's FFC_BN_ACT): {torch key: (flax path, transform)}."""
    rules = {}
    for name in ("convl2l", "convl2g", "convg2l"):
        if getattr(module, name) is not None:
            rules[f"{torch_prefix}.ffc.{name}.weight"] = (flax_path + (name, "kernel"), _conv_kernel)
    if module.convg2g is not None:
        g2g_t, g2g_f = f"{torch_prefix}.ffc.convg2g", flax_path + ("convg2g",)
        rules[f"{g2g_t}.conv1.0.weight"] = (g2g_f + ("conv1", "kernel"), _conv_kernel)
        rules.update(_bn_rules(f"{g2g_t}.conv1.1", g2g_f + ("conv1_bn",)))
        rules[f"{g2g_t}.fu.conv_layer.weight"] = (g2g_f + ("fu", "conv_layer", "kernel"), _conv_kernel)
        rules.update(_bn_rules(f"{g2g_t}.fu.bn", g2g_f + ("fu", "bn")))
        rules[f"{g2g_t}.conv2.weight"] = (g2g_f + ("conv2", "kernel"), _conv_kernel)
    for branch in ("bn_l", "bn_g"):
        if getattr(module, branch) is not None:
            rules.update(_bn_rules(f"{torch_prefix}.{branch}", flax_path + (branch,)))
    return rules


def _bn_rules(torch_prefix, flax_path):
    return {f"{torch_prefix}.{t}": (flax_path + (f,), None) for t, f in _BN.items()}


def key_map(config: LamaConfig) -> dict[str, tuple[tuple, callable | None, int | None]]:
    """Every generator state_dict key (without prefix) -> (flax state path, transform, block index).

    Residual blocks are stacked in the Flax model: their keys carry the block index at which
    the converted tensor goes along the leading axis; other keys have block index None.
    Indices follow LaMa's `generator.model` nn.Sequential: 0 pad, 1 stem, 2.. downsampling,
    then the blocks, a concat layer, (ConvTranspose, BN, ReLU) per upsampler, pad, head conv.
    """
    model = abstract_model(config)
    rules = {}
    for torch_key, (path, fn) in _ffc_rules("model.1", ("stem",), model.stem).items():
        rules[torch_key] = (path, fn, None)
    for i, layer in enumerate(model.down):
        for torch_key, (path, fn) in _ffc_rules(f"model.{2 + i}", ("down", i), layer).items():
            rules[torch_key] = (path, fn, None)
    first_block = 2 + config.n_downsampling
    block_module = abstract_model(dataclasses.replace(config, n_blocks=1)).blocks
    for b in range(config.n_blocks):
        for conv in ("conv1", "conv2"):
            layer = getattr(block_module, conv)
            for torch_key, (path, fn) in _ffc_rules(f"model.{first_block + b}.{conv}", ("blocks", conv), layer).items():
                rules[torch_key] = (path, fn, b)
    first_up = first_block + config.n_blocks + 1
    for i in range(config.n_downsampling):
        conv_t, bn_t = f"model.{first_up + 3 * i}", f"model.{first_up + 3 * i + 1}"
        rules[f"{conv_t}.weight"] = (("up", i, "conv", "kernel"), _up_kernel, None)
        rules[f"{conv_t}.bias"] = (("up", i, "conv", "bias"), None, None)
        for torch_key, (path, fn) in _bn_rules(bn_t, ("up", i, "bn")).items():
            rules[torch_key] = (path, fn, None)
    head = f"model.{first_up + 3 * config.n_downsampling + 1}"
    rules[f"{head}.weight"] = (("head", "kernel"), _conv_kernel, None)
    rules[f"{head}.bias"] = (("head", "bias"), None, None)
    return rules


# --------------------------------------------------------------------------------------
# State dict -> config -> Flax state
# --------------------------------------------------------------------------------------

# LaMa generator options that this port does not implement: (config section, key, allowed values)
_UNSUPPORTED = {
    "enable_lfu": (False, None), "gated": (False, None), "use_se": (False, None),
    "spatial_scale_factor": (None,), "spectral_pos_encoding": (False, None), "ffc3d": (False, None),
    "spatial_transform_layers": (None,), "out_ffc": (False, None), "fu_kernel": (1, None),
    "padding_type": ("reflect", None), "groups": (1, None),
}


def infer_config(state_dict: Mapping[str, np.ndarray], hyper_parameters: Mapping | None, source: str) -> LamaConfig:
    """The LamaConfig implied by a generator state_dict's shapes, cross-checked with the
    checkpoint's `hyper_parameters['generator']` when present. Raises CheckpointError."""
    def shape(key):
        if key not in state_dict:
            raise CheckpointError(f"{source}: not a LaMa FFC generator state_dict (no key '{key}')")
        return state_dict[key].shape

    stem = shape("model.1.ffc.convl2l.weight")
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"model\.(\d+)\.conv1\.", k))})
    if not blocks:
        raise CheckpointError(f"{source}: not a LaMa FFC generator state_dict (no residual blocks 'model.N.conv1.*')")
    first = blocks[0]
    local_out = shape(f"model.{first}.conv1.ffc.convl2l.weight")[0]
    global_out = shape(f"model.{first}.conv1.ffc.convl2g.weight")[0]
    n_downsampling = first - 2
    head = first + len(blocks) + 1 + 3 * n_downsampling + 1  # see key_map
    inferred = dict(
        ngf=int(stem[0]), input_nc=int(stem[1]), n_downsampling=n_downsampling, n_blocks=len(blocks),
        ratio=global_out / (local_out + global_out), output_nc=int(shape(f"model.{head}.weight")[0]),
    )
    if any(".lfu." in k or ".se." in k or "gate" in k for k in state_dict):
        raise CheckpointError(f"{source}: the generator uses LFU, SE or gated FFC layers, which jax-refine does not support")
    if hyper_parameters is not None:
        _check_hyper_parameters(inferred, hyper_parameters, source)
    try:
        return LamaConfig(**inferred)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _check_hyper_parameters(inferred, hyper_parameters, source):
    gen = hyper_parameters.get("generator") if isinstance(hyper_parameters, Mapping) else None
    if not isinstance(gen, Mapping):
        return
    problems = []
    if gen.get("kind", "ffc_resnet") != "ffc_resnet":
        problems.append(f"generator kind {gen.get('kind')!r} (only 'ffc_resnet' is supported)")
    if gen.get("add_out_act", "sigmoid") != "sigmoid":
        problems.append(f"add_out_act {gen.get('add_out_act')!r} (only 'sigmoid' is supported)")
    for key in ("ngf", "n_downsampling", "n_blocks", "input_nc", "output_nc"):
        if key in gen and gen[key] != inferred[key]:
            problems.append(f"{key}={gen[key]} in hyper_parameters but the tensors imply {inferred[key]}")
    sections = [gen] + [gen.get(s) or {} for s in ("init_conv_kwargs", "downsample_conv_kwargs", "resnet_conv_kwargs")]
    for section in sections:
        for key, allowed in _UNSUPPORTED.items():
            if key in section and section[key] not in allowed:
                problems.append(f"unsupported option {key}={section[key]!r}")
    resnet = gen.get("resnet_conv_kwargs") or {}
    for key in ("ratio_gin", "ratio_gout"):
        if key in resnet and abs(resnet[key] - inferred["ratio"]) > 1e-3:
            problems.append(f"resnet {key}={resnet[key]} but the tensors imply {inferred['ratio']:.4g}")
    if problems:
        raise CheckpointError(f"{source}: generator configuration not supported: " + "; ".join(problems))


def to_flax_state(state_dict: Mapping[str, np.ndarray], config: LamaConfig, source: str) -> dict[tuple, jax.Array]:
    """Map a generator state_dict (keys without prefix) to flat {flax path: float32 jax array}.

    Each converted array is moved into a jax array at once, so the peak memory is the source
    tensors plus one converted copy (orbax then saves jax arrays without another host copy).

    Strict: raises one CheckpointError listing every missing, unexpected and mis-shaped key.
    """
    rules = key_map(config)
    expected = _flat_shapes(abstract_model(config))
    provided = {k for k in state_dict if not k.endswith(_IGNORED_SUFFIX)}
    missing = sorted(set(rules) - provided)
    unexpected = sorted(provided - set(rules))
    stacked: dict[tuple, list] = {}
    flat, misshaped = {}, []
    for key in sorted(provided & set(rules)):
        path, transform, block = rules[key]
        array = np.asarray(state_dict[key])
        array = transform(array) if transform else array
        want = expected[path][1:] if block is not None else expected[path]
        if array.shape != want:
            misshaped.append(f"{key}: {tuple(state_dict[key].shape)} (expected {_torch_shape(want, transform)})")
            continue
        if block is None:
            flat[path] = _device_array([array], array.shape)
            release_pages(state_dict[key])
        else:
            stacked.setdefault(path, [None] * config.n_blocks)[block] = key
    if missing or unexpected or misshaped:
        raise CheckpointError(_mismatch_message(source, config, missing, unexpected, misshaped))
    for path, keys in stacked.items():
        transform = rules[keys[0]][1]
        arrays = [transform(state_dict[k]) if transform else state_dict[k] for k in keys]
        flat[path] = _device_array(arrays, (len(arrays),) + arrays[0].shape)
        for key in keys:  # keep the peak at about one copy of the weights
            release_pages(state_dict[key])
    return flat


def _device_array(parts, shape) -> jax.Array:
    """float32 jax array of `shape` from `parts` (stacked along a new axis 0 when shape has one
    more dimension than the parts), written once into a 64-byte aligned host buffer, which
    CPU device_put adopts without copying."""
    nbytes = int(np.prod(shape)) * 4
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start : start + nbytes].view(np.float32).reshape(shape)
    if len(shape) == parts[0].ndim:
        out[...] = parts[0]
    else:
        np.stack(parts, out=out)
    return jax.device_put(out)


def _torch_shape(flax_shape, transform):
    if transform is _conv_kernel:
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if transform is _up_kernel:
        kh, kw, i, o = flax_shape
        return (i, o, kh, kw)
    return tuple(flax_shape)


def _mismatch_message(source, config, missing, unexpected, misshaped, limit=20):
    def section(title, items):
        shown = "\n    ".join(items[:limit]) + (f"\n    ... and {len(items) - limit} more" if len(items) > limit else "")
        return f"\n  {title} ({len(items)}):\n    {shown}" if items else ""
    return (f"{source}: the generator weights do not match a LaMa generator with {config}:"
            + section("missing keys", missing) + section("unexpected keys", unexpected)
            + section("mis-shaped keys", misshaped))


def _flat_shapes(model) -> dict[tuple, tuple]:
    from flax import nnx
    return {path: tuple(v.shape) for path, v in nnx.to_flat_state(nnx.state(model))}


# --------------------------------------------------------------------------------------
# Reading source files
# --------------------------------------------------------------------------------------


def read_generator(src: str | os.PathLike) -> tuple[dict[str, np.ndarray], Mapping | None]:
    """(generator state_dict without prefix, hyper_parameters or None) from a LaMa checkpoint.

    Accepts a Lightning checkpoint (`state_dict` with `generator.*` keys), a bare generator
    state_dict, a state_dict with `generator.` prefixes, or (torch required) a TorchScript
    archive with `model.generator.*` keys.
    """
    src = str(src)
    if _is_torchscript(src):
        state, hparams = _read_torchscript(src), None
    else:
        obj = read_torch_file(src)
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            state, hparams = obj["state_dict"], to_plain(obj.get("hyper_parameters"))
        elif isinstance(obj, Mapping):
            state, hparams = obj, None
        else:
            raise CheckpointError(f"{src}: expected a checkpoint dict or a state_dict, found {type(obj).__name__}")
    for prefix in ("model.generator.", "generator.", ""):
        generator = {k[len(prefix):]: v for k, v in state.items()
                     if isinstance(k, str) and k.startswith(prefix) and k[len(prefix):].startswith("model.")}
        if generator:
            break
    if not generator or not all(isinstance(v, np.ndarray) for v in generator.values()):
        raise CheckpointError(f"{src}: no LaMa generator weights found (expected keys like 'generator.model.1.ffc.convl2l.weight')")
    return generator, hparams if isinstance(hparams, Mapping) else None


def _is_torchscript(src):
    try:
        with zipfile.ZipFile(src) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_torchscript(src):
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{src}: is a TorchScript archive; reading it needs torch (pip install 'jax-refine[torch]'). "
            "Without torch, convert LaMa's best.ckpt instead.") from None
    try:
        module = torch.jit.load(src, map_location="cpu")
    except Exception as e:  # torch raises many types for a damaged archive
        raise CheckpointError(f"{src}: could not load the TorchScript archive: {e}") from None
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------
# jax-refine checkpoints
# --------------------------------------------------------------------------------------


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Convert a LaMa checkpoint `src` into a jax-refine checkpoint directory `dst`.

    Nothing is written unless the conversion succeeds: the directory is assembled under a
    temporary name beside `dst` and renamed at the end.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise CheckpointError(f"{src}: no such file")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite=True / --overwrite to replace it)")
    state_dict, hparams = read_generator(src)
    config = infer_config(state_dict, hparams, str(src))
    flat = to_flax_state(state_dict, config, str(src))
    del state_dict
    source = {"file": src.name, "sha256": _sha256(src)}
    save_flat(flat, config, dst, source=source, overwrite=overwrite)
    return dst


def save(model: Lama, dst: str | os.PathLike, *, source: Mapping | None = None, overwrite: bool = False) -> Path:
    """Write `model` (e.g. a trained one) as a jax-refine checkpoint directory."""
    from flax import nnx
    flat = {path: np.asarray(v) for path, v in nnx.to_flat_state(nnx.state(model))}
    return save_flat(flat, model.config, dst, source=source or {}, overwrite=overwrite)


def save_flat(flat: Mapping[tuple, np.ndarray], config: LamaConfig, dst, *, source: Mapping, overwrite=False) -> Path:
    """Write flat {flax path: array} + metadata atomically to the directory `dst`."""
    import orbax.checkpoint as ocp

    dst = Path(dst).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    try:
        tree = {}
        for path, array in flat.items():
            node = tree
            for part in path[:-1]:
                node = node.setdefault(str(part), {})
            node[str(path[-1])] = array
        # synchronous: the async StandardCheckpointer first copies every array to host buffers
        ocp.Checkpointer(ocp.StandardCheckpointHandler()).save(tmp / "params", args=ocp.args.StandardSave(tree))
        metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": dataclasses.asdict(config),
                    "source": dict(source), "converter_version": __version__}
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if dst.exists() and overwrite:
            shutil.rmtree(dst)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


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
    """Load a jax-refine checkpoint directory as a ready (inference-mode) Lama model."""
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    path = Path(path).absolute()
    meta = read_metadata(path)
    try:
        config = LamaConfig(**meta["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid config in {METADATA_FILE}: {e}") from None
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

    graphdef, abstract_state = nnx.split(abstract_model(config))
    stored = {tuple(str(p) for p in path): np.asarray(v) for path, v in flat.items()}
    expected = {tuple(str(p) for p in path): (path, v) for path, v in nnx.to_flat_state(abstract_state)}
    missing = sorted(".".join(k) for k in set(expected) - set(stored))
    unexpected = sorted(".".join(k) for k in set(stored) - set(expected))
    misshaped = [f"{'.'.join(k)}: {stored[k].shape} (expected {tuple(v.shape)})"
                 for k, (_, v) in sorted(expected.items()) if k in stored and stored[k].shape != tuple(v.shape)]
    if missing or unexpected or misshaped:
        raise CheckpointError(_mismatch_message(source, config, missing, unexpected, misshaped))
    state = nnx.from_flat_state(
        {path: variable.replace(jnp.asarray(stored[key], jnp.float32)) for key, (path, variable) in expected.items()})
    return eval_mode(nnx.merge(graphdef, state))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
