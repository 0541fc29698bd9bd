"""The base of every augmentation op: random draws, index maps, the text form and validation.

Every op takes a float batch `x` of shape (N, C, H, W) with values in [0, 1] (before normalisation),
on any device, in float32 or bfloat16, and returns a new batch of the same dtype and device with values
in [0, 1]. Random parameters are drawn PER SAMPLE (torchvision's v2 transforms draw one set per call,
i.e. per batch when given a batch), as a few tensor draws per batch with no per-sample Python loop
(airbench style).

Each op is split in two so that its randomness can be inspected and tested:
    params = op.sample(x.shape, generator, x.device)  # dict of (N,) tensors: what was drawn per sample
    y = op.apply(x, params)                           # deterministic given params
and `op(x, generator)` does both. Samples that the probability `p` skips get identity parameters.
Flips, crops, translations and nearest-neighbour scaling are also "index maps" (output pixel -> input
pixel), which a Pipeline composes so that a run of them costs one gather.

Reproducibility: pass a `torch.Generator`; draws are made on the generator's device and moved to the
batch's device, so a CPU generator gives the same parameters for a CPU or a CUDA batch (use a CUDA
generator to avoid the small host-to-device copies).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from cnnlab.errors import CnnlabError, did_you_mean

Size = tuple[int, int, int]  # (C, H, W)
Params = dict[str, Tensor]  # per-sample parameters, each (N,)
Shape = tuple[int, ...]  # (N, C, H, W), e.g. x.shape
Device = torch.device | str
IndexMap = tuple[Tensor, Tensor]  # rows (N, h) and cols (N, w): int64 source indices, -1 = fill with 0


# ----------------------------------------------------------------------------------------------------
# Random draws: one call per batch, on the generator's device so that a seed means the same thing
# whatever device the batch is on.


def _rand(rows: int, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """(rows, n) float32 uniform in [0, 1) on `device`."""
    if generator is None:
        return torch.rand(rows, n, device=device)
    return torch.rand(rows, n, generator=generator, device=generator.device).to(device)


def _lerp(u: Tensor, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * u


def _randint(u: Tensor, high: int | Tensor) -> Tensor:
    """Integers uniform in [0, high] (inclusive; `high` may be per sample) from uniforms u in [0, 1)."""
    i = (u * (high + 1)).long()
    return i.clamp_(max=high) if isinstance(high, int) else torch.minimum(i, high)


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    """(N,) -> (N, 1, 1, 1) in x's dtype, to broadcast a per-sample factor over (N, C, H, W)."""
    return v.to(x.dtype).view(-1, 1, 1, 1)


# ----------------------------------------------------------------------------------------------------
# Integer-index geometry. Flips, crops, translations and nearest scaling all say "output pixel (i, j) of
# sample n reads input pixel (rows[n, i], cols[n, j])", index -1 meaning "outside: fill with 0". The map
# is separable (rows and columns independent), composes by indexing, and one gather applies it.


def remap(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """out[n, c, i, j] = x[n, c, rows[n, i], cols[n, j]], or 0 where rows or cols is -1.

    x: (N, C, H, W); rows: (N, h); cols: (N, w) -> (N, C, h, w), x's dtype.
    """
    n, c, h_in, w_in = x.shape
    h, w = rows.shape[1], cols.shape[1]
    index = rows.clamp(min=0)[:, :, None] * w_in + cols.clamp(min=0)[:, None, :]  # (N, h, w)
    # The index is expanded over channels (stride 0), not copied: one int64 per output pixel, not C.
    out = x.reshape(n, c, h_in * w_in).gather(2, index.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)
    outside = (rows < 0)[:, :, None] | (cols < 0)[:, None, :]  # (N, h, w)
    return out.masked_fill_(outside.unsqueeze(1), 0) if _may_fill(rows, cols) else out


def _may_fill(rows: Tensor, cols: Tensor) -> bool:
    # On CUDA the check would synchronise; masking unconditionally is cheaper there.
    return rows.device.type != "cpu" or bool((rows < 0).any() or (cols < 0).any())


def compose_index(first: Tensor, then: Tensor) -> Tensor:
    """One axis of two index maps applied in turn: out -> (then) -> mid -> (first) -> in; (N, n)."""
    return torch.where(then >= 0, first.gather(1, then.clamp(min=0)), -1)


def compose_maps(first: IndexMap, then: IndexMap) -> IndexMap:
    """The map of applying `first` then `then`."""
    return compose_index(first[0], then[0]), compose_index(first[1], then[1])


def reflect_index(i: Tensor, size: int) -> Tensor:
    """Mirror indices in [-(size-1), 2*size-2] into [0, size) without repeating the edge pixel
    (the convention of numpy's and torch's "reflect" padding)."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def _fill(i: Tensor, size: int, mode: str) -> Tensor:
    """Indices outside [0, size): -1 ("zero"), clamped ("border"), or mirrored: "reflect" without
    repeating the edge pixel (torch.nn.functional.pad), "symmetric" about the pixel edge, repeating it
    (grid_sample's "reflection"). Mirroring is done once, then clamped, for shifts beyond the image."""
    if mode == "reflect":
        return reflect_index(i, size).clamp_(0, size - 1)
    if mode == "symmetric":
        i = torch.where(i < 0, -1 - i, i)
        return torch.where(i >= size, 2 * size - 1 - i, i).clamp_(0, size - 1)
    if mode == "border":
        return i.clamp(0, size - 1)
    return torch.where((i >= 0) & (i < size), i, -1)


# Bilinear resampling along axis-aligned maps (zoom, resized crop) is separable too: each output row
# reads two input rows (taps) with weights (1 - w, w), and the same for columns. Expressed as four
# index-map gathers, it is exactly grid_sample's bilinear, composes with pending index maps (a flip and
# a crop before a zoom cost nothing extra), and on CPU runs faster than grid_sample.

Taps = tuple[Tensor, Tensor, Tensor]  # index of the lower tap, of the upper tap (N, n), upper weight (N, n)


def linear_taps(src: Tensor, size: int, mode: str) -> Taps:
    """Bilinear taps for continuous source coordinates src (N, n) in pixels (pixel centres at 0..size-1)."""
    lo = torch.floor(src)
    weight = src - lo
    lo = lo.long()
    return _fill(lo, size, mode), _fill(lo + 1, size, mode), weight


def resample(x: Tensor, rows: Taps, cols: Taps, pending: IndexMap | None = None) -> Tensor:
    """out[n, c, i, j] = bilinear blend of x at the taps (after the index map `pending`, if any).

    x: (N, C, H, W) -> (N, C, h, w) with h, w the taps' lengths; blended in float32."""
    (r0, r1, wy), (c0, c1, wx) = rows, cols
    if pending is not None:
        r0, r1 = compose_index(pending[0], r0), compose_index(pending[0], r1)
        c0, c1 = compose_index(pending[1], c0), compose_index(pending[1], c1)
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    wx = wx[:, None, None, :].to(xf.dtype)  # (N, 1, 1, w)
    top = torch.lerp(remap(xf, r0, c0), remap(xf, r0, c1), wx)
    bottom = torch.lerp(remap(xf, r1, c0), remap(xf, r1, c1), wx)
    return torch.lerp(top, bottom, wy[:, None, :, None].to(xf.dtype)).clamp_(0.0, 1.0).to(x.dtype)


def _arange(n: int, length: int, device: torch.device) -> Tensor:
    return torch.arange(length, device=device).expand(n, length)


# ----------------------------------------------------------------------------------------------------
# Text form helpers (used by `Op.__str__` and the pipeline parser).


def format_number(v: float | int) -> str:
    """Shortest exact decimal, no exponent: 0.3 -> '0.3', 4.0 -> '4' (so text round-trips exactly)."""
    return np.format_float_positional(float(v), trim="-")


def _format_value(v: Any) -> str:
    if isinstance(v, tuple):
        return "-".join(format_number(e) for e in v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return format_number(v)
    return "none" if v is None else str(v)


def _parse_number(text: str, op: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CnnlabError(f"{op}: {key}={text!r} is not a number (e.g. {op}:{key}=0.5)") from None


def _parse_value(text: str, kind: str, op: str, key: str) -> Any:
    """Convert the text of one parameter by the field's annotation."""
    if kind == "float":
        return _parse_number(text, op, key)
    if kind in ("int", "int | None"):
        if kind == "int | None" and text.lower() == "none":
            return None
        v = _parse_number(text, op, key)
        if not v.is_integer():
            raise CnnlabError(f"{op}: {key}={text!r} must be a whole number of pixels (e.g. {op}:{key}=4)")
        return int(v)
    if kind == "tuple[float, float]":
        parts = text.split("-")
        if len(parts) == 1:  # one number: a fixed value, the range lo-lo
            v = _parse_number(parts[0], op, key)
            return (v, v)
        if len(parts) != 2:
            raise CnnlabError(f"{op}: {key}={text!r} is not a range LO-HI (e.g. {key}=0.8-1.2)")
        return (_parse_number(parts[0], op, key), _parse_number(parts[1], op, key))
    return text  # str: checked against the choices in __post_init__


# ----------------------------------------------------------------------------------------------------
# Validation helpers: fail when the op is built, before any work.


def _check_p(op: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise CnnlabError(f"{op}: probability p={p} must be in [0, 1] (e.g. {op}:p=0.5)")


def _check_range(op: str, key: str, r: tuple[float, float], lo: float, hi: float = math.inf) -> None:
    if len(r) != 2 or not (lo <= r[0] <= r[1] <= hi):
        upper = "" if hi == math.inf else f" and <= {format_number(hi)}"
        raise CnnlabError(
            f"{op}: {key}={_format_value(tuple(r))} must be LO-HI with {format_number(lo)} <= LO <= HI{upper}"
        )


def _check_choice(op: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CnnlabError(
            f"{op}: {key}={value!r} is not one of {', '.join(choices)}{did_you_mean(value, choices)}"
        )


def _check_magnitude(op: str, key: str, m: float, hi: float = math.inf) -> None:
    if not 0.0 <= m <= hi:
        raise CnnlabError(f"{op}: {key}={m} must be >= 0{'' if hi == math.inf else f' and < {hi}'} (e.g. {op}:0.3)")


# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """Base class: a batched random augmentation. Subclasses are frozen dataclasses whose fields are the
    parameters (the text form uses the same names); `name` is the op's word in a pipeline string and
    `main` the field that may be written without `key=` (`crop:4` is `crop:pad=4`)."""

    name: ClassVar[str] = ""
    main: ClassVar[str | None] = None

    def sample(self, shape: Shape, generator: torch.Generator | None = None, device: Device = "cpu") -> Params:
        """Draw the parameters of every sample of a batch of `shape` (N, C, H, W): (N,) tensors on device."""
        return {}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        """Apply the op with the given per-sample parameters (deterministic); x is not modified."""
        maps = self.index_map(params, tuple(x.shape))
        if maps is not None:
            return remap(x, *maps)
        taps = self.taps(params, tuple(x.shape))
        if taps is not None:
            return resample(x, *taps)
        raise NotImplementedError(f"{type(self).__name__} defines neither apply, index_map nor taps")

    def index_map(self, params: Params, shape: Shape) -> IndexMap | None:
        """For ops that only move pixels by whole indices: (rows, cols) such that
        `apply(x) == remap(x, rows, cols)`; None for the others."""
        return None

    def taps(self, params: Params, shape: Shape) -> tuple[Taps, Taps] | None:
        """For separable bilinear resamplers: (row taps, column taps) such that
        `apply(x) == resample(x, *taps)`; None for the others."""
        return None

    def output_size(self, size: Size) -> Size:
        """(C, H, W) of the output for an input of that size; raises CnnlabError if it does not fit."""
        return tuple(size)  # type: ignore[return-value]

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x: (N, C, H, W) float in [0, 1] -> augmented batch, same dtype and device."""
        check_batch(x)
        self.output_size(tuple(x.shape[1:]))  # type: ignore[arg-type]
        return self.apply(x, self.sample(x.shape, generator, x.device))

    def __str__(self) -> str:
        parts = [self.name]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == self.main:
                parts.append(_format_value(value))
            elif value != f.default:
                parts.append(f"{f.name}={_format_value(value)}")
        return ":".join(parts)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_args(cls, args: list[str]) -> Op:
        """Build from the ':'-separated parts after the name: `["4", "mode=zero"]` for `crop:4:mode=zero`."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for i, arg in enumerate(args):
            key, sep, text = arg.partition("=")
            if not sep:  # a bare value is the main parameter, and only the first part may be bare
                if cls.main is None or i > 0:
                    hint = f"{cls.name}:{cls.main}=..." if cls.main else f"{cls.name}:p=0.5"
                    raise CnnlabError(f"{cls.name}: value {arg!r} needs a name KEY=VALUE (e.g. {hint}); "
                                      f"{cls.name} takes {', '.join(fields)}")
                key, text = cls.main, arg
            key = key.strip()
            if key not in fields:
                raise CnnlabError(f"{cls.name}: unknown parameter {key!r}{did_you_mean(key, fields)}; "
                                  f"{cls.name} takes {', '.join(fields)}")
            if key in kwargs:
                raise CnnlabError(f"{cls.name}: parameter {key!r} given twice in {':'.join([cls.name, *args])!r}")
            kwargs[key] = _parse_value(text.strip(), str(fields[key].type), cls.name, key)
        return cls(**kwargs)


def check_batch(x: Tensor, allow_uint8: bool = False) -> None:
    """Raise CnnlabError unless x is a floating (N, C, H, W) batch (or uint8 where allowed)."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise CnnlabError(f"augmentation expects a batch (N, C, H, W), got {shape}; use x[None] for one image")
    if not (x.is_floating_point() or (allow_uint8 and x.dtype == torch.uint8)):
        raise CnnlabError(
            f"augmentation expects float images in [0, 1], got {x.dtype}; convert uint8 with x.float() / 255"
        )
