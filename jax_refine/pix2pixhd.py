"""LaMa's `pix2pixhd_global` generator in Flax NNX (NHWC, float32).

The generator of LaMa's `lama-regular` (9 residual blocks) and `big-lama-regular` (15)
configurations (`GlobalGenerator` in LaMa, after pix2pixHD by Wang et al. 2018), written
from its description in docs/lama.md: plain convolutions where Big-LaMa has Fourier ones.

    stem    reflect pad 3, 7x7 conv (input_nc -> ngf), BN, ReLU
    down[i] 3x3 stride-2 conv, zero padding 1 (ngf 2**i -> ngf 2**(i+1)), BN, ReLU
    blocks  n_blocks x [reflect pad 1, 3x3 conv, BN, ReLU, reflect pad 1, 3x3 conv, BN] + input
    up[i]   ConvTranspose2d(3, stride 2), BN, ReLU (as Big-LaMa's `model.UpBlock`)
    head    reflect pad 3, 7x7 conv (ngf -> output_nc), sigmoid

Every conv has a bias; channels are capped at max_features. `front` ends after the
downsampling (where Big-LaMa's does): z is one (B, H/modulo, W/modulo, ngf 2**n) array.
The layers are `model.py`'s (Conv, UpBlock, batch_norm), the residual blocks are stacked
and scanned, and the decoder is shared (`model.decode`), so remat and the tiled tail work
as for Big-LaMa.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from . import ops
from .model import (TAIL_TILE_PIXELS, Conv, EncoderDecoderConfig, SplitGenerator, UpBlock, batch_norm, check_config,
                    check_remat, decode, scan_blocks)

ARCHITECTURE = "pix2pixhd_global"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pix2PixHDConfig(EncoderDecoderConfig):
    """LaMa `pix2pixhd_global` generator configuration (the options LaMa's released configs
    use: reflect padding in the blocks, BatchNorm, ReLU, plain convs, sigmoid output).

    Attributes as `model.LamaConfig`: ngf, n_downsampling, n_blocks, input_nc / output_nc,
    max_features, hole_fill, refine_defaults; output is always "sigmoid" (LaMa's
    `add_out_act: sigmoid`).
    """

    n_blocks: int = 9
    architecture = ARCHITECTURE  # the name checkpoints record (contract.GeneratorConfig); not a field

    def __post_init__(self):
        check_config(self, ("sigmoid",), [])


LAMA_REGULAR = Pix2PixHDConfig(n_blocks=9)
"""LaMa's lama-regular generator (configs/training/generator/pix2pixhd_global_sigmoid.yaml)."""

BIG_LAMA_REGULAR = Pix2PixHDConfig(n_blocks=15)
"""LaMa's big-lama-regular generator (configs/training/big-lama-regular.yaml)."""

TINY_PIX2PIXHD = Pix2PixHDConfig(ngf=8, n_blocks=2)
"""The small random generator of the golden fixtures (tests/golden/tinypix2pixhd.ckpt)."""


class ConvBlock(nnx.Module):
    """Conv (with bias) + BatchNorm + ReLU."""

    def __init__(self, in_features, out_features, kernel_size, *, stride=1, pad_mode, kernels: str,
                 rngs: nnx.Rngs):
        self.conv = Conv(in_features, out_features, kernel_size, stride=stride, pad=(kernel_size - 1) // 2,
                         pad_mode=pad_mode, use_bias=True, kernels=kernels, rngs=rngs)
        self.bn = batch_norm(out_features, rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


class ResnetBlock(nnx.Module):
    """x + BN(conv2(ReLU(BN(conv1(x))))), 3x3 reflect-padded convs with bias (run inside `lax.scan`)."""

    def __init__(self, channels, *, kernels: str, rngs: nnx.Rngs):
        self.conv1, self.conv2 = (Conv(channels, channels, 3, pad=1, use_bias=True, kernels=kernels, in_loop=True,
                                       rngs=rngs) for _ in range(2))
        self.bn1, self.bn2 = batch_norm(channels, rngs), batch_norm(channels, rngs)

    def __call__(self, x):
        return x + self.bn2(self.conv2(jax.nn.relu(self.bn1(self.conv1(x)))))


class Pix2PixHD(SplitGenerator):
    """LaMa's pix2pixhd_global generator. x (B, H, W, input_nc) = `model_input(config, image,
    mask)` -> (B, H, W, output_nc) in (0, 1).

    H and W must be multiples of `config.modulo` and at least 2 * modulo. kernels: `ops.KERNELS`,
    default `ops.default_kernels()`. A new model is in training mode (batch statistics);
    `model.eval_mode` gives the inference view.
    """

    def __init__(self, config: Pix2PixHDConfig = LAMA_REGULAR, *, rngs: nnx.Rngs, kernels: str | None = None):
        self.config = config
        self.use_running_average = False
        c, kernels = config, ops.check_kernels(kernels or ops.default_kernels())
        self.stem = ConvBlock(c.input_nc, c.ngf, 7, pad_mode="reflect", kernels=kernels, rngs=rngs)
        self.down = nnx.List([ConvBlock(c.channels(i), c.channels(i + 1), 3, stride=2, pad_mode="zeros",
                                        kernels=kernels, rngs=rngs) for i in range(c.n_downsampling)])
        bottleneck = c.bottleneck_channels

        @nnx.split_rngs(splits=c.n_blocks)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs):
            return ResnetBlock(bottleneck, kernels=kernels, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.up = nnx.List([UpBlock(c.channels(i), c.channels(i - 1), kernels=kernels, rngs=rngs)
                            for i in range(c.n_downsampling, 0, -1)])
        self.head = Conv(c.ngf, c.output_nc, 7, pad=3, use_bias=True, kernels=kernels, rngs=rngs)

    def front(self, x):
        """(B, H, W, input_nc) -> z (B, H / modulo, W / modulo, channels(n_downsampling))."""
        self._check_input(x)
        x = self.stem(x)
        for layer in self.down:
            x = layer(x)
        return x

    def rear(self, z, base=None, *, remat: str = "none", tile_pixels: int = TAIL_TILE_PIXELS):
        """z -> image (B, H, W, output_nc) in (0, 1): residual blocks, decoder, sigmoid. base is
        unused (the output is not residual); remat and tile_pixels as in `model.Lama.rear`."""
        check_remat(remat)
        training = not self.use_running_average
        x = scan_blocks(self.blocks, z, remat=remat, training=training)
        return self._output(decode(self.up, self.head, x, remat=remat, tile_pixels=tile_pixels, training=training),
                            base)


def abstract_model(config: Pix2PixHDConfig, kernels: str | None = None) -> Pix2PixHD:
    """A Pix2PixHD of `config` holding shape/dtype structs only (no memory, no initialisation)."""
    return nnx.eval_shape(lambda: Pix2PixHD(config, rngs=nnx.Rngs(0), kernels=kernels))
