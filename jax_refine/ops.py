"""Convolution kernels: the stock XLA ops, and their XLA-CPU variants (docs/xla-cpu.md).

Every function takes `kernels`, one of KERNELS:
  "xla"  the stock `lax` convolutions, with JAX's own gradients (GPU, TPU);
  "cpu"  the same values and gradients, computed in the forms XLA-CPU runs fast and within
         its memory accounting: a custom VJP whose input-gradient conv gets a physically
         transposed kernel (§2), kernel gradients as per-tap matmuls inside loops (§3), the
         upsamplers' transposed conv per output phase (§4), convs with few output channels
         as a row-tap conv plus shifted sums (§5).
`default_kernels()` picks "cpu" on the CPU backend and "xla" elsewhere; a model can be told
otherwise (`jax_refine.model.with_kernels`). Both paths are tested to agree (tests/test_ops.py).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

KERNELS = ("xla", "cpu")
THIN_CONV_CHANNELS = 8  # "cpu": stride-1 convs with fewer output channels use `_thin_conv2d`
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
_UP_CONV = ((1, 1), ((1, 2), (1, 2)), (2, 2))  # strides, padding, input dilation of `up_conv2d`


def default_kernels() -> str:
    """The kernels for the default backend: "cpu" on CPU, else "xla"."""
    return "cpu" if jax.default_backend() == "cpu" else "xla"


def check_kernels(kernels: str) -> str:
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    return kernels


def conv2d(x, kernel, strides=(1, 1), padding=((0, 0), (0, 0)), *, kernels: str, in_loop: bool = False):
    """Convolution of x (B, H, W, Cin) with kernel (kh, kw, Cin, Cout) -> (B, H', W', Cout).

    in_loop: the conv runs inside `lax.scan` / `lax.while_loop` ("cpu": kernel gradients as matmuls).
    """
    if kernels == "xla":
        return _conv(x, kernel, strides, padding, (1, 1))
    if strides == (1, 1) and padding == ((0, 0), (0, 0)) and kernel.shape[3] < THIN_CONV_CHANNELS:
        return _thin_conv2d(x, kernel, in_loop)
    return _cpu_conv2d(x, kernel, strides, padding, (1, 1), in_loop)


def up_conv2d(x, kernel, *, kernels: str, in_loop: bool = False):
    """torch's ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1) as the input-dilated
    conv it is: x (B, H, W, Cin), kernel (3, 3, Cin, Cout) (the torch weight transposed and
    flipped, see docs/lama.md §3) -> (B, 2H, 2W, Cout)."""
    if kernels == "xla":
        return _conv(x, kernel, *_UP_CONV)
    return _phase_up_conv2d(x, kernel, in_loop)


def _conv(x, kernel, strides, padding, input_dilation):
    return lax.conv_general_dilated(x, kernel, strides, padding, lhs_dilation=input_dilation,
                                    dimension_numbers=_DIMENSIONS)


# --------------------------------------------------------------------------------------
# "cpu": a conv whose gradient XLA-CPU keeps on its fast path (docs/xla-cpu.md §2, §3)
# --------------------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _cpu_conv2d(x, kernel, strides, padding, input_dilation, in_loop):
    return _conv(x, kernel, strides, padding, input_dilation)


def _cpu_conv2d_fwd(x, kernel, strides, padding, input_dilation, in_loop):
    return _conv(x, kernel, strides, padding, input_dilation), (x, kernel)


def _cpu_conv2d_bwd(strides, padding, input_dilation, in_loop, residuals, g):
    """Input gradient through a kernel transposed behind an optimization barrier (XLA cannot
    fold the transpose into dimension labels and fall back to its slow path); kernel gradient
    as per-tap matmuls inside loops, or on the explicitly dilated input for dilated convs."""
    x, kernel = residuals
    kernel_hwoi = lax.optimization_barrier(jnp.swapaxes(kernel, 2, 3))

    def conv_hwoi(x):
        return lax.conv_general_dilated(x, kernel_hwoi, strides, padding, lhs_dilation=input_dilation,
                                        dimension_numbers=("NHWC", "HWOI", "NHWC"))

    (dx,) = jax.vjp(conv_hwoi, x)[1](g)
    if in_loop:
        dkernel = _kernel_grad(x, g, kernel.shape, strides, padding, input_dilation)
    elif input_dilation != (1, 1):
        x = _dilate_and_pad(x, padding, input_dilation)
        (dkernel,) = jax.vjp(lambda k: _conv(x, k, strides, ((0, 0), (0, 0)), (1, 1)), kernel)[1](g)
    else:
        (dkernel,) = jax.vjp(lambda k: _conv(x, k, strides, padding, input_dilation), kernel)[1](g)
    return dx, dkernel


_cpu_conv2d.defvjp(_cpu_conv2d_fwd, _cpu_conv2d_bwd)


def _dilate_and_pad(x, padding, input_dilation):
    """x with input_dilation - 1 zeros between pixels and the conv's zero padding added."""
    (dh, dw), ((top, bottom), (left, right)) = input_dilation, padding
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, bottom, dh - 1), (left, right, dw - 1), (0, 0, 0)))


def _kernel_grad(x, g, kernel_shape, strides, padding, input_dilation):
    """d(conv)/d(kernel) as one matmul per kernel tap (kh * kw dots over B * H * W)."""
    x = _dilate_and_pad(x, padding, input_dilation)
    kh, kw, cin, cout = kernel_shape
    (ho, wo), (sh, sw) = g.shape[1:3], strides
    g = g.reshape(-1, cout)
    taps = []
    for i in range(kh):
        for j in range(kw):
            window = lax.slice(x, (0, i, j, 0), (x.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin),
                               (1, sh, sw, 1))
            taps.append(lax.dot_general(window.reshape(-1, cin), g, (((0,), (0,)), ((), ()))))
    return jnp.stack(taps).reshape(kh, kw, cin, cout)


# --------------------------------------------------------------------------------------
# "cpu": the transposed conv per output phase (docs/xla-cpu.md §4)
# --------------------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _phase_up_conv2d(x, kernel, in_loop):
    """Output row 2i takes kernel row 1 at input row i; row 2i + 1 takes kernel rows 0 and 2 at
    input rows i and i + 1 (zero below the image); the same for columns: four small convs (1x1,
    1x2, 2x1, 2x2 taps) give the four phases, interleaved into the output."""
    b, h, w, _ = x.shape
    even_even = x @ kernel[1, 1]
    even_odd = _conv(x, kernel[1:2, 0::2], (1, 1), ((0, 0), (0, 1)), (1, 1))
    odd_even = _conv(x, kernel[0::2, 1:2], (1, 1), ((0, 1), (0, 0)), (1, 1))
    odd_odd = _conv(x, kernel[0::2, 0::2], (1, 1), ((0, 1), (0, 1)), (1, 1))
    y = jnp.stack([jnp.stack([even_even, even_odd], axis=3), jnp.stack([odd_even, odd_odd], axis=3)], axis=2)
    return y.reshape(b, 2 * h, 2 * w, kernel.shape[-1])  # (B, H, row phase, W, column phase, C)


def _phase_up_conv2d_fwd(x, kernel, in_loop):
    return _phase_up_conv2d(x, kernel, in_loop), (x, kernel)


def _phase_up_conv2d_bwd(in_loop, residuals, g):
    return _cpu_conv2d_bwd(*_UP_CONV, in_loop, residuals, g)  # the dilated form's gradient


_phase_up_conv2d.defvjp(_phase_up_conv2d_fwd, _phase_up_conv2d_bwd)


# --------------------------------------------------------------------------------------
# "cpu": convs with few output channels (docs/xla-cpu.md §5)
# --------------------------------------------------------------------------------------


def _thin_conv2d(x, kernel, in_loop):
    """VALID stride-1 conv for a small Cout: one 1 x kw conv whose kh * Cout output channels
    hold the taps of every kernel row, then a sum of kh row-shifted slices."""
    kh, kw, cin, cout = kernel.shape
    per_row = _cpu_conv2d(x, kernel.transpose(1, 2, 0, 3).reshape(1, kw, cin, kh * cout), (1, 1),
                          ((0, 0), (0, 0)), (1, 1), in_loop)
    height = x.shape[1] - kh + 1
    return sum(per_row[:, i:i + height, :, i * cout:(i + 1) * cout] for i in range(kh))
