"""Independent PyTorch reference of LaMa's generator, plain prediction and refinement.

Used only by tests and benchmarks as ground truth next to the JAX port. Written from
``docs/lama.md`` (§1-2 architecture, §5 predict, §6 refinement) and checked against
the golden outputs of the original code in ``tests/golden`` (see
``tests/test_torch_reference.py``). Everything is NCHW and float32.

API
---
- ``FFCResNetGenerator(ngf=64, n_downsampling=3, n_blocks=18, input_nc=4, output_nc=3,
  ratio=0.75, max_features=1024)``: state_dict keys and shapes identical to LaMa's
  generator (``model.1.ffc.convl2l.weight``, ...), so LaMa weights load with
  ``strict=True`` once the ``generator.`` prefix is stripped. Methods ``front(x)`` =
  ``model[0:5]`` -> ``(z_local, z_global)``, ``rear(z_local, z_global)`` = ``model[5:]``
  -> image, ``forward(x) = rear(*front(x))``.
- ``Pix2PixHDGenerator(ngf=64, n_downsampling=3, n_blocks=9, input_nc=4, output_nc=3,
  max_features=1024)``: LaMa's ``pix2pixhd_global`` generator (lama-regular,
  big-lama-regular: sigmoid output), written from ``docs/lama.md``, with LaMa's state_dict
  layout (``model.1.weight``, ``model.N.conv_block.1.weight``, ...). ``front(x)`` =
  ``model[:4 + 3 * n_downsampling]`` -> z (one tensor), ``rear(z)`` = the rest.
- ``randomize(model, seed)``: random weights and non-trivial BatchNorm statistics.
- ``load_golden_state_dict(path)``: generator state dict (prefix stripped) from a
  Lightning checkpoint or a bare state dict.
- ``predict(model, image_hwc, mask_hw) -> (inpainted_hwc, predicted_hwc)``: LaMa's plain
  prediction path.
- ``refine(model, image_hwc, mask_hw, *, modulo, n_iters, lr, min_side, max_scales,
  px_budget) -> (out_hwc, info)``: LaMa's multi-scale feature refinement.
- Building blocks re-used by tests: ``gaussian_blur``, ``pyrdown``, ``pyrdown_mask``,
  ``erode_mask``, ``ellipse_kernel``, ``pad_to_modulo_symmetric``,
  ``pad_tensor_to_modulo_reflect``, ``image_mask_pyramid``, ``n_scales_for``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FourierUnit",
    "SpectralTransform",
    "FFC",
    "FFC_BN_ACT",
    "FFCResnetBlock",
    "ConcatTupleLayer",
    "FFCResNetGenerator",
    "Pix2PixHDGenerator",
    "randomize",
    "load_golden_state_dict",
    "predict",
    "refine",
    "gaussian_blur",
    "adaptive_sizes",
    "pyrdown",
    "pyrdown_mask",
    "erode_mask",
    "ellipse_kernel",
    "pad_to_modulo_symmetric",
    "pad_tensor_to_modulo_reflect",
    "image_mask_pyramid",
    "n_scales_for",
]

EPS = 1e-8


# --------------------------------------------------------------------------------------
# Layers (spec §2)
# --------------------------------------------------------------------------------------


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


class FourierUnit(nn.Module):
    """rfftn (ortho) -> interleaved re/im channels -> 1x1 conv -> BN -> ReLU -> irfftn."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv_layer = nn.Conv2d(2 * in_channels, 2 * out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(2 * out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h, w = x.shape[-2:]
        spec = torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")  # (B, C, H, W//2+1) complex
        spec = torch.stack((spec.real, spec.imag), dim=-1)  # (B, C, H, Wf, 2)
        spec = spec.permute(0, 1, 4, 2, 3).contiguous()  # (B, C, 2, H, Wf)
        spec = spec.view(b, -1, *spec.shape[3:])  # (B, 2C, H, Wf): 2c = re, 2c+1 = im
        spec = self.relu(self.bn(self.conv_layer(spec)))
        spec = spec.view(b, -1, 2, *spec.shape[2:]).permute(0, 1, 3, 4, 2).contiguous()
        spec = torch.complex(spec[..., 0], spec[..., 1])
        return torch.fft.irfftn(spec, s=(h, w), dim=(-2, -1), norm="ortho")


class SpectralTransform(nn.Module):
    """conv1 (1x1, BN, ReLU) -> y; conv2(y + FourierUnit(y)). Stride 1, no LFU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        half = out_channels // 2
        self.downsample = nn.Identity()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, half, kernel_size=1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
        )
        self.fu = FourierUnit(half, half)
        self.conv2 = nn.Conv2d(half, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        y = self.conv1(x)
        f = self.fu(y)
        return self.conv2(y + f)


class FFC(nn.Module):
    """Fast Fourier convolution; a missing branch is carried as the int 0."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        ratio_gin: float,
        ratio_gout: float,
        stride: int = 1,
        padding: int = 0,
        padding_type: str = "reflect",
    ):
        super().__init__()
        in_cg = int(in_channels * ratio_gin)
        in_cl = in_channels - in_cg
        out_cg = int(out_channels * ratio_gout)
        out_cl = out_channels - out_cg
        self.ratio_gin = ratio_gin
        self.ratio_gout = ratio_gout
        self.global_in_num = in_cg

        def conv(cin: int, cout: int) -> nn.Module:
            if cin == 0 or cout == 0:
                return nn.Identity()
            return nn.Conv2d(
                cin, cout, kernel_size, stride, padding, bias=False, padding_mode=padding_type
            )

        self.convl2l = conv(in_cl, out_cl)
        self.convl2g = conv(in_cl, out_cg)
        self.convg2l = conv(in_cg, out_cl)
        if in_cg == 0 or out_cg == 0:
            self.convg2g = nn.Identity()
        else:
            assert stride == 1, "only stride-1 spectral transforms are supported"
            self.convg2g = SpectralTransform(in_cg, out_cg)

    def forward(self, x):
        x_l, x_g = x if isinstance(x, tuple) else (x, 0)
        out_l, out_g = 0, 0
        if self.ratio_gout != 1:
            out_l = self.convl2l(x_l) + self.convg2l(x_g)
        if self.ratio_gout != 0:
            out_g = self.convl2g(x_l) + self.convg2g(x_g)
        return out_l, out_g


class FFC_BN_ACT(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        ratio_gin: float,
        ratio_gout: float,
        stride: int = 1,
        padding: int = 0,
        padding_type: str = "reflect",
    ):
        super().__init__()
        self.ffc = FFC(
            in_channels, out_channels, kernel_size, ratio_gin, ratio_gout, stride, padding,
            padding_type,
        )
        out_cg = int(out_channels * ratio_gout)
        out_cl = out_channels - out_cg
        self.bn_l = nn.Identity() if ratio_gout == 1 else nn.BatchNorm2d(out_cl)
        self.bn_g = nn.Identity() if ratio_gout == 0 else nn.BatchNorm2d(out_cg)
        self.act_l = nn.Identity() if ratio_gout == 1 else nn.ReLU(inplace=True)
        self.act_g = nn.Identity() if ratio_gout == 0 else nn.ReLU(inplace=True)

    def forward(self, x):
        x_l, x_g = self.ffc(x)
        x_l = self.act_l(self.bn_l(x_l))
        x_g = self.act_g(self.bn_g(x_g))
        return x_l, x_g


class FFCResnetBlock(nn.Module):
    def __init__(self, dim: int, ratio: float):
        super().__init__()
        self.conv1 = FFC_BN_ACT(dim, dim, 3, ratio, ratio, stride=1, padding=1)
        self.conv2 = FFC_BN_ACT(dim, dim, 3, ratio, ratio, stride=1, padding=1)

    def forward(self, x):
        x_l, x_g = x if isinstance(x, tuple) else (x, 0)
        id_l, id_g = x_l, x_g
        x_l, x_g = self.conv1((x_l, x_g))
        x_l, x_g = self.conv2((x_l, x_g))
        return id_l + x_l, id_g + x_g


class ConcatTupleLayer(nn.Module):
    def forward(self, x):
        x_l, x_g = x
        if not _is_tensor(x_g):
            return x_l
        return torch.cat((x_l, x_g), dim=1)  # local channels first, then global


class FFCResNetGenerator(nn.Module):
    """LaMa's ``FFCResNetGenerator`` for the Big-LaMa family of configurations."""

    def __init__(
        self,
        ngf: int = 64,
        n_downsampling: int = 3,
        n_blocks: int = 18,
        input_nc: int = 4,
        output_nc: int = 3,
        ratio: float = 0.75,
        max_features: int = 1024,
    ):
        super().__init__()
        self.config = dict(
            ngf=ngf, n_downsampling=n_downsampling, n_blocks=n_blocks, input_nc=input_nc,
            output_nc=output_nc, ratio=ratio, max_features=max_features,
        )
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            FFC_BN_ACT(input_nc, ngf, kernel_size=7, ratio_gin=0, ratio_gout=0, padding=0),
        ]
        for i in range(n_downsampling):
            mult = 2**i
            last = i == n_downsampling - 1
            layers.append(
                FFC_BN_ACT(
                    min(max_features, ngf * mult),
                    min(max_features, ngf * mult * 2),
                    kernel_size=3,
                    ratio_gin=0,
                    ratio_gout=ratio if last else 0,
                    stride=2,
                    padding=1,
                )
            )
        self.n_front = len(layers)
        mult = 2**n_downsampling
        feats = min(max_features, ngf * mult)
        for _ in range(n_blocks):
            layers.append(FFCResnetBlock(feats, ratio))
        layers.append(ConcatTupleLayer())
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            layers += [
                nn.ConvTranspose2d(
                    min(max_features, ngf * mult),
                    min(max_features, int(ngf * mult / 2)),
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                ),
                nn.BatchNorm2d(min(max_features, int(ngf * mult / 2))),
                nn.ReLU(inplace=True),
            ]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0),
            nn.Sigmoid(),
        ]
        self.model = nn.Sequential(*layers)
        self.eval()

    def front(self, x: torch.Tensor):
        return self.model[: self.n_front](x)

    def rear(self, z_local: torch.Tensor, z_global: torch.Tensor) -> torch.Tensor:
        return self.model[self.n_front :]((z_local, z_global))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rear(*self.front(x))


class ResnetBlock(nn.Module):
    """pix2pixhd residual block: x + [pad, conv3, BN, ReLU, pad, conv3, BN](x), reflect pads."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.BatchNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.BatchNorm2d(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class Pix2PixHDGenerator(nn.Module):
    """LaMa's ``pix2pixhd_global`` generator with ``add_out_act: sigmoid``."""

    def __init__(self, ngf: int = 64, n_downsampling: int = 3, n_blocks: int = 9, input_nc: int = 4,
                 output_nc: int = 3, max_features: int = 1024):
        super().__init__()

        def channels(level):
            return min(max_features, ngf * 2**level)

        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), nn.BatchNorm2d(ngf),
                                   nn.ReLU(True)]
        for i in range(n_downsampling):  # zero padding: plain Conv2d(padding=1)
            layers += [nn.Conv2d(channels(i), channels(i + 1), 3, stride=2, padding=1),
                       nn.BatchNorm2d(channels(i + 1)), nn.ReLU(True)]
        self.n_front = len(layers)
        layers += [ResnetBlock(channels(n_downsampling)) for _ in range(n_blocks)]
        for i in range(n_downsampling, 0, -1):
            layers += [nn.ConvTranspose2d(channels(i), channels(i - 1), 3, stride=2, padding=1, output_padding=1),
                       nn.BatchNorm2d(channels(i - 1)), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Sigmoid()]
        self.model = nn.Sequential(*layers)
        self.eval()

    def front(self, x: torch.Tensor) -> torch.Tensor:
        return self.model[: self.n_front](x)

    def rear(self, z: torch.Tensor) -> torch.Tensor:
        return self.model[self.n_front :](z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rear(self.front(x))


def randomize(model: nn.Module, seed: int = 0, residual_scale: float = 0.1) -> nn.Module:
    """Random weights (variance-preserving scale) and random BN statistics (var > 0).

    Conv / ConvTranspose weights ~ N(0, 1/fan_in) with fan_in over the contracted axes,
    biases ~ N(0, 0.05); BatchNorm weight ~ U(0.6, 1.4), bias ~ N(0, 0.1),
    running_mean ~ N(0, 0.2), running_var ~ U(0.4, 2.0). The affine of the last BN of each
    residual branch (``conv2.bn_l``/``conv2.bn_g`` of every FFCResnetBlock) is then scaled by
    ``residual_scale`` so that 18 blocks do not blow up the residual stream (without it
    Big-LaMa's sigmoid output saturates to 0/1). Deterministic for a seed; CPU generator.
    """
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float32)

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(uniform(n, 0.6, 1.4))
                mod.bias.copy_(normal(n, 0.1))
                mod.running_mean.copy_(normal(n, 0.2))
                mod.running_var.copy_(uniform(n, 0.4, 2.0))
            elif isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
                w = mod.weight
                if isinstance(mod, nn.ConvTranspose2d):
                    fan_in = w.shape[0] * w.shape[2] * w.shape[3] / 4.0  # stride-2 overlap
                else:
                    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
                w.copy_(normal(tuple(w.shape), 1.0 / math.sqrt(fan_in)))
                if mod.bias is not None:
                    mod.bias.copy_(normal(tuple(mod.bias.shape), 0.05))
        for mod in model.modules():
            if isinstance(mod, FFCResnetBlock):
                for bn in (mod.conv2.bn_l, mod.conv2.bn_g):
                    if isinstance(bn, nn.BatchNorm2d):
                        bn.weight.mul_(residual_scale)
                        bn.bias.mul_(residual_scale)
    return model


def load_golden_state_dict(path) -> dict[str, torch.Tensor]:
    """Generator state dict (keys without ``generator.``) from a checkpoint or bare dict.

    Accepts a Lightning checkpoint (``state_dict`` holding ``generator.*`` and other
    prefixes, which are dropped), a bare state dict with or without the ``generator.``
    prefix, or one with the ``model.generator.`` prefix of a traced wrapper.
    """
    obj = torch.load(path, map_location="cpu", weights_only=False)
    sd = obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj
    if not isinstance(sd, dict):
        raise TypeError(f"{path}: no state dict found (got {type(sd).__name__})")
    for prefix in ("generator.", "model.generator."):
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


# --------------------------------------------------------------------------------------
# Plain prediction (spec §5)
# --------------------------------------------------------------------------------------


def _ceil_mod(x: int, mod: int) -> int:
    return x if x % mod == 0 else (x // mod + 1) * mod


def pad_to_modulo_symmetric(arr_chw: np.ndarray, mod: int) -> np.ndarray:
    """numpy 'symmetric' (edge repeated) pad of a (C, H, W) array at bottom/right."""
    _, h, w = arr_chw.shape
    return np.pad(
        arr_chw, ((0, 0), (0, _ceil_mod(h, mod) - h), (0, _ceil_mod(w, mod) - w)),
        mode="symmetric",
    )


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to_numpy_hwc(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).detach().cpu().numpy().astype(np.float32, copy=False)


def predict(model: nn.Module, image_hwc: np.ndarray, mask_hw: np.ndarray, modulo: int = 8):
    """LaMa's plain predict path. Returns (inpainted_hwc, predicted_hwc), both cropped."""
    model.eval()
    device = _model_device(model)
    image = np.asarray(image_hwc, dtype=np.float32)
    mask = np.asarray(mask_hw, dtype=np.float32)
    h, w = image.shape[:2]
    img_chw = pad_to_modulo_symmetric(np.ascontiguousarray(image.transpose(2, 0, 1)), modulo)
    mask_chw = pad_to_modulo_symmetric(mask[None], modulo)
    img_t = torch.from_numpy(np.ascontiguousarray(img_chw))[None].to(device)
    mask_t = (torch.from_numpy(np.ascontiguousarray(mask_chw))[None] > 0).long().to(device)
    with torch.no_grad():
        masked = img_t * (1 - mask_t)
        x = torch.cat([masked, mask_t], dim=1)  # int64 mask promoted to float32
        predicted = model(x)
        inpainted = mask_t * predicted + (1 - mask_t) * img_t
    return _to_numpy_hwc(inpainted[:, :, :h, :w]), _to_numpy_hwc(predicted[:, :, :h, :w])


# --------------------------------------------------------------------------------------
# Refinement helpers (spec §6.3, §6.6)
# --------------------------------------------------------------------------------------


def _gaussian_kernel2d(device, dtype=torch.float32, sigma: float = 1.0) -> torch.Tensor:
    r = math.ceil(2 * sigma)
    x = torch.arange(2 * r + 1, dtype=torch.float32) - r
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return torch.matmul(g.unsqueeze(-1), g.unsqueeze(-1).t()).to(device=device, dtype=dtype)


def gaussian_blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian over [-ceil(2 sigma), ceil(2 sigma)] (LaMa's 5x5 for sigma 1), reflect border,
    depthwise. x: (B, C, H, W)."""
    b, c, h, w = x.shape
    r = math.ceil(2 * sigma)
    k = _gaussian_kernel2d(x.device, x.dtype, sigma)[None, None].expand(1, c, 2 * r + 1, 2 * r + 1)
    xp = F.pad(x, (r, r, r, r), mode="reflect")
    xp = xp.view(-1, c, xp.shape[-2], xp.shape[-1])
    return F.conv2d(xp, k.reshape(c, 1, 2 * r + 1, 2 * r + 1), groups=c).view(b, c, h, w)


def _bilinear(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def pyrdown(img: torch.Tensor, size=None, sigma: float = 1.0) -> torch.Tensor:
    size = size or (img.shape[2] // 2, img.shape[3] // 2)
    return _bilinear(gaussian_blur(img, sigma), size)


def _binarise(m: torch.Tensor, thr: float) -> torch.Tensor:
    m = m.clone()
    m[m >= thr] = 1.0
    m[m < thr] = 0.0
    return m


def pyrdown_mask(mask: torch.Tensor, size=None, blur: bool = True, round_up: bool = True, sigma: float = 1.0):
    """(Blur +) bilinear to half size, then >= 1e-8 (round up) or >= 1-1e-8 (round down)."""
    size = size or (mask.shape[2] // 2, mask.shape[3] // 2)
    if blur:
        mask = gaussian_blur(mask, sigma)
    mask = _bilinear(mask, size)
    return _binarise(mask, EPS if round_up else 1.0 - EPS)


def ellipse_kernel(ksize: int = 15) -> torch.Tensor:
    """OpenCV's MORPH_ELLIPSE structuring element (ksize x ksize), float {0, 1}."""
    r = c = ksize // 2
    k = np.zeros((ksize, ksize), np.float32)
    for i in range(ksize):
        dy = i - r
        if abs(dy) <= r:
            dx = int(round(c * math.sqrt((r * r - dy * dy) / float(r * r))))
            k[i, max(c - dx, 0) : min(c + dx + 1, ksize)] = 1.0
    return torch.from_numpy(k)


def erode_mask(mask: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Grey erosion (min over the structuring element), border value 1, then >= 1-1e-8."""
    b, c, h, w = mask.shape
    kh, kw = kernel.shape
    xp = F.pad(mask.reshape(b * c, 1, h, w), (kw // 2, kw // 2, kh // 2, kh // 2), value=1.0)
    out = None
    for dy, dx in zip(*np.nonzero(kernel.cpu().numpy())):
        shifted = xp[:, :, dy : dy + h, dx : dx + w]
        out = shifted if out is None else torch.minimum(out, shifted)
    return _binarise(out.reshape(b, c, h, w), 1.0 - EPS)


def pad_tensor_to_modulo_reflect(x: torch.Tensor, mod: int) -> torch.Tensor:
    """torch reflect (edge not repeated) pad at bottom/right to a multiple of mod."""
    h, w = x.shape[-2:]
    ph, pw = _ceil_mod(h, mod) - h, _ceil_mod(w, mod) - w
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="reflect")


def n_scales_for(h: int, w: int, min_side: int, max_scales: int) -> int:
    breadth = min(h, w)
    return min(1 + int(round(max(0.0, float(np.log2(breadth / min_side))))), max_scales)


def adaptive_sizes(h: int, w: int, min_side: int, max_scales: int) -> list[tuple[int, int]]:
    """jax-refine's "adaptive" schedule (not in LaMa): as many scales as halving, the coarsest
    short side = min_side, log-scale steps in the ratio 1 : 2 : 4 ..., coarse to fine."""
    n = n_scales_for(h, w, min_side, max_scales)
    octaves = max(0.0, math.log2(min(h, w) / min_side))
    total = 2 ** (n - 1) - 1
    sizes = []
    for k in range(n - 1):
        position = (2**k - 1) / total  # steps 1, 2, 4, ... before scale k
        f = 2.0 ** (octaves * (position - 1.0))
        sizes.append((max(1, round(h * f)), max(1, round(w * f))))
    return sizes + [(h, w)]


def image_mask_pyramid(image: torch.Tensor, mask: torch.Tensor, min_side, max_scales, px_budget,
                       schedule: str = "halving"):
    """Coarse-to-fine lists of (1,3,h,w) images and (1,1,h,w) masks (spec §6.3), and the blur
    sigma of each level's step down to the previous one."""
    h, w = image.shape[2:]
    if h * w > px_budget:
        ratio = np.sqrt(px_budget / float(h * w))
        h, w = int(h * ratio), int(w * ratio)
        image = _bilinear(image, (h, w))
        mask = _bilinear(mask, (h, w))
        mask[mask > EPS] = 1.0
    n_scales = n_scales_for(h, w, min_side, max_scales)
    images, masks, sigmas = [image], [mask], []
    sizes = adaptive_sizes(h, w, min_side, max_scales)[::-1] if schedule == "adaptive" else None
    for k in range(n_scales - 1):
        if sizes is None:
            size, sigma = None, 1.0
        else:
            size, sigma = sizes[k + 1], min(sizes[k]) / min(sizes[k + 1]) / 2
        images.append(pyrdown(images[-1], size, sigma))
        masks.append(pyrdown_mask(masks[-1], size, sigma=sigma))
        sigmas.append(sigma)
    return images[::-1], masks[::-1], [1.0] + sigmas[::-1]


# --------------------------------------------------------------------------------------
# Refinement (spec §6.4-6.6)
# --------------------------------------------------------------------------------------


def _masked_l1_mean(a: torch.Tensor, b: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    return torch.mean(torch.abs(a[sel] - b[sel]))


def _infer_scale(model, image, mask, ref, orig_hw, n_iters, lr, ekernel, sigma=1.0):
    """One level of refinement on padded image (1,3,Hp,Wp) and binary mask (1,1,Hp,Wp)."""
    x = torch.cat([image * (1 - mask), mask], dim=1)
    mask3 = mask.repeat(1, 3, 1, 1)
    h, w = orig_hw
    with torch.no_grad():
        z = model.front(x)  # (z_local, z_global) for FFC generators, one tensor for pix2pixhd
    z = [t.detach().clone().requires_grad_(True) for t in (z if isinstance(z, tuple) else (z,))]
    losses: list[float] = []
    if ref is None:
        with torch.no_grad():
            pred = model.rear(*z)
    else:
        ref = ref.detach()
        opt = torch.optim.Adam(z, lr=lr)
        known = mask3 < EPS
        for i in range(n_iters):
            opt.zero_grad()
            pred = model.rear(*z)
            pred_low = pyrdown(pred[:, :, :h, :w], ref.shape[2:], sigma)
            mask_low = pyrdown_mask(mask3[:, :1, :h, :w], ref.shape[2:], blur=False, round_up=False)
            mask_low = erode_mask(mask_low, ekernel).repeat(1, 3, 1, 1)
            loss = _masked_l1_mean(pred, image, known)
            loss = loss + _masked_l1_mean(pred_low, ref, mask_low >= EPS)
            losses.append(float(loss.detach()))
            if i < n_iters - 1:
                loss.backward()
                opt.step()
    with torch.no_grad():
        out = mask3 * pred + (1 - mask3) * image
    return out.detach(), losses


def refine(
    model: nn.Module,
    image_hwc: np.ndarray,
    mask_hw: np.ndarray,
    *,
    modulo: int = 8,
    n_iters: int = 15,
    lr: float = 0.002,
    min_side: int = 512,
    max_scales: int = 3,
    px_budget: int = 1_800_000,
    scale_schedule: str = "halving",
):
    """LaMa's multi-scale feature refinement. Returns (out_hwc, info).

    ``scale_schedule="adaptive"`` spaces the scales as jax-refine's option of that name
    (``adaptive_sizes``) instead of halving; everything else is LaMa's.

    ``mask_hw`` is the raw grey mask in [0, 1] (not binarised: the pyramid blurs it first).
    ``out_hwc`` has the (possibly px_budget-reduced) size of the finest level. ``info`` is a
    list, coarse to fine, of dicts with scale_ind, padded_hw, orig_hw, refined, n_forward,
    n_backward and losses (one float per forward of a refined level, the last included;
    empty for the coarsest level, which is one plain forward; the original runs that forward
    with autograd on, here it is under no_grad, same values). The optimiser is
    ``torch.optim.Adam`` exactly as in LaMa (single-tensor CPU path); model weights are
    frozen during the call and their requires_grad flags restored afterwards.
    """
    model.eval()
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:  # only z is optimised; frozen weights skip needless weight grads
            p.requires_grad_(False)
        return _refine(
            model, image_hwc, mask_hw, modulo, n_iters, lr, min_side, max_scales, px_budget, scale_schedule
        )
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def _refine(model, image_hwc, mask_hw, modulo, n_iters, lr, min_side, max_scales, px_budget, schedule):
    device = _model_device(model)
    image = np.asarray(image_hwc, np.float32).transpose(2, 0, 1)
    image = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)
    mask = torch.from_numpy(np.ascontiguousarray(np.asarray(mask_hw, np.float32)))
    mask = mask[None, None].to(device)
    ekernel = ellipse_kernel(15)
    images, masks, sigmas = image_mask_pyramid(image, mask, min_side, max_scales, px_budget, schedule)
    result = None
    info = []
    for s, (img, msk, sigma) in enumerate(zip(images, masks, sigmas)):
        orig_hw = tuple(img.shape[2:])
        img = pad_tensor_to_modulo_reflect(img, modulo)
        msk = _binarise(pad_tensor_to_modulo_reflect(msk, modulo), EPS)
        out, losses = _infer_scale(model, img, msk, result, orig_hw, n_iters, lr, ekernel, sigma)
        result = out[:, :, : orig_hw[0], : orig_hw[1]]
        refined = s > 0
        info.append(
            dict(
                scale_ind=s,
                padded_hw=tuple(img.shape[2:]),
                orig_hw=orig_hw,
                refined=refined,
                n_forward=n_iters if refined else 1,
                n_backward=n_iters - 1 if refined else 0,
                losses=losses,
            )
        )
    return _to_numpy_hwc(result), info
