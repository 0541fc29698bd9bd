"""Pixel-value ops: exposure, contrast, saturation change values in place of the pixels; erasing
overwrites a rectangle. Per-sample factors broadcast as (N, 1, 1, 1) over the batch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from cnnlab.augment._base import (
    Device,
    Op,
    Params,
    Shape,
    Size,
    _check_magnitude,
    _check_p,
    _check_range,
    _lerp,
    _per_sample,
    _rand,
    _randint,
)
from cnnlab.errors import CnnlabError

# ITU-R BT.601 luma weights, as in torchvision's rgb_to_grayscale and PIL's convert("L").
LUMA_601 = (0.299, 0.587, 0.114)


def luma(x: Tensor) -> Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) ITU-R 601 grey."""
    n, _, h, w = x.shape
    if x.is_contiguous() and x.dtype == torch.float32:  # one matrix product: twice as fast as 5 passes
        weights = torch.tensor(LUMA_601, dtype=x.dtype, device=x.device)
        return (weights @ x.view(n, 3, h * w)).view(n, 1, h, w)
    r, g, b = x.unbind(1)
    return (LUMA_601[0] * r + LUMA_601[1] * g + LUMA_601[2] * b).unsqueeze(1)


def _factor(amount: float, shape: Shape, p: float, generator: torch.Generator | None,
            device: Device) -> Tensor:
    """(N,) factors uniform in [max(0, 1-amount), 1+amount], 1 where the sample is skipped (prob. 1-p)."""
    u = _rand(2, shape[0], generator, torch.device(device))
    return torch.where(u[1] < p, _lerp(u[0], max(0.0, 1 - amount), 1 + amount), 1.0)


@dataclass(frozen=True)
class Exposure(Op):
    """Exposure: brightness factor and gamma, per sample.

    y = clamp(b * x**g, 0, 1), brightness factor b uniform in [max(0, 1-brightness), 1+brightness]
    and gamma g uniform in [1-gamma, 1+gamma] (g < 1 brightens the shadows). `exposure:0.3` is
    torchvision's ColorJitter(brightness=0.3), per sample."""

    name: ClassVar[str] = "exposure"
    main: ClassVar[str | None] = "brightness"
    brightness: float = 0.3
    gamma: float = 0.0
    p: float = 1.0

    def __post_init__(self) -> None:
        _check_magnitude(self.name, "brightness", self.brightness)
        _check_magnitude(self.name, "gamma", self.gamma, 1.0)
        _check_p(self.name, self.p)

    def sample(self, shape: Shape, generator: torch.Generator | None = None, device: Device = "cpu") -> Params:
        u = _rand(3, shape[0], generator, torch.device(device))
        keep = u[2] < self.p
        b = torch.where(keep, _lerp(u[0], max(0.0, 1 - self.brightness), 1 + self.brightness), 1.0)
        g = torch.where(keep, _lerp(u[1], 1 - self.gamma, 1 + self.gamma), 1.0)
        return {"brightness": b, "gamma": g}

    def gain(self, params: Params) -> Tensor | None:
        return params["brightness"] if self.gamma == 0 else None

    def apply(self, x: Tensor, params: Params, out: Tensor | None = None) -> Tensor:
        b = _per_sample(params["brightness"], x)
        if self.gamma == 0:
            return torch.mul(x, b, out=out).clamp_(0.0, 1.0)
        return torch.pow(x, _per_sample(params["gamma"], x), out=out).mul_(b).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class Contrast(Op):
    """Contrast: stretch or flatten grey levels about the sample's mean, per sample.

    y = clamp(m + c * (x - m), 0, 1) with m the sample's mean grey level (ITU-R 601 luma for RGB) and
    c uniform in [max(0, 1-amount), 1+amount] (torchvision's ColorJitter(contrast=amount))."""

    name: ClassVar[str] = "contrast"
    main: ClassVar[str | None] = "amount"
    amount: float = 0.3
    p: float = 1.0

    def __post_init__(self) -> None:
        _check_magnitude(self.name, "amount", self.amount)
        _check_p(self.name, self.p)

    def sample(self, shape: Shape, generator: torch.Generator | None = None, device: Device = "cpu") -> Params:
        return {"contrast": _factor(self.amount, shape, self.p, generator, device)}

    def apply(self, x: Tensor, params: Params, out: Tensor | None = None) -> Tensor:
        grey = luma(x) if x.shape[1] == 3 else x
        mean = grey.float().mean(dim=(1, 2, 3), keepdim=True).to(x.dtype)  # (N, 1, 1, 1)
        return torch.lerp(mean.expand_as(x), x, _per_sample(params["contrast"], x), out=out).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class Saturation(Op):
    """Saturation: blend with the grey image, per sample (RGB; grayscale unchanged).

    y = clamp(grey + s * (x - grey), 0, 1) with grey the ITU-R 601 luma and s uniform in
    [max(0, 1-amount), 1+amount]: s = 0 gives grey, s > 1 richer colours. Grayscale (C = 1) batches pass
    through unchanged, as with torchvision's ColorJitter(saturation=amount)."""

    name: ClassVar[str] = "saturation"
    main: ClassVar[str | None] = "amount"
    amount: float = 0.3
    p: float = 1.0

    def __post_init__(self) -> None:
        _check_magnitude(self.name, "amount", self.amount)
        _check_p(self.name, self.p)

    def output_size(self, size: Size) -> Size:
        if size[0] not in (1, 3):
            raise CnnlabError(f"saturation: needs RGB (3 channels) or grayscale (1, unchanged), got {size[0]} channels")
        return tuple(size)  # type: ignore[return-value]

    def sample(self, shape: Shape, generator: torch.Generator | None = None, device: Device = "cpu") -> Params:
        return {"saturation": _factor(self.amount, shape, self.p, generator, device)}

    def apply(self, x: Tensor, params: Params, out: Tensor | None = None) -> Tensor:
        if x.shape[1] == 1:
            return x.clone() if out is None else out.copy_(x)
        return torch.lerp(luma(x).expand_as(x), x, _per_sample(params["saturation"], x), out=out).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class Erase(Op):
    """Random erasing / cutout: a random rectangle set to a constant value.

    Random erasing (Zhong et al. 2017; cutout, DeVries & Taylor 2017, is the square case): with
    probability p, a rectangle covering a fraction `area` of the image, aspect ratio (height / width)
    log-uniform in `ratio`, placed uniformly inside the image, is set to `value`. Defaults are
    torchvision's RandomErasing (p=0.5, area 0.02-0.33, ratio 0.3-3.3, value 0); sides are rounded to
    whole pixels and clipped to the image instead of torchvision's 10 retries."""

    name: ClassVar[str] = "erase"
    main: ClassVar[str | None] = "area"
    area: tuple[float, float] = (0.02, 0.33)  # fraction of H*W
    ratio: tuple[float, float] = (0.3, 3.3)  # rectangle height / width
    value: float = 0.0  # fill, in [0, 1]
    p: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "area", tuple(float(v) for v in self.area))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        _check_range(self.name, "area", self.area, 0.0, 1.0)
        _check_range(self.name, "ratio", self.ratio, 1e-3)
        if not 0.0 <= self.value <= 1.0:
            raise CnnlabError(f"erase: value={self.value} must be in [0, 1] (e.g. erase:value=0.5)")
        _check_p(self.name, self.p)

    def sample(self, shape: Shape, generator: torch.Generator | None = None, device: Device = "cpu") -> Params:
        n, _, h, w = shape
        u = _rand(5, n, generator, torch.device(device))
        area = _lerp(u[0], *self.area) * (h * w)
        ratio = torch.exp(_lerp(u[1], math.log(self.ratio[0]), math.log(self.ratio[1])))
        keep = u[4] < self.p
        eh = torch.sqrt(area * ratio).round().long().clamp(0, h) * keep
        ew = torch.sqrt(area / ratio).round().long().clamp(0, w) * keep
        top = _randint(u[2], h - eh)  # uniform over the positions where the rectangle fits
        left = _randint(u[3], w - ew)
        return {"top": top, "left": left, "height": eh, "width": ew}  # pixels

    def apply(self, x: Tensor, params: Params, out: Tensor | None = None) -> Tensor:
        _, _, h, w = x.shape
        i = torch.arange(h, device=x.device).view(1, h, 1)
        j = torch.arange(w, device=x.device).view(1, 1, w)
        top, left = params["top"].view(-1, 1, 1), params["left"].view(-1, 1, 1)
        inside = ((i >= top) & (i < top + params["height"].view(-1, 1, 1))
                  & (j >= left) & (j < left + params["width"].view(-1, 1, 1)))  # (N, H, W)
        if out is None:
            return x.masked_fill(inside.unsqueeze(1), self.value)
        return out.copy_(x).masked_fill_(inside.unsqueeze(1), self.value)
