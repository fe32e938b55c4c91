"""Big-LaMa's FFC ResNet generator in Flax NNX (NHWC, float32).

Port of `FFCResNetGenerator` from LaMa (Suvorov et al. 2021, github.com/advimman/lama,
Apache-2.0), written from its description in docs/lama.md §1-2. Parameter names mirror the
PyTorch attributes (`convl2l`, `convg2g.fu.conv_layer`, `bn_l`, ...) so that conversion is a
rename; `nn.Sequential` indices become `stem`, `down[i]`, `blocks`, `up[i]`, `head`.

Two static attributes, set at construction and changed with `nnx.view` (see `eval_mode`,
`with_kernels`): `use_running_average` (inference: BatchNorm running statistics) and each
conv's `kernels` (`ops.KERNELS`: the stock XLA convolutions or their XLA-CPU forms).

The generator is split the way refinement needs it: `front(x) -> (z_local, z_global)` at
1/2**n_downsampling resolution and `rear(z) -> image`; `__call__ = rear(front(x))`.
The residual blocks are stored stacked (leading axis = block index) and applied with
`lax.scan`: measured on this CPU, 2.5x less memory and half the compile time of unrolled
blocks at the same speed (see BENCHMARKS.md).

The layers (`Conv`, `UpBlock`, `batch_norm`), `SplitGenerator`, `check_config`, `scan_blocks`
and `decode` are shared with LaMa's other generator, `pix2pixhd.Pix2PixHD`.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from . import ops, prior

REMAT_POLICIES = ("none", "blocks", "decoder", "all")
# A residual model's head starts at this fraction of the usual initialisation: its output is then
# close to the hole fill (a residual of ~0.01), while every layer gets gradients from the first
# step (a zero head passes none back to the layers before it).
RESIDUAL_HEAD_SCALE = 0.01
TAIL_TILE_PIXELS = 2**18  # output pixels per row tile of the tiled tail (64-channel float32: ~64 MiB)
OUTPUTS = ("sigmoid", "residual")


def reflect_pad(x, pad, *, rows: bool = True):
    """Reflection padding of H (unless rows=False) and W by `pad` (edge sample not repeated,
    torch `reflect`)."""
    return jnp.pad(x, ((0, 0), (pad, pad) if rows else (0, 0), (pad, pad), (0, 0)), mode="reflect")


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------


class _KernelChoice:
    """Mixin of the conv modules: the static `kernels` and `in_loop` attributes."""

    def set_view(self, kernels: str | None = None):
        """Used by `nnx.view(model, kernels=...)`."""
        if kernels is not None:
            self.kernels = ops.check_kernels(kernels)


PAD_MODES = ("reflect", "zeros")


class Conv(_KernelChoice, nnx.Module):
    """k x k conv (no bias unless asked), padded by `pad` pixels as torch's padding_mode
    `pad_mode` ("reflect" or "zeros") does.

    kernels: `ops.KERNELS`; in_loop: the conv runs inside `lax.scan` (the residual blocks).
    """

    def __init__(self, in_features, out_features, kernel_size, *, stride=1, pad=0, pad_mode="reflect",
                 use_bias=False, kernels: str, in_loop: bool = False, rngs: nnx.Rngs):
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}")
        init = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, kernel_size, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None
        self.stride, self.pad, self.pad_mode = stride, pad, pad_mode
        self.kernels, self.in_loop = ops.check_kernels(kernels), in_loop

    def __call__(self, x, *, pad_rows: bool = True):
        """x (B, H, W, Cin) -> (B, H', W', Cout); pad_rows=False: x already holds the rows'
        padding (only the columns are reflect-padded here)."""
        zeros = ((self.pad, self.pad),) * 2 if self.pad_mode == "zeros" else ((0, 0), (0, 0))
        if self.pad and self.pad_mode == "reflect":
            x = reflect_pad(x, self.pad, rows=pad_rows)
        if self.kernel.shape[:2] == (1, 1) and self.stride == 1 and zeros == ((0, 0), (0, 0)):
            y = x @ self.kernel[0, 0]  # a 1x1 conv is a matmul over channels
        else:
            y = ops.conv2d(x, self.kernel[...], (self.stride, self.stride), zeros, kernels=self.kernels,
                           in_loop=self.in_loop)
        return y if self.bias is None else y + self.bias[...]


class UpConv(_KernelChoice, nnx.Module):
    """torch ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1), with bias: (B, H, W,
    Cin) -> (B, 2H, 2W, Cout). The kernel (3, 3, Cin, Cout) is the torch weight (Cin, Cout, 3, 3)
    transposed and spatially flipped (`ops.up_conv2d`)."""

    def __init__(self, in_features, out_features, *, kernels: str, rngs: nnx.Rngs):
        init = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
        self.kernel = nnx.Param(init(rngs.params(), (3, 3, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.kernels = ops.check_kernels(kernels)

    def __call__(self, x):
        return ops.up_conv2d(x, self.kernel[...], kernels=self.kernels) + self.bias[...]


def batch_norm(num_features, rngs):
    """torch BatchNorm2d defaults (eps 1e-5, momentum 0.1 == flax momentum 0.9)."""
    return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, rngs=rngs)


class FourierUnit(nnx.Module):
    """rfft2 (ortho) -> 1x1 conv + BN + ReLU on interleaved (re, im) channels -> irfft2."""

    def __init__(self, channels, *, rngs: nnx.Rngs):
        self.conv_layer = Conv(2 * channels, 2 * channels, 1, kernels="xla", rngs=rngs)  # a matmul
        self.bn = batch_norm(2 * channels, rngs)

    def __call__(self, x):
        b, h, w, c = x.shape
        spectrum = jnp.fft.rfftn(x.astype(jnp.float32), axes=(1, 2), norm="ortho")
        # channel 2c is Re(F_c), 2c+1 is Im(F_c): LaMa's per-channel interleaving
        f = jnp.stack([spectrum.real, spectrum.imag], axis=-1).reshape(b, h, w // 2 + 1, 2 * c)
        f = jax.nn.relu(self.bn(self.conv_layer(f.astype(x.dtype)))).astype(jnp.float32)
        f = f.reshape(b, h, w // 2 + 1, c, 2)
        out = jnp.fft.irfftn(lax.complex(f[..., 0], f[..., 1]), s=(h, w), axes=(1, 2), norm="ortho")
        return out.astype(x.dtype)


class SpectralTransform(nnx.Module):
    """The global->global path: 1x1 conv + BN + ReLU, FourierUnit, residual, 1x1 conv."""

    def __init__(self, in_channels, out_channels, *, rngs: nnx.Rngs):
        self.conv1 = Conv(in_channels, out_channels // 2, 1, kernels="xla", rngs=rngs)  # 1x1 convs are matmuls
        self.conv1_bn = batch_norm(out_channels // 2, rngs)
        self.fu = FourierUnit(out_channels // 2, rngs=rngs)
        self.conv2 = Conv(out_channels // 2, out_channels, 1, kernels="xla", rngs=rngs)

    def __call__(self, x):
        y = jax.nn.relu(self.conv1_bn(self.conv1(x)))
        return self.conv2(y + self.fu(y))


class FFC(nnx.Module):
    """Fast Fourier Convolution followed by BN + ReLU on each branch (LaMa's FFC_BN_ACT).

    Channels split as global = int(C * ratio), local = C - global. A branch with zero
    channels is `None` (LaMa's int 0): its convs and BN do not exist.
    """

    def __init__(self, in_channels, out_channels, kernel_size, *, ratio_in, ratio_out, stride=1,
                 kernels: str, in_loop: bool = False, rngs: nnx.Rngs):
        in_g = int(in_channels * ratio_in)
        out_g = int(out_channels * ratio_out)
        in_l, out_l = in_channels - in_g, out_channels - out_g
        pad = (kernel_size - 1) // 2
        conv = partial(Conv, kernel_size=kernel_size, stride=stride, pad=pad, kernels=kernels, in_loop=in_loop,
                       rngs=rngs)
        self.convl2l = conv(in_l, out_l) if in_l and out_l else None
        self.convl2g = conv(in_l, out_g) if in_l and out_g else None
        self.convg2l = conv(in_g, out_l) if in_g and out_l else None
        if in_g and out_g:
            if stride != 1:
                raise ValueError("a strided global->global (spectral) path is not supported")
            self.convg2g = SpectralTransform(in_g, out_g, rngs=rngs)
        else:
            self.convg2g = None
        self.bn_l = batch_norm(out_l, rngs) if out_l else None
        self.bn_g = batch_norm(out_g, rngs) if out_g else None

    def __call__(self, x_local, x_global=None):
        """(B, H, W, C_l), optional (B, H, W, C_g) -> (local, global or None)."""
        out_l = out_g = None
        if self.bn_l is not None:
            out_l = _sum(_apply(self.convl2l, x_local), _apply(self.convg2l, x_global))
            out_l = jax.nn.relu(self.bn_l(out_l))
        if self.bn_g is not None:
            out_g = _sum(_apply(self.convl2g, x_local), _apply(self.convg2g, x_global))
            out_g = jax.nn.relu(self.bn_g(out_g))
        return out_l, out_g


def _apply(layer, x):
    return None if layer is None else layer(x)


def _sum(a, b):
    return b if a is None else a if b is None else a + b


class FFCResnetBlock(nnx.Module):
    """Two FFC layers (3x3, reflect) with a residual add on both branches (run inside `lax.scan`)."""

    def __init__(self, channels, ratio, *, kernels: str, rngs: nnx.Rngs):
        ffc = partial(FFC, channels, channels, 3, ratio_in=ratio, ratio_out=ratio, kernels=kernels, in_loop=True,
                      rngs=rngs)
        self.conv1, self.conv2 = ffc(), ffc()

    def __call__(self, z):
        x_l, x_g = z
        y_l, y_g = self.conv2(*self.conv1(x_l, x_g))
        return x_l + y_l, x_g + y_g


# --------------------------------------------------------------------------------------
# Configuration and generator
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderDecoderConfig:
    """The fields LaMa's generators share (documented in `LamaConfig`): a stem of ngf
    channels, n_downsampling stride-2 layers, n_blocks residual blocks, a decoder back to
    output_nc channels; channels capped at max_features. Subclasses validate with
    `check_config`."""

    ngf: int = 64
    n_downsampling: int = 3
    n_blocks: int = 18
    input_nc: int = 4
    output_nc: int = 3
    max_features: int = 1024
    hole_fill: str = "zeros"
    output: str = "sigmoid"
    refine_defaults: tuple[tuple[str, object], ...] = ()

    def channels(self, level: int) -> int:
        """Channels at 1/2**level of the input resolution (level 0: after the stem)."""
        return min(self.max_features, self.ngf * 2**level)

    @property
    def bottleneck_channels(self) -> int:
        return self.channels(self.n_downsampling)

    @property
    def modulo(self) -> int:
        """Input H and W must be multiples of this."""
        return 2**self.n_downsampling


@dataclasses.dataclass(frozen=True, kw_only=True)
class LamaConfig(EncoderDecoderConfig):
    """LaMa `ffc_resnet` generator configuration (the options Big-LaMa uses).

    Attributes:
      ngf: channels after the stem conv.
      n_downsampling: number of stride-2 FFC layers (the bottleneck is 1/2**n of the input).
      n_blocks: number of FFC residual blocks.
      ratio: share of global (spectral) channels in the residual blocks
        (LaMa's resnet_conv_kwargs ratio_gin = ratio_gout).
      input_nc / output_nc: 4 (RGB with holes filled + mask) / 3 (RGB).
      max_features: LaMa's channel cap (never binds for Big-LaMa).
      hole_fill: what the input holds in the holes (`prior.HOLE_FILLS`): "zeros" (LaMa) or
        "pull-push" (a smooth continuation of the surrounding colours, `prior.pull_push`).
      output: "sigmoid" (LaMa: sigmoid of the head), or "residual": the head's output added
        to the input's colour channels, so a model whose head is zero returns its hole fill
        (a new one starts close to it, see RESIDUAL_HEAD_SCALE).
      refine_defaults: the model's recommended refinement settings, (RefineConfig field,
        value) pairs over LaMa's defaults (a dict is accepted); empty for LaMa's own models.
    """

    ratio: float = 0.75
    architecture = "ffc_resnet"  # the name checkpoints record (contract.GeneratorConfig); not a field

    def __post_init__(self):
        check_config(self, OUTPUTS, [] if 0 < self.ratio < 1 else [f"ratio must be in (0, 1), got {self.ratio!r}"])

    @property
    def z_channels(self) -> tuple[int, int]:
        """(local, global) channels of the feature map z that refinement optimises."""
        global_ = int(self.bottleneck_channels * self.ratio)
        return self.bottleneck_channels - global_, global_


def check_config(config, outputs: tuple[str, ...], problems: list[str]) -> None:
    """Validate a generator config (an `EncoderDecoderConfig`) and
    make its refine_defaults canonical (sorted pairs); raises one ValueError naming every
    problem, `problems` (the config's own) included."""
    name = type(config).__name__
    try:  # a hashable, canonical form of what may come as a dict or JSON pairs
        object.__setattr__(config, "refine_defaults", tuple(sorted(dict(config.refine_defaults).items())))
    except (TypeError, ValueError):
        raise ValueError(f"invalid {name}: refine_defaults must be (name, value) pairs, "
                         f"got {config.refine_defaults!r}") from None
    for field in ("ngf", "n_downsampling", "n_blocks", "input_nc", "output_nc", "max_features"):
        if not isinstance(getattr(config, field), int) or getattr(config, field) < 1:
            problems.append(f"{field} must be a positive int, got {getattr(config, field)!r}")
    if config.hole_fill not in prior.HOLE_FILLS:
        problems.append(f"hole_fill must be one of {', '.join(prior.HOLE_FILLS)}, got {config.hole_fill!r}")
    if config.output not in outputs:
        problems.append(f"output must be one of {', '.join(outputs)}, got {config.output!r}")
    if config.output == "residual" and config.output_nc != config.input_nc - 1:
        problems.append(f"a residual output needs output_nc == input_nc - 1, got {config.output_nc}, {config.input_nc}")
    if problems:
        raise ValueError(f"invalid {name}: " + "; ".join(problems))


BIG_LAMA = LamaConfig()
"""Big-LaMa (LaMa's configs/training/big-lama.yaml): 50,975,875 parameters."""

TINY_LAMA = LamaConfig(ngf=8, n_downsampling=3, n_blocks=2)
"""The small random generator of the golden fixtures: 135,571 parameters."""


class SplitGenerator(nnx.Module):
    """What the generators (`contract.Generator`) share: the static `use_running_average`
    (see `eval_mode`), the input check, the output and `__call__`. Subclasses set `config`
    and define `front` and `rear`."""

    def set_view(self, use_running_average: bool | None = None):
        """Used by `nnx.view` (see `eval_mode`), which sets the BatchNorms' flag alike."""
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def __call__(self, x):
        return self.rear(self.front(x), x[..., : self.config.output_nc])

    def _output(self, head, base):
        return base + head if self.config.output == "residual" else jax.nn.sigmoid(head)

    def _check_input(self, x):
        c = self.config
        if x.ndim != 4 or x.shape[-1] != c.input_nc:
            raise ValueError(f"expected input of shape (B, H, W, {c.input_nc}), got {x.shape}")
        h, w = x.shape[1:3]
        if h % c.modulo or w % c.modulo or min(h, w) < 2 * c.modulo:
            raise ValueError(
                f"input H and W must be multiples of {c.modulo} and at least {2 * c.modulo}, got {h}x{w}"
            )


class Lama(SplitGenerator):
    """LaMa generator. x (B, H, W, 4) = `contract.model_input(config, image, mask)` -> (B, H, W, 3).

    H and W must be multiples of `config.modulo` and at least 2 * modulo (reflect padding
    at the bottleneck needs 2 pixels). kernels: `ops.KERNELS`, default `ops.default_kernels()`.
    A new model is in training mode (batch statistics); `eval_mode` gives the inference view.
    """

    def __init__(self, config: LamaConfig = BIG_LAMA, *, rngs: nnx.Rngs, kernels: str | None = None):
        self.config = config
        self.use_running_average = False
        c, kernels = config, ops.check_kernels(kernels or ops.default_kernels())
        self.stem = FFC(c.input_nc, c.ngf, 7, ratio_in=0, ratio_out=0, kernels=kernels, rngs=rngs)
        downs = []
        for i in range(c.n_downsampling):
            ratio_out = c.ratio if i == c.n_downsampling - 1 else 0
            downs.append(FFC(c.channels(i), c.channels(i + 1), 3, ratio_in=0, ratio_out=ratio_out, stride=2,
                             kernels=kernels, rngs=rngs))
        self.down = nnx.List(downs)

        @nnx.split_rngs(splits=c.n_blocks)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs):
            return FFCResnetBlock(c.bottleneck_channels, c.ratio, kernels=kernels, rngs=rngs)

        self.blocks = make_blocks(rngs)
        ups = []
        for level in range(c.n_downsampling, 0, -1):
            ups.append(UpBlock(c.channels(level), c.channels(level - 1), kernels=kernels, rngs=rngs))
        self.up = nnx.List(ups)
        self.head = Conv(c.ngf, c.output_nc, 7, pad=3, use_bias=True, kernels=kernels, rngs=rngs)
        if c.output == "residual":  # a new residual model starts close to its hole fill
            self.head.kernel[...] = RESIDUAL_HEAD_SCALE * self.head.kernel[...]

    def front(self, x):
        """(B, H, W, input_nc) -> z = (z_local (B, h, w, C_l), z_global (B, h, w, C_g)), h = H / modulo."""
        self._check_input(x)
        # LaMa pads the stem input with ReflectionPad2d(3) before a 7x7 conv; FFC(pad=3) does the same.
        x_l, _ = self.stem(x)
        x_g = None
        for layer in self.down:
            x_l, x_g = layer(x_l, x_g)
        return x_l, x_g

    def rear(self, z, base=None, *, remat: str = "none", tile_pixels: int = TAIL_TILE_PIXELS):
        """z -> image (B, H, W, output_nc): residual blocks, decoder, output (`LamaConfig.output`:
        in (0, 1) for "sigmoid"; base + head for "residual", where base (B, H, W, output_nc) is
        the input's colour channels, x[..., :3]).

        remat: what the backward pass recomputes (jax.checkpoint) instead of storing, one of
          REMAT_POLICIES: "none"; "blocks", each residual block's activations (only the
          block inputs are stored); "decoder", each decoder stage's, the full-resolution
          tail (last upsampler and head) running in row tiles (`_tiled_tail`) so that its
          64-channel tensors and their gradients never exist for the whole image at once
          (inference-mode models only); "all", both.
        tile_pixels: output pixels per row tile of the tiled tail (`tail_tile_rows`).
        """
        check_remat(remat)
        if self.config.output == "residual" and base is None:
            raise ValueError("a residual-output model needs base, the input's colour channels")
        training = not self.use_running_average
        z = scan_blocks(self.blocks, tuple(z), remat=remat, training=training)
        x = jnp.concatenate(z, axis=-1)  # local channels first, then global (LaMa's ConcatTupleLayer)
        return self._output(decode(self.up, self.head, x, remat=remat, tile_pixels=tile_pixels, training=training),
                            base)


def check_remat(remat: str) -> None:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {', '.join(REMAT_POLICIES)}, got {remat!r}")


def scan_blocks(blocks: nnx.Module, z, *, remat: str, training: bool):
    """z (a pytree of (B, h, w, C)) through the stacked residual `blocks` (leading axis = block
    index) with `lax.scan`; remat "blocks" or "all" recomputes each block's activations in the
    backward pass. In training mode the blocks' BatchNorms update their running statistics;
    those updates happen on the per-step copies made by merge, so they leave the scan as
    outputs and are written back. (In eval mode nothing is written: the model may then live in
    an outer trace, e.g. refinement differentiates rear inside a loop.)"""
    graphdef, block_state = nnx.split(blocks)

    def apply_block(z, state):
        block = nnx.merge(graphdef, state)
        z = block(z)
        return z, nnx.state(block, nnx.BatchStat) if training else None

    if remat in ("blocks", "all"):
        apply_block = jax.checkpoint(apply_block)
    z, stats = lax.scan(apply_block, z, block_state)
    if training:
        nnx.update(blocks, stats)
    return z


def decode(up: nnx.List, head: Conv, x, *, remat: str, tile_pixels: int, training: bool):
    """head(up[-1](... up[0](x))), before the output activation: x (B, h, w, C) ->
    (B, 2**len(up) h, 2**len(up) w, output_nc). remat "decoder" or "all" recomputes each
    upsampler's activations in the backward pass and runs the full-resolution tail in row
    tiles (`_tiled_tail`; inference-mode models only)."""
    if remat in ("none", "blocks"):
        for layer in up:
            x = layer(x)
        return head(x)
    if training:
        raise ValueError(f'remat="{remat}" is for inference-mode models (BatchNorm statistics are not updated)')
    for layer in up[:-1]:
        x = _checkpointed(layer, x)
    return _tiled_tail(up[-1], head, x, tile_pixels)


def _checkpointed(layer: nnx.Module, x):
    """layer(x), its activations recomputed in the backward pass instead of stored."""
    layer_def, layer_state = nnx.split(layer)
    return jax.checkpoint(lambda state, x: nnx.merge(layer_def, state)(x))(layer_state, x)


def tail_tile_rows(height: int, width: int, tile_pixels: int = TAIL_TILE_PIXELS) -> int:
    """Rows per tile of the full-resolution tail for an output of height x width: even, about
    tile_pixels / width, and `height` itself when one tile (with its 8-row halo) covers it."""
    rows = max(2, tile_pixels // width // 2 * 2)
    return height if rows + 8 >= height else rows


def _tiled_tail(up: UpBlock, head: Conv, x, tile_pixels: int):
    """head(up(x)) computed in row tiles of the output, each recomputed in the backward pass.

    x (B, h, w, C) -> (B, 2h, 2w, output_nc). The full-resolution tensors (the upsampler's
    64-channel output, the head's padded input and their gradients) then exist one tile at a
    time, instead of for the whole image. Tile t of T output rows starts at a = min(t*T, H - T)
    (the last tile may overlap its neighbour) and needs the upsampled rows a - 3 .. a + T + 2
    (the head's 7x7 reach), reflected at the image border as the head's ReflectionPad does;
    they are computed in a window of T + 8 rows starting at an even row s, from the input
    rows s/2 .. s/2 + (T + 8)/2 (the transposed conv's output row 2i + 1 also needs row i + 1;
    below the image that row is zero, as in the untiled conv). Same values as the untiled
    tail up to float rounding.
    """
    b, h, w, _ = x.shape
    height = 2 * h
    rows = tail_tile_rows(height, 2 * w, tile_pixels)
    if rows == height:
        return head(up(x))
    window = rows + 8
    starts = np.minimum(np.arange(-(-height // rows)) * rows, height - rows)
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)))
    up_def, up_state = nnx.split(up)
    head_def, head_state = nnx.split(head)

    @jax.checkpoint
    def tile(up_state, head_state, x, start):
        first = jnp.clip(start - 4, 0, height - window)
        y = nnx.merge(up_def, up_state)(lax.dynamic_slice_in_dim(x, first // 2, window // 2 + 1, axis=1))
        needed = start - 3 + jnp.arange(rows + 6)
        needed = jnp.abs(needed)  # reflect at the top ...
        needed = jnp.where(needed >= height, 2 * (height - 1) - needed, needed)  # ... and at the bottom
        y = jnp.take(y, needed - first, axis=1)
        return nnx.merge(head_def, head_state)(y, pad_rows=False)

    tiles = lax.map(lambda start: tile(up_state, head_state, x, start), jnp.asarray(starts, jnp.int32))
    tiles = jnp.moveaxis(tiles, 0, 1)  # (B, n, rows, W, C)
    done = (len(starts) - 1) * rows  # rows of the full tiles before the last one
    return jnp.concatenate([tiles[:, :-1].reshape(b, done, *tiles.shape[3:]), tiles[:, -1, done + rows - height:]],
                           axis=1)


class UpBlock(nnx.Module):
    """ConvTranspose2d + BatchNorm + ReLU: doubles H and W."""

    def __init__(self, in_features, out_features, *, kernels: str, rngs: nnx.Rngs):
        self.conv = UpConv(in_features, out_features, kernels=kernels, rngs=rngs)
        self.bn = batch_norm(out_features, rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


def eval_mode(model: Lama) -> Lama:
    """A view of `model` for inference: its BatchNorms use the running statistics."""
    return nnx.view(model, use_running_average=True)


def train_mode(model: Lama) -> Lama:
    """A view of `model` for training: batch statistics, running averages updated."""
    return nnx.view(model, use_running_average=False)


def with_kernels(model: Lama, kernels: str) -> Lama:
    """A view of `model` whose convolutions use `kernels` (`ops.KERNELS`)."""
    return nnx.view(model, kernels=ops.check_kernels(kernels))


def count_parameters(model: Lama) -> int:
    """Number of trainable parameters (BatchNorm running statistics excluded)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract_model(config: LamaConfig, kernels: str | None = None) -> Lama:
    """A Lama of `config` holding shape/dtype structs only (no memory, no initialisation)."""
    return nnx.eval_shape(lambda: Lama(config, rngs=nnx.Rngs(0), kernels=kernels))
