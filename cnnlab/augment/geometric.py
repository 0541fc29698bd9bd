"""Geometric ops: they move pixels. Flip, crop, translate and nearest scaling are index maps (exact,
composable into one gather); bilinear scaling and the resized crop are separable bilinear resamplers
(row and column selections and a blend, identical to grid_sample's bilinear)."""

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
    _check_choice,
    _check_magnitude,
    _check_p,
    _check_range,
    _format_value,
    _lerp,
    _rand,
    _randint,
)
from cnnlab.augment._gather import IndexMap, Taps, arange_rows, fill_index, linear_taps
from cnnlab.errors import CnnlabError

# ---------------------------------------------------------------------------------------------------- flips


@dataclass(frozen=True)
class Flip(Op):
    """Horizontal reflection (mirror left-right), with probability p per sample."""

    name: ClassVar[str] = "flip"
    vertical: ClassVar[bool] = False
    p: float = 0.5

    def __post_init__(self) -> None:
        _check_p(self.name, self.p)

    def sample(self, shape: Shape, generator: torch.Generator | None = None, device: Device = "cpu") -> Params:
        return {"flip": _rand(1, shape[0], generator, torch.device(device))[0] < self.p}

    def index_map(self, params: Params, shape: Shape) -> IndexMap:
        n, _, h, w = shape
        flip = params["flip"][:, None]  # (N, 1)
        rows, cols = arange_rows(n, h, flip.device), arange_rows(n, w, flip.device)
        if self.vertical:
            return torch.where(flip, h - 1 - rows, rows), cols
        return rows, torch.where(flip, w - 1 - cols, cols)


@dataclass(frozen=True)
class VFlip(Flip):
    """Vertical reflection (mirror top-bottom), with probability p per sample."""

    name: ClassVar[str] = "vflip"
    vertical: ClassVar[bool] = True


# ---------------------------------------------------------------------------------------------------- crops


@dataclass(frozen=True)
class Crop(Op):
    """Random crop, pad-and-crop or crop-to-size, at a random position per sample.

    Pads each side by `pad` pixels (mode "reflect": mirrored without repeating the edge, as
    torchvision's RandomCrop(padding_mode="reflect"); or "zero"), then takes a window of `size` x `size`
    pixels (default: the input's H x W) at a uniformly random position. `crop:4` is the CIFAR /
    Fashion-MNIST pad-and-crop (shifts of up to +-4 px); `crop:0:size=24` takes random 24x24 windows.
    Samples skipped by p < 1 get the centre window."""

    name: ClassVar[str] = "crop"
    main: ClassVar[str | None] = "pad"
    pad: int = 4  # pixels added on each side
    size: int | None = None  # output height = width in pixels; None: the input's (H, W)
    mode: str = "reflect"  # "reflect" or "zero"
    p: float = 1.0

    def __post_init__(self) -> None:
        if self.pad < 0:
            raise CnnlabError(f"crop: pad={self.pad} must be >= 0 pixels (e.g. crop:4)")
        if self.size is not None and self.size < 1:
            raise CnnlabError(f"crop: size={self.size} must be >= 1 pixel or none (e.g. crop:0:size=24)")
        _check_choice(self.name, "mode", self.mode, ("reflect", "zero"))
        _check_p(self.name, self.p)

    def _window(self, h: int, w: int) -> tuple[int, int]:
        return (h, w) if self.size is None else (self.size, self.size)

    def output_size(self, size: Size) -> Size:
        c, h, w = size
        wh, ww = self._window(h, w)
        if wh > h + 2 * self.pad or ww > w + 2 * self.pad:
            raise CnnlabError(f"{self}: a {wh}x{ww} window does not fit in a {h}x{w} image padded by "
                              f"{self.pad}; use size <= {min(h, w) + 2 * self.pad}")
        if self.mode == "reflect" and self.pad >= min(h, w):
            raise CnnlabError(f"{self}: reflect padding needs pad < image size {min(h, w)}; "
                              f"use a smaller pad or mode=zero")
        return (c, wh, ww)

    def sample(self, shape: Shape, generator: torch.Generator | None = None, device: Device = "cpu") -> Params:
        n, _, h, w = shape
        wh, ww = self._window(h, w)
        u = _rand(3, n, generator, torch.device(device))
        span_h, span_w = h + 2 * self.pad - wh, w + 2 * self.pad - ww  # offsets run over [0, span]
        skip = u[2] >= self.p
        top = torch.where(skip, span_h // 2, _randint(u[0], span_h))
        left = torch.where(skip, span_w // 2, _randint(u[1], span_w))
        return {"top": top, "left": left}  # window corner in the padded image, pixels

    def index_map(self, params: Params, shape: Shape) -> IndexMap:
        n, _, h, w = shape
        wh, ww = self._window(h, w)
        device = params["top"].device
        rows = params["top"][:, None] - self.pad + arange_rows(n, wh, device)  # (N, wh) in image coordinates
        cols = params["left"][:, None] - self.pad + arange_rows(n, ww, device)  # (N, ww)
        return fill_index(rows, h, self.mode), fill_index(cols, w, self.mode)


@dataclass(frozen=True)
class Translate(Op):
    """Random translation by whole pixels, filling with 0.

    Shifts dy, dx drawn per sample, uniform integers in [-floor(fraction*H), floor(fraction*H)]
    (resp. W), as torchvision's RandomAffine(translate=(fraction, fraction)) but per sample."""

    name: ClassVar[str] = "translate"
    main: ClassVar[str | None] = "fraction"
    fraction: float = 0.1  # largest shift as a fraction of the image height/width
    p: float = 1.0

    def __post_init__(self) -> None:
        _check_magnitude(self.name, "fraction", self.fraction, 1.0)
        _check_p(self.name, self.p)

    def sample(self, shape: Shape, generator: torch.Generator | None = None, device: Device = "cpu") -> Params:
        n, _, h, w = shape
        mh, mw = int(self.fraction * h), int(self.fraction * w)
        u = _rand(3, n, generator, torch.device(device))
        keep = u[2] < self.p
        dy = (_randint(u[0], 2 * mh) - mh) * keep
        dx = (_randint(u[1], 2 * mw) - mw) * keep
        return {"dy": dy, "dx": dx}  # pixels, positive = down / right

    def index_map(self, params: Params, shape: Shape) -> IndexMap:
        n, _, h, w = shape
        device = params["dy"].device
        rows = arange_rows(n, h, device) - params["dy"][:, None]
        cols = arange_rows(n, w, device) - params["dx"][:, None]
        return fill_index(rows, h, "zero"), fill_index(cols, w, "zero")


# ---------------------------------------------------------------------------------------------------- scaling

_PAD_MODES = {"zero": "zero", "reflect": "symmetric", "border": "border"}  # scale's mode -> fill_index's


@dataclass(frozen=True)
class Scale(Op):
    """Random scaling (zoom in and out) about the image centre.

    Zoom factor s uniform in `factor` per sample: s > 1 zooms in (objects look bigger, the border is
    cut off), s < 1 zooms out (the border is filled by `mode`: "zero"; "reflect", mirrored about the
    image edge; or "border", the edge pixel repeated). Output pixel (i, j) reads the input at
    c + (i - c) / s with c the image centre, interpolated by `interp`: "bilinear" (the values of
    grid_sample's bilinear) or "nearest" (one exact gather, faster; torchvision RandomAffine's default).
    Output size = input size."""

    name: ClassVar[str] = "scale"
    main: ClassVar[str | None] = "factor"
    factor: tuple[float, float] = (0.8, 1.2)  # zoom factor range (1 = unchanged)
    mode: str = "zero"
    interp: str = "bilinear"
    p: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", tuple(float(v) for v in self.factor))
        _check_range(self.name, "factor", self.factor, 0.0)
        if self.factor[0] <= 0:
            raise CnnlabError(f"scale: factor={_format_value(self.factor)} must be > 0 (e.g. scale:0.8-1.2)")
        _check_choice(self.name, "mode", self.mode, tuple(_PAD_MODES))
        _check_choice(self.name, "interp", self.interp, ("bilinear", "nearest"))
        _check_p(self.name, self.p)

    def sample(self, shape: Shape, generator: torch.Generator | None = None, device: Device = "cpu") -> Params:
        u = _rand(2, shape[0], generator, torch.device(device))
        return {"scale": torch.where(u[1] < self.p, _lerp(u[0], *self.factor), 1.0)}

    def _source(self, params: Params, n: int, size: int) -> Tensor:
        """(N, size) input coordinate read by each output pixel along one axis, in pixels."""
        inv = 1.0 / params["scale"][:, None]  # (N, 1): a zoom by s reads a window 1/s as wide
        centre = (size - 1) / 2
        return (arange_rows(n, size, inv.device) - centre) * inv + centre

    def index_map(self, params: Params, shape: Shape) -> IndexMap | None:
        if self.interp != "nearest":
            return None
        n, _, h, w = shape
        mode = _PAD_MODES[self.mode]
        return tuple(  # type: ignore[return-value]
            fill_index(torch.floor(self._source(params, n, size) + 0.5).long(), size, mode) for size in (h, w)
        )

    def taps(self, params: Params, shape: Shape) -> tuple[Taps, Taps] | None:
        if self.interp != "bilinear":
            return None
        n, _, h, w = shape
        mode = _PAD_MODES[self.mode]
        return linear_taps(self._source(params, n, h), h, mode), linear_taps(self._source(params, n, w), w, mode)


@dataclass(frozen=True)
class ResizedCrop(Op):
    """Random resized crop (Szegedy et al. 2015): a box of random area and shape, resized.

    As torchvision's RandomResizedCrop: a box covering a fraction `scale` of the image area with aspect
    ratio (width / height) log-uniform in `ratio`, at a uniform position, resized bilinearly to
    `size` x `size` (default: the input's H x W). The box is clipped to the image instead of
    torchvision's 10 retries, and there is no antialiasing. Samples skipped by p < 1: the whole image."""

    name: ClassVar[str] = "resized_crop"
    main: ClassVar[str | None] = "size"
    size: int | None = None  # output height = width in pixels
    scale: tuple[float, float] = (0.08, 1.0)  # fraction of the image area
    ratio: tuple[float, float] = (0.75, 4 / 3)  # box width / height
    p: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        if self.size is not None and self.size < 1:
            raise CnnlabError(f"resized_crop: size={self.size} must be >= 1 pixel (e.g. resized_crop:224)")
        _check_range(self.name, "scale", self.scale, 1e-6, 1.0)
        _check_range(self.name, "ratio", self.ratio, 1e-3)
        _check_p(self.name, self.p)

    def output_size(self, size: Size) -> Size:
        c, h, w = size
        return (c, h, w) if self.size is None else (c, self.size, self.size)

    def sample(self, shape: Shape, generator: torch.Generator | None = None, device: Device = "cpu") -> Params:
        n, _, h, w = shape
        u = _rand(5, n, generator, torch.device(device))
        area = _lerp(u[0], *self.scale) * (h * w)
        ratio = torch.exp(_lerp(u[1], math.log(self.ratio[0]), math.log(self.ratio[1])))
        skip = u[4] >= self.p
        bw = torch.where(skip, float(w), torch.sqrt(area * ratio).clamp(1.0, w))
        bh = torch.where(skip, float(h), torch.sqrt(area / ratio).clamp(1.0, h))
        left, top = u[2] * (w - bw), u[3] * (h - bh)
        return {"top": top, "left": left, "height": bh, "width": bw}  # box in pixels (float)

    def taps(self, params: Params, shape: Shape) -> tuple[Taps, Taps]:
        n, c, h, w = shape
        _, oh, ow = self.output_size((c, h, w))

        def axis(start: Tensor, length: Tensor, out: int, size: int) -> Taps:
            # Output pixel i samples the box at start + (i + 0.5) * length / out - 0.5 (pixel centres).
            step = (length / out)[:, None]
            src = start[:, None] + (arange_rows(n, out, start.device) + 0.5) * step - 0.5
            return linear_taps(src, size, "border")

        return (axis(params["top"], params["height"], oh, h), axis(params["left"], params["width"], ow, w))
