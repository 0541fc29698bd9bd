"""TrivialAugment and RandAugment as batched ops: each sample draws its own op and magnitude.

torchvision's TrivialAugmentWide and RandAugment draw one op and one magnitude per call, so a batch
given to them gets one augmentation for all its images. Here every sample draws its own (op, bin,
sign), and the batch is processed one op at a time: the samples that drew that op are gathered,
transformed together with their per-sample magnitudes, and put back (14 batched passes at most per
round, no per-sample Python loop).

The 14 ops, their magnitude tables and their definitions are torchvision's (0.19+, `fill=None`,
nearest interpolation), on float images in [0, 1]: the same op and magnitude on a sample give the
same output as torchvision's implementation on that sample (tests/test_augment_auto.py), up to float
rounding in Color and Contrast on RGB images, which reuse cnnlab's `Saturation` and `Contrast` with
ITU-R 601 luma (0.299 R) where torchvision uses 0.2989 R (a difference below 2e-4).

    trivial                  TrivialAugment (Müller & Hutter 2021), torchvision's "wide" magnitudes
    randaugment:n=2:m=9      RandAugment (Cubuk et al. 2020): n ops in turn, each at magnitude bin m
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlab.augment._base import Device, Op, Params, Shape, Size, _check_p, _rand, _randint
from cnnlab.augment.photometric import Contrast, Exposure, Saturation
from cnnlab.errors import CnnlabError

# The op names in torchvision's order (its _AUGMENTATION_SPACE dicts), index = the "op" parameter.
NAMES = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
         "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
SIGNED = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
                    "Sharpness"})
MAX_BINS = 1000
MAX_ROUNDS = 16


def magnitudes(space: str, bins: int, height: int, width: int) -> Tensor:
    """(14, bins) float64: the magnitude of each op at each bin (0 for ops without one), computed as
    torchvision computes them (float32 linspace, then used as Python floats). space: "wide"
    (TrivialAugmentWide) or "randaugment"."""
    lin = torch.linspace
    wide = space == "wide"
    table = {
        "ShearX": lin(0.0, 0.99 if wide else 0.3, bins),
        "ShearY": lin(0.0, 0.99 if wide else 0.3, bins),
        "TranslateX": lin(0.0, 32.0 if wide else 150.0 / 331.0 * width, bins),
        "TranslateY": lin(0.0, 32.0 if wide else 150.0 / 331.0 * height, bins),
        "Rotate": lin(0.0, 135.0 if wide else 30.0, bins),
        "Brightness": lin(0.0, 0.99 if wide else 0.9, bins),
        "Color": lin(0.0, 0.99 if wide else 0.9, bins),
        "Contrast": lin(0.0, 0.99 if wide else 0.9, bins),
        "Sharpness": lin(0.0, 0.99 if wide else 0.9, bins),
        "Posterize": (8 - (torch.arange(bins) / ((bins - 1) / (6 if wide else 4)))).round().int(),
        "Solarize": lin(1.0, 0.0, bins),
    }
    out = torch.zeros(len(NAMES), bins, dtype=torch.float64)
    for i, name in enumerate(NAMES):
        if name in table:
            out[i] = table[name].double()
    return out


# ---------------------------------------------------------------------------------------------------- geometry


def _inverse_affine(angle: Tensor, tx: Tensor, ty: Tensor, shear_x: Tensor, shear_y: Tensor,
                    cx: float, cy: float) -> Tensor:
    """(k, 6) float64 inverse affine matrices, torchvision's `_get_inverse_affine_matrix` (scale 1) with
    the same operations in the same order, per sample. Angles in degrees; centre relative to the image
    centre, in pixels."""
    rad = math.pi / 180.0
    rot, sx, sy = angle * rad, shear_x * rad, shear_y * rad
    cos_sy, tan_sx = torch.cos(sy), torch.tan(sx)
    rot_minus_sy = rot - sy
    cx_plus_tx, cy_plus_ty = cx + tx, cy + ty
    a = torch.cos(rot_minus_sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot_minus_sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = (cx - m0 * cx_plus_tx) - m1 * cy_plus_ty
    m5 = (cy - m3 * cx_plus_tx) - m4 * cy_plus_ty
    return torch.stack([m0, m1, m2, m3, m4, m5], 1)


def _affine_nearest(x: Tensor, matrix: Tensor) -> Tensor:
    """x (k, C, H, W) float32 resampled by nearest neighbour through per-sample inverse affine matrices
    (k, 6), zeros outside: torchvision's `_affine_grid` + `grid_sample`, batched."""
    k, _, h, w = x.shape
    theta = matrix.to(torch.float32).view(k, 2, 3)
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=x.device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=x.device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=x.device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2).div_(torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32, device=x.device))
    grid = base.view(1, h * w, 3).expand(k, h * w, 3).bmm(scaled).view(k, h, w, 2)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _shear(x: Tensor, m: Tensor, axis: int) -> Tensor:
    """torchvision: affine(shear=[degrees(atan(m)), 0] (or [0, ...]), centre = the top-left corner)."""
    _, _, h, w = x.shape
    deg = torch.atan(m) * (180.0 / math.pi)
    zero = torch.zeros_like(m)
    sx, sy = (deg, zero) if axis == 0 else (zero, deg)
    return _affine_nearest(x, _inverse_affine(zero, zero, zero, sx, sy, -w * 0.5, -h * 0.5))


def _translate(x: Tensor, m: Tensor, axis: int) -> Tensor:
    """torchvision: affine(translate=[int(m), 0] (or [0, int(m)])): a whole-pixel shift, zeros in."""
    shift, zero = torch.trunc(m), torch.zeros_like(m)
    tx, ty = (shift, zero) if axis == 0 else (zero, shift)
    return _affine_nearest(x, _inverse_affine(zero, tx, ty, zero, zero, 0.0, 0.0))


def _rotate(x: Tensor, m: Tensor) -> Tensor:
    """torchvision's rotate(angle=m) about the centre, with its exact paths for multiples of 90 degrees."""
    _, _, h, w = x.shape
    angle = torch.remainder(m, 360.0)
    zero = torch.zeros_like(m)
    out = _affine_nearest(x, _inverse_affine(-angle, zero, zero, zero, zero, 0.0, 0.0))
    turns = {0.0: 0, 180.0: 2} if h != w else {0.0: 0, 90.0: 1, 180.0: 2, 270.0: 3}
    for a, k in turns.items():
        exact = angle == a
        if bool(exact.any()):
            out[exact] = torch.rot90(x[exact], k=k, dims=(-2, -1))
    return out


# ---------------------------------------------------------------------------------------------------- pixel values

_EXPOSURE, _SATURATION, _CONTRAST = Exposure(gamma=0.0), Saturation(), Contrast()


def _sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision's adjust_sharpness: blend with a 3x3 smoothing (1s around a 5, / 13) inside a 1-pixel
    border that keeps the original values."""
    k, c, h, w = x.shape
    if h <= 2 or w <= 2:
        return x.clone()
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=x.dtype, device=x.device).expand(c, 1, 3, 3)
    out = x.clone()
    blurred = F.conv2d(out, kernel, groups=c)
    view = out[..., 1:-1, 1:-1]
    view.add_(blurred.sub_(view).mul_((1.0 - factor).to(x.dtype).view(-1, 1, 1, 1)))
    return out.clamp_(0, 1)


def _posterize(x: Tensor, bits: Tensor) -> Tensor:
    levels = torch.pow(2.0, bits).to(x.dtype).view(-1, 1, 1, 1)
    return x.mul(levels).floor_().clamp_(min=0).minimum(levels - 1).div_(levels)


def _solarize(x: Tensor, threshold: Tensor) -> Tensor:
    return torch.where(x >= threshold.to(x.dtype).view(-1, 1, 1, 1), 1.0 - x, x)


def _autocontrast(x: Tensor) -> Tensor:
    """Stretch each channel of each sample to [0, 1] (channels with one value are left as they are)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    scale = (hi - lo).masked_fill_(flat, 1.0)
    return (x - lo.masked_fill(flat, 0.0)).div_(scale).clamp_(0, 1)


def _equalize(x: Tensor) -> Tensor:
    """Histogram equalisation per channel of each sample on 256 levels, PIL's lookup table (as
    torchvision, which quantises float input to uint8 as x * (256 - 1e-3) and back as / 255)."""
    k, c, h, w = x.shape
    q = x.mul(256 - 1e-3).to(torch.uint8).view(k * c, h * w).long()
    hist = torch.zeros(k * c, 256, dtype=torch.int64, device=x.device).scatter_add_(1, q, torch.ones_like(q))
    cum = hist.cumsum(1)
    top = hist.gather(1, cum.argmax(1, keepdim=True))  # the count of the brightest level present
    step = torch.div(h * w - top, 255, rounding_mode="floor")  # (k*c, 1)
    lut = torch.div(cum[:, :-1] + step // 2, step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut], 1)
    out = torch.where(step != 0, lut.gather(1, q), q)
    return out.view(k, c, h, w).to(x.dtype).mul_(1.0 / 255)


# ---------------------------------------------------------------------------------------------------- dispatch

_FUNCS = {
    "ShearX": lambda x, m: _shear(x, m, 0),
    "ShearY": lambda x, m: _shear(x, m, 1),
    "TranslateX": lambda x, m: _translate(x, m, 0),
    "TranslateY": lambda x, m: _translate(x, m, 1),
    "Rotate": _rotate,
    "Brightness": lambda x, m: _EXPOSURE.apply(x, {"brightness": 1.0 + m}),
    "Color": lambda x, m: _SATURATION.apply(x, {"saturation": 1.0 + m}),
    "Contrast": lambda x, m: _CONTRAST.apply(x, {"contrast": 1.0 + m}),
    "Sharpness": lambda x, m: _sharpness(x, 1.0 + m),
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": lambda x, m: _autocontrast(x),
    "Equalize": lambda x, m: _equalize(x),
}


def apply_ops(x: Tensor, op: Tensor, magnitude: Tensor) -> Tensor:
    """Sample i gets op NAMES[op[i]] at magnitude[i] (float64, signed; Posterize: bits). x (N, C, H, W)
    float in [0, 1]; computed in float32, returned in x's dtype; x is not modified."""
    xf = x.float()
    out = xf.clone()
    for i, name in enumerate(NAMES):
        if name == "Identity":
            continue
        idx = (op == i).nonzero().squeeze(1)
        if idx.numel():
            out[idx] = _FUNCS[name](xf[idx], magnitude[idx])
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _check_bins(name: str, bins: int) -> None:
    if not 2 <= bins <= MAX_BINS:
        raise CnnlabError(f"{name}: bins={bins} must be a whole number from 2 to {MAX_BINS} (torchvision: 31)")


def _check_channels(name: str, size: Size) -> Size:
    if size[0] not in (1, 3):
        raise CnnlabError(f"{name}: needs grayscale (1 channel) or RGB (3), got {size[0]} channels")
    return tuple(size)  # type: ignore[return-value]


def _draw(space: str, bins: int, shape: Shape, u_op: Tensor, u_sign: Tensor, bin_: Tensor) -> tuple[Tensor, Tensor]:
    """(op, signed magnitude) per sample from uniforms and magnitude bins."""
    table = magnitudes(space, bins, shape[2], shape[3]).to(u_op.device)
    op = _randint(u_op, len(NAMES) - 1)
    m = table[op, bin_]
    signed = torch.tensor([name in SIGNED for name in NAMES], device=op.device)[op]
    return op, torch.where(signed & (u_sign < 0.5), -m, m)


@dataclass(frozen=True)
class TrivialAugment(Op):
    """TrivialAugment Wide: one op of 14 and a magnitude bin drawn per sample (torchvision's ops).

    Each sample draws one of torchvision's TrivialAugmentWide ops (identity, shear x/y, translate x/y,
    rotate, brightness, color, contrast, sharpness, posterize, solarize, autocontrast, equalize), a
    magnitude bin uniform in 0..bins-1 and a sign; geometric ops use nearest neighbours and fill with 0.
    Samples skipped by p < 1 are left unchanged."""

    name: ClassVar[str] = "trivial"
    bins: int = 31  # number of magnitude levels (torchvision's num_magnitude_bins)
    p: float = 1.0

    def __post_init__(self) -> None:
        _check_bins(self.name, self.bins)
        _check_p(self.name, self.p)

    def output_size(self, size: Size) -> Size:
        return _check_channels(self.name, size)

    def sample(self, shape: Shape, generator: torch.Generator | None = None, device: Device = "cpu") -> Params:
        u = _rand(4, shape[0], generator, torch.device(device))
        op, m = _draw("wide", self.bins, shape, u[0], u[2], _randint(u[1], self.bins - 1))
        skip = u[3] >= self.p
        return {"op": op.masked_fill(skip, 0), "magnitude": m.masked_fill(skip, 0.0)}

    def apply(self, x: Tensor, params: Params, out: Tensor | None = None) -> Tensor:
        y = apply_ops(x, params["op"], params["magnitude"])
        return y if out is None else out.copy_(y)


@dataclass(frozen=True)
class RandAugment(Op):
    """RandAugment: n ops in turn, each drawn per sample among 14, all at magnitude bin m of 0..bins-1.

    torchvision's RandAugment ops and magnitudes (m=9 of 31 bins by default), each op drawn uniformly
    and independently per sample and per round, with a random sign; geometric ops use nearest
    neighbours and fill with 0. Samples skipped by p < 1 are left unchanged."""

    name: ClassVar[str] = "randaugment"
    n: int = 2  # ops applied one after the other
    m: int = 9  # magnitude bin, 0..bins-1
    bins: int = 31
    p: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.n <= MAX_ROUNDS:
            raise CnnlabError(f"randaugment: n={self.n} ops must be from 0 to {MAX_ROUNDS} (e.g. randaugment:n=2:m=9)")
        _check_bins(self.name, self.bins)
        if not 0 <= self.m < self.bins:
            raise CnnlabError(f"randaugment: m={self.m} must be a magnitude bin from 0 to bins-1 = {self.bins - 1} "
                              f"(e.g. randaugment:n=2:m=9)")
        _check_p(self.name, self.p)

    def output_size(self, size: Size) -> Size:
        return _check_channels(self.name, size)

    def sample(self, shape: Shape, generator: torch.Generator | None = None, device: Device = "cpu") -> Params:
        u = _rand(2 * self.n + 1, shape[0], generator, torch.device(device))
        skip = u[-1] >= self.p
        params = {}
        for r in range(self.n):
            op, m = _draw("randaugment", self.bins, shape, u[2 * r], u[2 * r + 1], torch.full_like(skip, self.m, dtype=torch.long))
            params[f"op{r}"], params[f"magnitude{r}"] = op.masked_fill(skip, 0), m.masked_fill(skip, 0.0)
        return params

    def apply(self, x: Tensor, params: Params, out: Tensor | None = None) -> Tensor:
        y = x
        for r in range(self.n):
            y = apply_ops(y, params[f"op{r}"], params[f"magnitude{r}"])
        if y is x:
            y = x.clone()
        return y if out is None else out.copy_(y)
