"""LaMa PyTorch checkpoints -> jax-refine checkpoints (docs/lama.md §3-4).

Reads, without torch and without executing code from the file (see `_sources` for how each
is recognised by its content): LaMa's Lightning `best.ckpt`, bare generator state_dicts
(`.pth`), TorchScript archives such as IOPaint's `big-lama.pt`, LaMa's `big-lama.zip` and
its unzipped folder, and `.safetensors` files. The generator is found by its key pattern
under any prefix (`generator.`, `model.generator.`, ...); its architecture (Big-LaMa's
`ffc_resnet` or lama-regular's `pix2pixhd_global`) is told by which keys it has, its
configuration is inferred from the tensor shapes and cross-checked with the checkpoint's
`hyper_parameters`; every key, shape, dtype and value is checked (no silent partial loads,
no NaN weights).

The result is a jax-refine checkpoint (`checkpoint`), written atomically; its source entry
records the file's name, sha256 and format.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from numbers import Real
from pathlib import Path

import jax
import numpy as np

from ._sources import open_source
from ._torch_pickle import MemoryBudget, release_pages
from . import pix2pixhd
from .checkpoint import (ARCHITECTURES, MAX_BLOCKS, MAX_DOWNSAMPLING, CheckpointError, abstract_generator,
                         check_destination, file_digest, install, listing, mismatch_message, staging, write_into)
from .checkpoint import show as _show
from .model import LamaConfig, abstract_model
from .pix2pixhd import Pix2PixHDConfig

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


def key_map(config) -> dict[str, tuple[tuple, callable | None, int | None]]:
    """Every generator state_dict key (without prefix) -> (flax state path, transform, block index).

    Residual blocks are stacked in the Flax model: their keys carry the block index at which
    the converted tensor goes along the leading axis; other keys have block index None.
    config: a LamaConfig or a pix2pixhd.Pix2PixHDConfig.
    """
    if config.architecture == pix2pixhd.ARCHITECTURE:
        return _pix2pixhd_key_map(config)
    return _ffc_key_map(config)


def _upsampler_rules(first_up: int, n: int) -> dict:
    """Rules of the decoder both generators share: (ConvTranspose, BN, ReLU) at model.first_up + 3 i
    for i < n, then a pad and the head conv."""
    rules = {}
    for i in range(n):
        conv_t, bn_t = f"model.{first_up + 3 * i}", f"model.{first_up + 3 * i + 1}"
        rules[f"{conv_t}.weight"] = (("up", i, "conv", "kernel"), _up_kernel, None)
        rules[f"{conv_t}.bias"] = (("up", i, "conv", "bias"), None, None)
        for torch_key, (path, fn) in _bn_rules(bn_t, ("up", i, "bn")).items():
            rules[torch_key] = (path, fn, None)
    head = f"model.{first_up + 3 * n + 1}"
    rules[f"{head}.weight"] = (("head", "kernel"), _conv_kernel, None)
    rules[f"{head}.bias"] = (("head", "bias"), None, None)
    return rules


def _conv_bn_rules(conv_t: str, bn_t: str, conv: tuple, bn: tuple, block: int | None = None) -> dict:
    """A Conv2d with bias (torch conv_t, flax path conv) and a BatchNorm2d (bn_t, bn)."""
    rules = {f"{conv_t}.weight": (conv + ("kernel",), _conv_kernel, block),
             f"{conv_t}.bias": (conv + ("bias",), None, block)}
    rules.update({key: (path, fn, block) for key, (path, fn) in _bn_rules(bn_t, bn).items()})
    return rules


def _pix2pixhd_key_map(config: Pix2PixHDConfig) -> dict:
    """LaMa's GlobalGenerator `model` nn.Sequential: 0 pad, 1-3 stem (conv, BN, ReLU), then
    (conv, BN, ReLU) per downsampler, the blocks (`conv_block` 0 pad, 1 conv, 2 BN, 3 ReLU,
    4 pad, 5 conv, 6 BN), (ConvTranspose, BN, ReLU) per upsampler, pad, head conv, sigmoid."""
    rules = _conv_bn_rules("model.1", "model.2", ("stem", "conv"), ("stem", "bn"))
    for i in range(config.n_downsampling):
        rules.update(_conv_bn_rules(f"model.{4 + 3 * i}", f"model.{5 + 3 * i}", ("down", i, "conv"), ("down", i, "bn")))
    first_block = 4 + 3 * config.n_downsampling
    for b in range(config.n_blocks):
        for conv, bn, n in (("conv1", "bn1", 1), ("conv2", "bn2", 5)):
            block = f"model.{first_block + b}.conv_block"
            rules.update(_conv_bn_rules(f"{block}.{n}", f"{block}.{n + 1}", ("blocks", conv), ("blocks", bn), b))
    first_up = first_block + config.n_blocks
    return rules | _upsampler_rules(first_up, config.n_downsampling)


def _ffc_key_map(config: LamaConfig) -> dict:
    """LaMa's FFCResNetGenerator `model` nn.Sequential: 0 pad, 1 stem, 2.. downsampling, then
    the blocks, a concat layer, (ConvTranspose, BN, ReLU) per upsampler, pad, head conv."""
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
    return rules | _upsampler_rules(first_up, config.n_downsampling)


# --------------------------------------------------------------------------------------
# State dict -> config -> Flax state
# --------------------------------------------------------------------------------------

# LaMa generator options that this port does not implement, per architecture: key -> allowed values
_UNSUPPORTED = {
    "ffc_resnet": {
        "enable_lfu": (False, None), "gated": (False, None), "use_se": (False, None),
        "spatial_scale_factor": (None,), "spectral_pos_encoding": (False, None), "ffc3d": (False, None),
        "spatial_transform_layers": (None,), "out_ffc": (False, None), "fu_kernel": (1, None),
        "padding_type": ("reflect", None), "groups": (1, None),
    },
    pix2pixhd.ARCHITECTURE: {  # GlobalGenerator's options beyond the shapes; norm/activation are not in configs
        "padding_type": ("reflect", None), "conv_kind": ("default", None), "affine": (None, True),
        "dilated_blocks_n": (0, None), "dilated_blocks_n_start": (0, None), "dilated_blocks_n_middle": (0, None),
        "ffc_positions": (None,), "is_resblock_depthwise": (False, None), "dilation": (1, None),
        "second_dilation": (None, 1), "max_features": (1024, None),
    },
}
_SECTIONS = ("init_conv_kwargs", "downsample_conv_kwargs", "resnet_conv_kwargs")  # FFCResNetGenerator's
# The first convolution of each architecture: which one a state_dict holds tells them apart
STEM_KEYS = {"ffc_resnet": "model.1.ffc.convl2l.weight", pix2pixhd.ARCHITECTURE: "model.1.weight"}
_BLOCK_KEYS = {"ffc_resnet": re.compile(r"model\.(\d{1,4})\.conv1\."),
               pix2pixhd.ARCHITECTURE: re.compile(r"model\.(\d{1,4})\.conv_block\.")}


def architecture_of(state_dict: Mapping[str, np.ndarray], source: str) -> str:
    """The generator architecture (a `checkpoint.ARCHITECTURES` key) whose stem key
    (`STEM_KEYS`) the state_dict holds. Raises CheckpointError for other layouts."""
    found = [name for name, key in STEM_KEYS.items() if key in state_dict]
    if len(found) != 1:
        raise CheckpointError(f"{source}: not a generator layout jax-refine knows: expected exactly one of "
                              + ", ".join(f"'{key}' ({name})" for name, key in STEM_KEYS.items())
                              + (f", found {len(found)}" if found else ""))
    return found[0]


def infer_config(state_dict: Mapping[str, np.ndarray], hyper_parameters: Mapping | None, source: str):
    """The generator config (LamaConfig or Pix2PixHDConfig, see `architecture_of`) implied by
    a generator state_dict's shapes, cross-checked with the checkpoint's
    `hyper_parameters['generator']` when present. Raises CheckpointError."""
    architecture = architecture_of(state_dict, source)

    def conv(key):  # (out, in, kh, kw) of a convolution weight, every dimension >= 1
        if key not in state_dict:
            raise CheckpointError(f"{source}: not a LaMa {architecture} generator state_dict (no key '{key}')")
        shape = tuple(state_dict[key].shape)
        if len(shape) != 4 or 0 in shape:
            raise CheckpointError(f"{source}: {key} has shape {shape}; a convolution weight has 4 dimensions, "
                                  "none of them 0")
        return shape

    stem = conv(STEM_KEYS[architecture])
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := _BLOCK_KEYS[architecture].match(k))})
    if not blocks:
        raise CheckpointError(f"{source}: not a LaMa {architecture} generator state_dict (no residual blocks "
                              f"'{_BLOCK_KEYS[architecture].pattern}')")
    first = blocks[0]
    # stem at model.1; FFC: one layer per downsampler, pix2pixhd: (conv, BN, ReLU) after the stem's
    n_downsampling = first - 2 if architecture == "ffc_resnet" else (first - 4) / 3
    if n_downsampling not in range(1, MAX_DOWNSAMPLING + 1) or len(blocks) > MAX_BLOCKS:
        raise CheckpointError(f"{source}: residual blocks model.{first}..model.{blocks[-1]} imply n_downsampling="
                              f"{n_downsampling:g}, n_blocks={len(blocks)} (supported: 1..{MAX_DOWNSAMPLING} and "
                              f"up to {MAX_BLOCKS})")
    n_downsampling = int(n_downsampling)
    inferred = dict(ngf=int(stem[0]), input_nc=int(stem[1]), n_downsampling=n_downsampling, n_blocks=len(blocks))
    if architecture == "ffc_resnet":
        local_out = conv(f"model.{first}.conv1.ffc.convl2l.weight")[0]
        global_out = conv(f"model.{first}.conv1.ffc.convl2g.weight")[0]
        head = first + len(blocks) + 1 + 3 * n_downsampling + 1  # see _ffc_key_map
        inferred["ratio"] = global_out / (local_out + global_out)
        if any(".lfu." in k or ".se." in k or "gate" in k for k in state_dict):
            raise CheckpointError(f"{source}: the generator uses LFU, SE or gated FFC layers, which jax-refine does "
                                  "not support")
    else:
        head = first + len(blocks) + 3 * n_downsampling + 1  # see _pix2pixhd_key_map
    inferred["output_nc"] = int(conv(f"model.{head}.weight")[0])
    if hyper_parameters is not None:
        problems = _hyper_parameter_problems(inferred, hyper_parameters, architecture)
        if problems:
            raise CheckpointError(f"{source}: generator configuration not supported: " + "; ".join(problems))
    try:
        return ARCHITECTURES[architecture].config(**inferred)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _hyper_parameter_problems(inferred: dict, hyper_parameters, architecture: str) -> list[str]:
    """What in `hyper_parameters` (plain containers) contradicts the tensors of an
    `architecture` generator or asks for an option this port lacks; type errors are problems
    too, named by their place."""
    if not isinstance(hyper_parameters, Mapping):
        return [f"hyper_parameters is a {type(hyper_parameters).__name__}, expected a mapping"]
    gen = hyper_parameters.get("generator")
    if gen is None:
        return []
    if not isinstance(gen, Mapping):
        return [f"hyper_parameters.generator is a {type(gen).__name__}, expected a mapping"]
    problems = []
    kind = gen.get("kind", architecture)
    if _is(kind, tuple(STEM_KEYS)) and kind != architecture:
        problems.append(f"kind {kind!r} in hyper_parameters but the tensors are a {architecture!r} generator")
    elif not _is(kind, (architecture,)):
        problems.append(f"kind {_show(kind)} (only {architecture!r} is supported)")
    # LaMa's add_out_act: True (tanh) by default in GlobalGenerator; FFC configs all set sigmoid
    act = gen.get("add_out_act", "sigmoid" if architecture == "ffc_resnet" else True)
    if not _is(act, ("sigmoid",)):
        problems.append(f"add_out_act {_show(act)} (only 'sigmoid' is supported)")
    for key in ("ngf", "n_downsampling", "n_blocks", "input_nc", "output_nc"):
        if key not in gen:
            continue
        if type(gen[key]) is not int:
            problems.append(f"hyper_parameters.generator.{key} is {_show(gen[key])}, expected an int")
        elif gen[key] != inferred[key]:
            problems.append(f"{key}={gen[key]} in hyper_parameters but the tensors imply {inferred[key]}")
    sections = {"generator": gen}
    for name in _SECTIONS if architecture == "ffc_resnet" else ():
        section = gen.get(name)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            problems.append(f"hyper_parameters.generator.{name} is a {type(section).__name__}, expected a mapping")
            continue
        sections[name] = section
    for section in sections.values():
        for key, allowed in _UNSUPPORTED[architecture].items():
            if key in section and not _is(section[key], allowed):
                problems.append(f"unsupported option {key}={_show(section[key])}")
    resnet = sections.get("resnet_conv_kwargs", {})
    for key in ("ratio_gin", "ratio_gout"):
        if key not in resnet:
            continue
        value = resnet[key]
        if isinstance(value, bool) or not isinstance(value, Real):
            problems.append(f"hyper_parameters.generator.resnet_conv_kwargs.{key} is {_show(value)}, expected a number")
        elif not abs(value - inferred["ratio"]) <= 1e-3:
            problems.append(f"resnet {key}={value} but the tensors imply {inferred['ratio']:.4g}")
    return problems


def _is(value, allowed) -> bool:
    """`value` equals one of `allowed` and has its type (so 0 is not False, '1' not 1)."""
    return any(type(value) is type(a) and value == a for a in allowed)


def to_flax_state(state_dict: Mapping[str, np.ndarray], config, source: str,
                  budget: MemoryBudget | None = None) -> dict[tuple, jax.Array]:
    """Map a generator state_dict (keys without prefix) to flat {flax path: float32 jax array}.

    Each converted array is moved into a jax array at once, so the peak memory is the source
    tensors plus one converted copy (orbax then saves jax arrays without another host copy);
    the converted size is charged to `budget` before anything is allocated.

    Strict: raises one CheckpointError listing every missing, unexpected, mis-shaped and
    non-floating-point key, or every tensor holding NaN or infinity.
    """
    rules = key_map(config)
    expected = _flat_shapes(abstract_generator(config))
    if budget is not None:
        budget.charge(4 * sum(int(np.prod(shape)) for shape in expected.values()), f"the converted weights of {config}")
    provided = {k for k in state_dict if not k.endswith(_IGNORED_SUFFIX)}
    missing = sorted(set(rules) - provided)
    unexpected = sorted(provided - set(rules))
    stacked: dict[tuple, list] = {}
    flat, misshaped, not_float, not_finite = {}, [], [], []
    for key in sorted(provided & set(rules)):
        path, transform, block = rules[key]
        source_array = state_dict[key]
        if source_array.dtype.kind != "f":
            not_float.append(f"{key}: {source_array.dtype}")
            continue
        want = expected[path][1:] if block is not None else expected[path]
        if source_array.ndim != len(want):
            misshaped.append(f"{key}: {tuple(source_array.shape)} (expected {_torch_shape(want, transform)})")
            continue
        array = transform(source_array) if transform else source_array
        if array.shape != want:
            misshaped.append(f"{key}: {tuple(source_array.shape)} (expected {_torch_shape(want, transform)})")
            continue
        if block is not None:
            stacked.setdefault(path, [None] * config.n_blocks)[block] = key
        elif not (missing or unexpected or misshaped or not_float):
            flat[path] = _device_array([array], array.shape, [key], not_finite)
            release_pages(source_array)
    if missing or unexpected or misshaped or not_float:
        raise CheckpointError(mismatch_message(source, config, missing, unexpected, misshaped, not_float))
    for path, keys in stacked.items():
        transform = rules[keys[0]][1]
        arrays = [transform(state_dict[k]) if transform else state_dict[k] for k in keys]
        flat[path] = _device_array(arrays, (len(arrays),) + arrays[0].shape, keys, not_finite)
        for key in keys:  # keep the peak at about one copy of the weights
            release_pages(state_dict[key])
    if not_finite:
        raise CheckpointError(f"{source}: weights hold NaN or infinite values (in float32) in "
                              f"{len(not_finite)} tensors:" + listing(sorted(not_finite)))
    return flat


def _device_array(parts, shape, keys, not_finite) -> jax.Array:
    """float32 jax array of `shape` from `parts` (stacked along a new axis 0 when shape has one
    more dimension than the parts), written once into a 64-byte aligned host buffer, which
    CPU device_put adopts without copying. Appends to `not_finite` the keys of parts that
    hold NaN or infinity once in float32."""
    nbytes = int(np.prod(shape)) * 4
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start : start + nbytes].view(np.float32).reshape(shape)
    stacked = len(shape) != parts[0].ndim
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: reported below
        if stacked:
            np.stack(parts, out=out)
        else:
            out[...] = parts[0]
    for key, part in zip(keys, out if stacked else [out]):
        if not np.isfinite(part).all():
            not_finite.append(key)
    return jax.device_put(out)


def _torch_shape(flax_shape, transform):
    if transform is _conv_kernel:
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if transform is _up_kernel:
        kh, kw, i, o = flax_shape
        return (i, o, kh, kw)
    return tuple(flax_shape)


def _flat_shapes(model) -> dict[tuple, tuple]:
    from flax import nnx
    return {path: tuple(v.shape) for path, v in nnx.to_flat_state(nnx.state(model))}


# --------------------------------------------------------------------------------------
# Reading source files
# --------------------------------------------------------------------------------------


def read_generator(src: str | os.PathLike, scratch: str | os.PathLike | None = None
                   ) -> tuple[Mapping[str, np.ndarray], Mapping | None]:
    """(generator state_dict without prefix, hyper_parameters or None) from any LaMa source
    `open_source` recognises; `scratch` is where a zip's checkpoint is extracted."""
    source = open_source(src, scratch)
    return find_generator(source.tensors, str(src)), source.hyper_parameters


def find_generator(tensors: Mapping, source: str) -> Mapping[str, np.ndarray]:
    """The generator's tensors, keys without their prefix: the keys under the one prefix
    (e.g. 'generator.', 'model.generator.', '') that holds a stem key (`STEM_KEYS`, e.g.
    `model.1.ffc.convl2l.weight`). With several such prefixes, the one ending in
    'generator.' (LaMa's own) is taken."""
    names = [k for k in tensors if isinstance(k, str)]
    prefixes = sorted({k[: -len(stem)] for k in names for stem in STEM_KEYS.values()
                       if k.endswith(stem) and (k == stem or k[-len(stem) - 1] == ".")})
    if len(prefixes) > 1:
        prefixes = [p for p in prefixes if p == "" or p.endswith("generator.")] or prefixes
    if len(prefixes) != 1:
        found = (f"generators under several prefixes ({', '.join(repr(p) for p in prefixes[:10])})" if prefixes
                 else _summary(names))
        raise CheckpointError(f"{source}: no LaMa generator weights found (expected keys like "
                              + " or ".join(f"'generator.{key}'" for key in STEM_KEYS.values())
                              + f" under one prefix); found {found}")
    prefix = prefixes[0]
    return _Tensors(tensors, {k[len(prefix):]: k for k in names
                              if k.startswith(prefix) and k[len(prefix):].startswith("model.")}, source)


def _summary(names, limit=8) -> str:
    """What a file holds: its number of tensors and their most common key prefixes."""
    if not names:
        return "no named tensors at all"
    groups: dict[str, int] = {}
    for name in names:
        head = ".".join(name.split(".")[:2]) if name.count(".") > 1 else name
        groups[head] = groups.get(head, 0) + 1
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:limit]
    more = f", ... ({len(groups)} groups)" if len(groups) > limit else ""
    return f"{len(names)} entries: " + ", ".join(f"{g}.* ({n})" if n > 1 else g for g, n in top) + more


class _Tensors(Mapping):
    """A renamed view of a source's tensors; refuses values that are not arrays on access."""

    def __init__(self, tensors: Mapping, names: dict[str, str], source: str):
        self._tensors, self._names, self._source = tensors, names, source

    def __getitem__(self, key) -> np.ndarray:
        value = self._tensors[self._names[key]]
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{self._source}: {self._names[key]} is a {type(value).__name__}, not a tensor")
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


# --------------------------------------------------------------------------------------
# jax-refine checkpoints
# --------------------------------------------------------------------------------------


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Convert a LaMa checkpoint `src` (a file or LaMa's unzipped folder, see the module
    docstring) into a jax-refine checkpoint directory `dst`.

    Nothing is written unless the conversion succeeds. `dst` may not contain `src`; an
    existing `dst` is replaced only with `overwrite` and only if it is a jax-refine
    checkpoint (FileExistsError otherwise). Malformed sources raise CheckpointError.
    """
    src, dst = Path(src), Path(dst).absolute()
    if not src.exists():
        raise CheckpointError(f"{src}: no such file")
    check_destination(dst, overwrite, source=src)
    with staging(dst) as tmp:
        source = open_source(src, scratch=tmp)
        generator = find_generator(source.tensors, str(src))
        config = infer_config(generator, source.hyper_parameters, str(src))
        flat = to_flax_state(generator, config, str(src), source.budget)
        identity = {"file": src.name, "sha256": file_digest(source.file), "format": source.kind}
        del generator, source
        write_into(tmp, flat, config, identity)
        install(tmp, dst, overwrite)
    return dst


