"""Moving pixels by index: the machinery under flips, crops, translations and zooms.

An index map says "output pixel (i, j) of sample n reads input pixel (rows[n, i], cols[n, j])", index -1
meaning "outside: 0". It is separable (rows and columns independent), two maps compose by indexing,
and applying one costs a row selection plus a column gather, whatever ops it came from.
Bilinear resampling along axis-aligned maps (zoom, resized crop) is separable too: each output row
blends two input rows (taps) with weights (1 - w, w), then the same for columns. This gives exactly
grid_sample's bilinear values, reads through any pending index map at no extra cost (a flip and a crop
before a zoom are free), and on CPU runs faster than grid_sample.

`Gather` and `Resample` are prepared once for a whole batch and can then be applied to slices of it
(the pipeline's cache-sized chunks) without redoing the index arithmetic.
"""

from __future__ import annotations

import torch
from torch import Tensor

IndexMap = tuple[Tensor, Tensor]  # rows (N, h) and cols (N, w): int64 source indices, -1 = fill with 0
Taps = tuple[Tensor, Tensor, Tensor]  # lower tap index, upper tap index (N, n) int64; upper weight (N, n)


def arange_rows(n: int, length: int, device: torch.device) -> Tensor:
    """(n, length) int64, each row 0..length-1 (an expanded view)."""
    return torch.arange(length, device=device).expand(n, length)


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


def fill_index(i: Tensor, size: int, mode: str) -> Tensor:
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


def linear_taps(src: Tensor, size: int, mode: str) -> Taps:
    """Bilinear taps for continuous source coordinates src (N, n) in pixels (pixel centres at 0..size-1)."""
    lo = torch.floor(src)
    weight = src - lo
    lo = lo.long()
    return fill_index(lo, size, mode), fill_index(lo + 1, size, mode), weight


class _Axis:
    """One axis of a gather, prepared: clamped indices, which outputs are outside, identity or not."""

    def __init__(self, index: Tensor, size: int):
        cpu = index.device.type == "cpu"  # on CUDA these checks would synchronise; skip them there
        outside = index < 0
        self.keep = ~outside if not cpu or bool(outside.any()) else None  # (N, n) bool, None: all inside
        self.identity = (cpu and index.shape[1] == size
                         and bool((index == torch.arange(size, device=index.device)).all()))
        self.index = index.clamp(min=0)
        self.size = size

    def take_rows(self, x: Tensor, sl: slice) -> Tensor:
        """x (k, C, H, W) for samples `sl` -> (k, C, h, W): whole rows copied, so it is cheap."""
        if self.identity:
            return x
        k, c, h_in, w = x.shape
        first_row = torch.arange(k * c, device=x.device).view(k, c, 1) * h_in  # of each (sample, channel)
        index = (first_row + self.index[sl, None, :]).reshape(-1)  # (k*C*h,)
        out = x.reshape(k * c * h_in, w).index_select(0, index).view(k, c, -1, w)
        # Multiplying by the 0/1 mask is several times faster than masked_fill with this broadcast.
        return out if self.keep is None else out.mul_(self.keep[sl, None, :, None])

    def take_cols(self, x: Tensor, sl: slice) -> Tensor:
        """x (k, C, H, W) for samples `sl` -> (k, C, H, w)."""
        if self.identity:
            return x
        k, c, h, _ = x.shape
        index = self.index[sl, None, None, :]
        out = x.gather(3, index.expand(k, c, h, index.shape[-1]))  # index expanded, not copied
        return out if self.keep is None else out.mul_(self.keep[sl, None, None, :])


class Gather:
    """Apply an index map (rows (N, h), cols (N, w)) to an (N, C, H, W) batch or a slice of it."""

    def __init__(self, maps: IndexMap, in_hw: tuple[int, int]):
        self.rows, self.cols = _Axis(maps[0], in_hw[0]), _Axis(maps[1], in_hw[1])

    def __call__(self, x: Tensor, sl: slice = slice(None)) -> Tensor:
        out = self.cols.take_cols(self.rows.take_rows(x, sl), sl)
        return x.clone() if out is x else out


class Resample:
    """Bilinear resampling at separable taps, read through an optional pending index map; blended in
    float32 (bfloat16 batches are converted and back)."""

    def __init__(self, rows: Taps, cols: Taps, in_hw: tuple[int, int], pending: IndexMap | None = None):
        (r0, r1, self.wy), (c0, c1, self.wx) = rows, cols
        if pending is not None:  # read the taps through the map instead of applying it first
            r0, r1 = compose_index(pending[0], r0), compose_index(pending[0], r1)
            c0, c1 = compose_index(pending[1], c0), compose_index(pending[1], c1)
        h, w = in_hw
        self.r0, self.r1, self.c0, self.c1 = _Axis(r0, h), _Axis(r1, h), _Axis(c0, w), _Axis(c1, w)

    def __call__(self, x: Tensor, sl: slice = slice(None)) -> Tensor:
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        wy = self.wy[sl, None, :, None].to(xf.dtype)
        wx = self.wx[sl, None, None, :].to(xf.dtype)
        mid = torch.lerp(self.r0.take_rows(xf, sl), self.r1.take_rows(xf, sl), wy)  # (k, C, h, W)
        out = torch.lerp(self.c0.take_cols(mid, sl), self.c1.take_cols(mid, sl), wx)  # (k, C, h, w)
        return out.clamp_(0.0, 1.0).to(x.dtype)


def remap(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """out[n, c, i, j] = x[n, c, rows[n, i], cols[n, j]], or 0 where rows or cols is -1.
    x: (N, C, H, W); rows: (N, h); cols: (N, w) -> a new (N, C, h, w) tensor, x's dtype."""
    return Gather((rows, cols), tuple(x.shape[2:]))(x)  # type: ignore[arg-type]


def resample(x: Tensor, rows: Taps, cols: Taps, pending: IndexMap | None = None) -> Tensor:
    """Bilinear blend of x (N, C, H, W) at the taps -> (N, C, h, w), x's dtype."""
    return Resample(rows, cols, tuple(x.shape[2:]), pending)(x)  # type: ignore[arg-type]
