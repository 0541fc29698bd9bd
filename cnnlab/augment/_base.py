"""The base of every augmentation op: random draws, the text form, validation, the `Op` class.

Every op takes a float batch `x` of shape (N, C, H, W) with values in [0, 1] (before normalisation),
on any device, in float32 or bfloat16, and returns a new batch of the same dtype and device with values
in [0, 1]. Random parameters are drawn PER SAMPLE (torchvision's v2 transforms draw one set per call,
i.e. per batch when given a batch), as a few tensor draws per batch with no per-sample Python loop
(airbench style).

Each op is split in two so that its randomness can be inspected and tested:
    params = op.sample(x.shape, generator, x.device)  # dict of (N,) tensors: what was drawn per sample
    y = op.apply(x, params)                           # deterministic given params
and `op(x, generator)` does both. Samples that the probability `p` skips get identity parameters.
Ops that only move pixels also describe themselves as an index map (flips, crops, translations, nearest
zoom) or as bilinear taps (zoom, resized crop), which a Pipeline composes (see `_gather.py`).

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

from cnnlab.augment._gather import IndexMap, Taps, remap, resample
from cnnlab.errors import CnnlabError, did_you_mean

Size = tuple[int, int, int]  # (C, H, W)
Params = dict[str, Tensor]  # per-sample parameters, each (N,)
Shape = tuple[int, ...]  # (N, C, H, W), e.g. x.shape
Device = torch.device | str


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

    def apply(self, x: Tensor, params: Params, out: Tensor | None = None) -> Tensor:
        """Apply the op with the given per-sample parameters (deterministic); x is not modified. With
        `out` (the result's shape and dtype, not overlapping x) the result is written there and returned:
        a pipeline's last op then writes straight into the batch it returns."""
        maps = self.index_map(params, tuple(x.shape))
        if maps is not None:
            return remap(x, *maps, out=out)
        taps = self.taps(params, tuple(x.shape))
        if taps is not None:
            return resample(x, *taps, out=out)
        raise NotImplementedError(f"{type(self).__name__} defines neither apply, index_map nor taps")

    def index_map(self, params: Params, shape: Shape) -> IndexMap | None:
        """For ops that only move pixels by whole indices: (rows, cols) such that
        `apply(x) == remap(x, rows, cols)`; None for the others."""
        return None

    def taps(self, params: Params, shape: Shape) -> tuple[Taps, Taps] | None:
        """For separable bilinear resamplers: (row taps, column taps) such that
        `apply(x) == resample(x, *taps)`; None for the others."""
        return None

    def gain(self, params: Params) -> Tensor | None:
        """For ops that only multiply each sample by a factor and clamp to [0, 1]: the (N,) factors, so
        that a pipeline can fold them into the gather or resample before; None for the others."""
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
