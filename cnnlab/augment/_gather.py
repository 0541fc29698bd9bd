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
    """One axis of a gather, prepared: indices clamped into the image, which outputs are outside, and
    whether the map is the identity. Outside outputs are zeroed by the caller, once for both axes."""

    def __init__(self, index: Tensor, size: int, fallback: Tensor | None = None):
        cpu = index.device.type == "cpu"  # on CUDA these checks would synchronise; skip them there
        outside = index < 0
        self.keep = ~outside if not cpu or bool(outside.any()) else None  # (N, n) bool, None: all inside
        self.identity = (cpu and index.shape[1] == size
                         and bool((index == torch.arange(size, device=index.device)).all()))
        # An outside index reads `fallback` (the other bilinear tap) if given, else pixel 0: any pixel
        # would do, its weight is zeroed.
        self.index = index.clamp(min=0) if fallback is None else torch.where(outside, fallback.clamp(min=0), index)
        self.size = size

    def take_rows(self, x: Tensor, sl: slice) -> Tensor:
        """x (k, C, H, W) for samples `sl` -> (k, C, h, W): whole rows copied, so it is cheap."""
        if self.identity:
            return x
        k, c, h_in, w = x.shape
        first_row = torch.arange(k * c, device=x.device).view(k, c, 1) * h_in  # of each (sample, channel)
        index = (first_row + self.index[sl, None, :]).reshape(-1)  # (k*C*h,)
        return x.reshape(k * c * h_in, w).index_select(0, index).view(k, c, -1, w)

    def take_cols(self, x: Tensor, sl: slice, out: Tensor | None = None) -> Tensor:
        """x (k, C, H, W) for samples `sl` -> (k, C, H, w), into `out` if given (and not the identity)."""
        if self.identity:
            return x
        k, c, h, _ = x.shape
        index = self.index[sl, None, None, :]
        return torch.gather(x, 3, index.expand(k, c, h, index.shape[-1]), out=out)  # index expanded, not copied


def _weigh(x: Tensor, rows: Tensor | None, cols: Tensor | None, sl: slice, scale: float = 1.0,
           gain: Tensor | None = None) -> Tensor:
    """x (k, C, h, w) times rows[sl] (N, h) x cols[sl] (N, w) weights (None: all 1) times `scale` times
    gain[sl] (N,), in place. One pass over the batch whatever the factors: their product is only
    (k, 1, h, w), or (k, 1, 1, 1) without row and column weights."""
    k, _, h, w = x.shape
    g = gain[sl].to(x.dtype).view(k, 1, 1) * scale if gain is not None else None
    if rows is None and cols is None:
        if g is None:
            return x if scale == 1.0 else x.mul_(scale)
        return x.mul_(g.unsqueeze(1))
    r = rows[sl, :, None].to(x.dtype) if rows is not None else torch.ones(k, h, 1, dtype=x.dtype, device=x.device)
    c = cols[sl, None, :].to(x.dtype) if cols is not None else torch.ones(k, 1, w, dtype=x.dtype, device=x.device)
    return x.mul_((r * (c * (scale if g is None else g))).unsqueeze(1))


def _writable(out: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """`out` if a kernel computing in `dtype` can write its result there directly, else None."""
    return out if out is not None and out.dtype == dtype else None


class _Gain:
    """A per-sample factor (then a clamp to [0, 1]) folded into a gather or resample: `gain` (N,) or None."""

    gain: Tensor | None = None

    def absorb_gain(self, gain: Tensor) -> None:
        """Also multiply sample n by gain[n] and clamp to [0, 1]: an exposure after a zoom costs no pass."""
        self.gain = gain if self.gain is None else self.gain * gain


class Gather(_Gain):
    """Apply an index map (rows (N, h), cols (N, w)) to an (N, C, H, W) batch or a slice of it.
    A uint8 batch is gathered as uint8 (a quarter of the bytes to move) and returned as float32 / 255."""

    def __init__(self, maps: IndexMap, in_hw: tuple[int, int]):
        self.rows, self.cols = _Axis(maps[0], in_hw[0]), _Axis(maps[1], in_hw[1])

    def __call__(self, x: Tensor, sl: slice = slice(None), out: Tensor | None = None) -> Tensor:
        """The samples `sl` of the batch, x (k, C, H, W) -> (k, C, h, w), a new tensor or `out`."""
        rows = self.rows.take_rows(x, sl)
        if x.dtype == torch.uint8:
            y = torch.div(self.cols.take_cols(rows, sl), 255, out=_writable(out, torch.float32))
        else:
            y = self.cols.take_cols(rows, sl, _writable(out, x.dtype))
            if y is x:
                y = x.clone() if out is None else out.copy_(x)
        y = _weigh(y, self.rows.keep, self.cols.keep, sl, gain=self.gain)
        if self.gain is not None:
            y.clamp_(0.0, 1.0)
        return y if out is None or y is out else out.copy_(y)


def _inside_weight(a: _Axis, b: _Axis, w: Tensor) -> Tensor | None:
    """(N, n) total weight of the taps that fall inside the image: 1 (exactly) where both do, w or 1 - w
    where one does, 0 where neither; None if every tap is inside."""
    if a.keep is None and b.keep is None:
        return None
    ka = a.keep if a.keep is not None else torch.ones_like(w, dtype=torch.bool)
    kb = b.keep if b.keep is not None else torch.ones_like(w, dtype=torch.bool)
    return torch.where(ka & kb, 1.0, torch.where(ka, 1 - w, torch.where(kb, w, 0.0)))


class Resample(_Gain):
    """Bilinear resampling at separable taps, read through an optional pending index map; blended in
    float32 (bfloat16 batches are converted and back; uint8 batches have their rows selected as uint8,
    then blended, and are returned as float32 / 255).

    A tap outside the image (zero fill) reads the other tap of its pair instead, so each blend only
    sees pixels inside; the blend is then scaled by the weight of the inside taps, for both axes in a
    single pass. This equals blending with zeros (up to float rounding: v * (1 - w) instead of
    v + w * (0 - v)) without masking every intermediate."""

    def __init__(self, rows: Taps, cols: Taps, in_hw: tuple[int, int], pending: IndexMap | None = None):
        (r0, r1, self.wy), (c0, c1, self.wx) = rows, cols
        if pending is not None:  # read the taps through the map instead of applying it first
            r0, r1 = compose_index(pending[0], r0), compose_index(pending[0], r1)
            c0, c1 = compose_index(pending[1], c0), compose_index(pending[1], c1)
        h, w = in_hw
        self.r0, self.r1 = _Axis(r0, h, fallback=r1), _Axis(r1, h, fallback=r0)
        self.c0, self.c1 = _Axis(c0, w, fallback=c1), _Axis(c1, w, fallback=c0)
        self.row_weight = _inside_weight(self.r0, self.r1, self.wy)  # (N, h) or None
        self.col_weight = _inside_weight(self.c0, self.c1, self.wx)  # (N, w) or None

    def __call__(self, x: Tensor, sl: slice = slice(None), out: Tensor | None = None) -> Tensor:
        """The samples `sl` of the batch, x (k, C, H, W) -> (k, C, h, w), a new tensor or `out`."""
        u8 = x.dtype == torch.uint8
        xf = x if u8 or x.dtype in (torch.float32, torch.float64) else x.float()
        dtype = torch.float32 if u8 else xf.dtype  # what the blends compute in
        wy = self.wy[sl, None, :, None].to(dtype)
        wx = self.wx[sl, None, None, :].to(dtype)
        top, bottom = self.r0.take_rows(xf, sl), self.r1.take_rows(xf, sl)
        mid = torch.lerp(top.to(dtype), bottom.to(dtype), wy)  # (k, C, h, W)
        y = torch.lerp(self.c0.take_cols(mid, sl), self.c1.take_cols(mid, sl), wx,
                       out=_writable(out, dtype))  # (k, C, h, w)
        y = _weigh(y, self.row_weight, self.col_weight, sl, 1 / 255 if u8 else 1.0, self.gain).clamp_(0.0, 1.0)
        if out is None:
            return y if u8 else y.to(x.dtype)
        return y if y is out else out.copy_(y)


def remap(x: Tensor, rows: Tensor, cols: Tensor, out: Tensor | None = None) -> Tensor:
    """out[n, c, i, j] = x[n, c, rows[n, i], cols[n, j]], or 0 where rows or cols is -1.
    x: (N, C, H, W); rows: (N, h); cols: (N, w) -> a new (N, C, h, w) tensor, x's dtype (or `out`)."""
    return Gather((rows, cols), tuple(x.shape[2:]))(x, out=out)  # type: ignore[arg-type]


def resample(x: Tensor, rows: Taps, cols: Taps, pending: IndexMap | None = None, out: Tensor | None = None) -> Tensor:
    """Bilinear blend of x (N, C, H, W) at the taps -> (N, C, h, w), x's dtype (or `out`)."""
    return Resample(rows, cols, tuple(x.shape[2:]), pending)(x, out=out)  # type: ignore[arg-type]
