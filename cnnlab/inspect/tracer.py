"""Op-level tracing: receptive fields, jumps and MACs of every tensor produced by one forward pass.

A `Tracer` is a `torch.overrides.TorchFunctionMode`: while it is active it sees every top-level torch
call (`conv2d`, `max_pool2d`, `cat`, `Tensor.add_`, ...), so it works for any `nn.Module` in eager
mode, skips and concatenations included, without knowing the model.

Geometry, per spatial axis, in input pixels (the "unclipped" receptive field of Araujo et al., Distill
2019: padding counts as if the image went on). Output position `i` of a feature map sees the input
pixels `[lo(i), hi(i)]`, where `lo` is the minimum and `hi` the maximum of a few affine functions
`a + b*i`. One piece each is the textbook recursion (`rf = hi - lo + 1`, jump `b`, start `lo(0)`); a
union of paths (ResNet's skip, Inception's branches, a squeeze-excitation gate broadcast over the map)
keeps one piece per distinct jump, which makes branching exact instead of approximated.

Exact: convolutions (kernel, stride, padding incl. "same", dilation, groups), max/avg/lp pooling,
`F.pad`, `F.unfold` (locally-connected layers), elementwise ops, add, cat, broadcast gates, and
`permute` to channels-last and back (ConvNeXt). Adaptive pooling is exact when the output size
divides the input size; otherwise its largest window is used. An op whose output no longer holds
the positions it read (flatten, linear, a mean over H and W, and ops this file does not know that
move positions: interpolate, transposed convolutions, spatial slicing, Swin's window partition) is
treated as a kernel over the whole map: exact for the first kinds, an overestimate for the others.
MACs: convolutions (also transposed), linear, matmul/mm/bmm/addmm/baddbmm, einsum, attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

Piece = tuple[float, float]  # (a, b): the affine function a + b*i of the output position i


def _prune(pieces: list[Piece], keep: Callable[[float, float], float]) -> tuple[Piece, ...]:
    """One piece per slope (the lowest for `lo`, the highest for `hi`): the others never win."""
    best: dict[float, float] = {}
    for a, b in pieces:
        best[b] = a if b not in best else keep(best[b], a)
    return tuple(sorted((a, b) for b, a in best.items()))


@dataclass(frozen=True)
class Axis:
    """What the positions `0 .. size-1` of one spatial axis see of the input, in input pixels."""

    size: int
    lo: tuple[Piece, ...]  # lo(i) = min(a + b*i)
    hi: tuple[Piece, ...]  # hi(i) = max(a + b*i)

    @classmethod
    def identity(cls, size: int) -> Axis:
        """The input itself: position i sees pixel i."""
        return cls(size, ((0.0, 1.0),), ((0.0, 1.0),))

    def interval(self, i: float) -> tuple[float, float]:
        """First and last input pixel seen by position `i` (may lie in the padding)."""
        return min(a + b * i for a, b in self.lo), max(a + b * i for a, b in self.hi)

    @property
    def rf(self) -> float:
        """The largest receptive field over the positions; `hi - lo` is convex, so an end wins."""
        return max(hi - lo + 1 for lo, hi in (self.interval(0), self.interval(self.size - 1)))

    @property
    def jump(self) -> float:
        """Effective stride: input pixels between neighbouring positions."""
        return max(b for _, b in self.hi)

    def window(self, kernel: float, stride: float, padding: float, size: int) -> Axis:
        """A sliding window: output `o` reads inputs `o*stride - padding ... + kernel - 1`.

        `kernel` is the effective extent `dilation*(k-1) + 1`. `lo` is non-decreasing (slopes >= 0),
        so the first input of the window gives `lo` and the last gives `hi`.
        """
        lo = [(a - b * padding, b * stride) for a, b in self.lo]
        hi = [(a + b * (kernel - 1 - padding), b * stride) for a, b in self.hi]
        return Axis(size, _prune(lo, min), _prune(hi, max))

    def collapse(self) -> Axis:
        """An op that mixes all positions (flatten, linear, global pooling): a kernel over the map."""
        return self.window(self.size, self.size, 0, 1)

    def constant(self, size: int = 1) -> Axis:
        """Every one of `size` positions sees what position 0 sees (a broadcast, or a lost layout)."""
        lo, hi = self.interval(0)
        return Axis(size, ((lo, 0.0),), ((hi, 0.0),))

    def adaptive(self, size: int) -> Axis:
        """Adaptive pooling to `size`: windows `[floor(i*n/m), ceil((i+1)*n/m))` vary in length.

        Exact when `n % m == 0` (a plain kernel = stride = n/m window). Otherwise the largest window
        is used as the kernel and the stride puts the last window at the end of the map, so the
        first and last positions (and anything that later collapses the map) are exact.
        """
        n, m = self.size, size
        if m == 1 or n % m == 0:
            return self.window(n // m, n // m, 0, m)
        kmax = max(math.ceil((i + 1) * n / m) - (i * n) // m for i in range(m))
        return self.window(kmax, (n - kmax) / (m - 1), 0, m)


def union(axes: list[Axis], size: int) -> Axis:
    """Position i sees everything any input sees at i (elementwise ops, add, cat)."""
    lo = [p for ax in axes for p in ax.lo]
    hi = [p for ax in axes for p in ax.hi]
    return Axis(size, _prune(lo, min), _prune(hi, max))


@dataclass(frozen=True)
class Field:
    """Receptive-field geometry of a tensor: its (H, W) positions and where they sit in its shape."""

    h: Axis
    w: Axis
    dim: int = -2  # H at dim -2 (N, C, H, W); -3 channels-last (N, H, W, C); -1: flattened (N, C, H*W)

    @property
    def size(self) -> tuple[int, int]:
        return self.h.size, self.w.size

    @property
    def rf(self) -> tuple[float, float]:
        return self.h.rf, self.w.rf

    @property
    def jump(self) -> tuple[float, float]:
        return self.h.jump, self.w.jump

    def collapse(self) -> Field:
        return Field(self.h.collapse(), self.w.collapse())

    def held_by(self, t: torch.Tensor) -> int | None:
        """The `dim` at which `t` holds these positions (its own layout first), or None."""
        h, w = self.size
        for d in dict.fromkeys((self.dim, -2, -3, -1)):
            if d == -1:
                if (h, w) != (1, 1) and t.ndim >= 1 and t.shape[-1] == h * w:
                    return d
            elif t.ndim >= -d and (t.shape[d], t.shape[d + 1]) == (h, w):
                return d
        return None

    def everywhere(self, size: tuple[int, int]) -> Field:
        """A map of `size` whose every position sees all this field does (its layout was lost)."""
        c = self.collapse()
        return Field(c.h.constant(size[0]), c.w.constant(size[1]))


# ----------------------------------------------------------------------------------------------------
# Argument handling for the ops with a window

def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1])) if len(v) else (1, 1)
    return int(v), int(v)


def _bind(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: dict) -> dict:
    bound = dict(defaults)
    bound.update(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_MAXPOOL = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVGPOOL = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
_LPPOOL = ("input", "norm_type", "kernel_size", "stride", "ceil_mode")


def _window_geometry(func, args: tuple, kwargs: dict) -> tuple[torch.Tensor, list[tuple[int, int, int]]] | None:
    """For a 2-D conv/pool call: its input and per axis `(effective kernel, stride, left padding)`."""
    if func is F.conv2d:
        p = _bind(args, kwargs, _CONV, {"stride": 1, "padding": 0, "dilation": 1})
        k = tuple(p["weight"].shape[-2:])
        s, d = _pair(p["stride"]), _pair(p["dilation"])
        if isinstance(p["padding"], str):  # "valid": none; "same": PyTorch puts the odd pixel right
            pad = (0, 0) if p["padding"] == "valid" else tuple(d[i] * (k[i] - 1) // 2 for i in range(2))
        else:
            pad = _pair(p["padding"])
    elif func in (F.max_pool2d, torch.max_pool2d, F.max_pool2d_with_indices):
        p = _bind(args, kwargs, _MAXPOOL, {"stride": None, "padding": 0, "dilation": 1})
        k, d, pad = _pair(p["kernel_size"]), _pair(p["dilation"]), _pair(p["padding"])
        s = _pair(p["stride"]) if p["stride"] not in (None, [], ()) else k
    elif func is F.unfold:  # im2col, as locally-connected layers use it: windows of a convolution
        p = _bind(args, kwargs, ("input", "kernel_size", "dilation", "padding", "stride"),
                  {"dilation": 1, "padding": 0, "stride": 1})
        k, d, pad, s = _pair(p["kernel_size"]), _pair(p["dilation"]), _pair(p["padding"]), _pair(p["stride"])
    elif func in (F.avg_pool2d, F.lp_pool2d):
        p = _bind(args, kwargs, _AVGPOOL if func is F.avg_pool2d else _LPPOOL, {"stride": None, "padding": 0})
        k, d, pad = _pair(p["kernel_size"]), (1, 1), _pair(p["padding"])
        s = _pair(p["stride"]) if p["stride"] not in (None, [], ()) else k
    else:
        return None
    return p["input"], [(d[i] * (k[i] - 1) + 1, s[i], pad[i]) for i in range(2)]


# ----------------------------------------------------------------------------------------------------
# Multiply-accumulates: convolutions and matrix products only (torchvision's GFLOPS convention)

_CONVS = (F.conv1d, F.conv2d, F.conv3d)
_CONV_T = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
_MATMULS = (torch.matmul, torch.mm, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__,
            torch.Tensor.mm, torch.Tensor.bmm)
_ADDMMS = (torch.addmm, torch.baddbmm, torch.Tensor.addmm, torch.Tensor.baddbmm)


def _einsum_macs(equation: str, operands: list[torch.Tensor], out: torch.Tensor) -> int:
    """Output elements times the product of the summed-over index sizes."""
    inputs, _, output = equation.replace(" ", "").partition("->")
    sizes: dict[str, int] = {}
    for letters, t in zip(inputs.split(","), operands, strict=False):
        letters = letters.replace("...", "")
        for letter, n in zip(letters[::-1], reversed(t.shape), strict=False):  # align from the right past any "..."
            sizes[letter] = int(n)
    if not output:  # implicit mode: the output keeps the letters that appear once
        output = "".join(c for c in sorted(sizes) if inputs.count(c) == 1)
    return out.numel() * math.prod(n for c, n in sizes.items() if c not in output)


def op_macs(func, args: tuple, kwargs: dict, out) -> int:
    """Multiply-accumulates of one torch call (0 for ops that are not convolutions or products)."""
    out = next(_tensors(out), None)  # the first output, e.g. attention's (output, weights)
    if out is None:
        return 0
    if func in _CONVS:
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        return out.numel() * weight[0].numel()  # each output: C_in/groups * kh * kw products
    if func in _CONV_T:
        x = args[0] if args else kwargs["input"]
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        return x.numel() * weight[0].numel()  # each input spreads over C_out/groups * kh * kw outputs
    if func is F.linear:
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        return out.numel() * weight.shape[-1]
    if func in _MATMULS:
        return out.numel() * args[0].shape[-1]
    if func is torch.Tensor.__rmatmul__:
        return out.numel() * args[1].shape[-1]
    if func in _ADDMMS:
        return out.numel() * args[1].shape[-1]
    if func is F.scaled_dot_product_attention:  # Q K^T and then A V
        q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")][len(args):])[:3]
        return q.numel() // q.shape[-1] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    if func is F.multi_head_attention_forward:  # nn.MultiheadAttention, one opaque call
        q, k, v = args[:3]  # (L, N, Eq), (S, N, Ek), (S, N, Ev)
        e = args[3]
        (tl, n), ts = q.shape[:2], k.shape[0]
        projections = (tl * q.shape[-1] + ts * k.shape[-1] + ts * v.shape[-1] + tl * e) * e
        return n * (projections + 2 * tl * ts * e)
    if func is torch.einsum:
        operands = list(args[1][0] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:])
        return _einsum_macs(args[0], operands, out)
    return 0


# ----------------------------------------------------------------------------------------------------
# The mode

def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


class Tracer(TorchFunctionMode):
    """Attach a `Field` to every tensor computed from the traced input and count MACs per call.

    Usage: `tracer.mark(x)` on the input, run the forward pass inside `with tracer:`, then
    `tracer.field(t)` for any tensor. `on_op(func, macs, out)` is called after every op that did
    multiply-accumulates, so a caller can attribute them (e.g. to the active module).
    """

    def __init__(self, on_op: Callable[[object, int, object], None] | None = None):
        super().__init__()
        self._fields = WeakIdKeyDictionary()  # nothing is written on the tensors themselves
        self.on_op = on_op
        self.total_macs = 0

    def mark(self, x: torch.Tensor) -> None:
        """Declare `x` (…, H, W) the input whose pixels receptive fields are measured in."""
        self._fields[x] = Field(Axis.identity(x.shape[-2]), Axis.identity(x.shape[-1]))

    def field(self, t) -> Field | None:
        return self._fields.get(t) if isinstance(t, torch.Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm and args and args[0].device.type == "meta":
            # Shapes only: skip torch's slow Python decomposition of batch_norm on the meta device
            # (half the time of tracing a ResNet). In eval mode the op has no side effect.
            out = torch.empty_like(args[0])
        else:
            out = func(*args, **kwargs)  # the mode is off inside this call: only top-level ops are seen
        outputs = list(_tensors(out))
        if not outputs:
            return out
        macs = op_macs(func, args, kwargs, out)
        if macs:
            self.total_macs += macs
            if self.on_op is not None:
                self.on_op(func, macs, out)
        fields = [f for f in (self._fields.get(t) for t in _tensors((args, kwargs))) if f is not None]
        if fields:
            for t in outputs:
                self._fields[t] = self._propagate(func, args, kwargs, fields, t)
        return out

    def _source(self, t: torch.Tensor) -> Field | None:
        """The field of a window op's input, as an (N, C, H, W) map."""
        f = self._fields.get(t)
        if f is None or f.held_by(t) == -2:
            return f
        return f.everywhere(tuple(t.shape[-2:]))  # a map whose layout was lost: all positions see all

    def _windowed(self, func, args, kwargs, size: tuple[int, int]) -> Field | None:
        """Convolutions, pooling and padding: the output's geometry from the window's."""
        geometry = _window_geometry(func, args, kwargs)
        if geometry is not None:
            src = self._source(geometry[0])
            if src is None:
                return None
            dim = -2
            if func is F.unfold:  # (N, C*kh*kw, H'*W'): the positions come flattened
                size = tuple((n + 2 * p - k) // s + 1 for n, (k, s, p) in zip(src.size, geometry[1], strict=True))
                dim = -1
            axes = [ax.window(k, s, p, n) for ax, (k, s, p), n in zip((src.h, src.w), geometry[1], size, strict=True)]
            return Field(*axes, dim=dim)
        if func in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices):
            src = self._source(args[0] if args else kwargs["input"])
            if src is not None:
                return Field(src.h.adaptive(size[0]), src.w.adaptive(size[1]))
        if func is F.pad:
            pad = args[1] if len(args) > 1 else kwargs["pad"]
            src = self._source(args[0] if args else kwargs["input"])
            if src is not None and len(pad) >= 2:
                top = pad[2] if len(pad) >= 4 else 0
                return Field(src.h.window(1, 1, top, size[0]), src.w.window(1, 1, pad[0], size[1]))
        return None

    def _permuted(self, func, args, kwargs, fields: list[Field], out: torch.Tensor) -> Field | None:
        """permute: the positions move with their dims (ConvNeXt's channels-last blocks)."""
        x = args[0] if args else kwargs.get("input")
        f = self._fields.get(x) if isinstance(x, torch.Tensor) else None
        if f is None or f.held_by(x) not in (-2, -3) or out.ndim != x.ndim:
            return None
        n = x.ndim
        dims = args[1:] if len(args) > 1 else (kwargs.get("dims"),)
        perm = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else list(dims)
        perm = [p % n for p in perm]
        h = n + f.held_by(x)
        new_h, new_w = perm.index(h), perm.index(h + 1)
        if new_w == new_h + 1 and new_h - n in (-2, -3):
            return Field(f.h, f.w, dim=new_h - n)
        return None

    def _propagate(self, func, args, kwargs, fields: list[Field], out: torch.Tensor) -> Field:
        if out.ndim >= 2:
            windowed = self._windowed(func, args, kwargs, tuple(out.shape[-2:]))
            if windowed is not None:
                return windowed
        if func in _PERMUTES:
            permuted = self._permuted(func, args, kwargs, fields, out)
            if permuted is not None:
                return permuted
        held = [(f, f.held_by(out)) for f in fields]
        match = next(((f.size, d) for f, d in held if d is not None), None)
        if match is None:
            # The layout is gone (flatten, linear, mean over H and W, a vector): every value may
            # depend on every position, as under a kernel covering the whole map.
            collapsed = [f.collapse() for f in fields]
            return Field(union([f.h for f in collapsed], 1), union([f.w for f in collapsed], 1))
        # Any other op (elementwise, add, cat along channels): inputs holding the output's positions
        # are read position by position; the others (a 1x1 gate, a lost layout) are broadcast.
        size, dim = match
        per_axis = []
        for axis in range(2):
            axes = []
            for f in fields:
                ax = (f.h, f.w)[axis]
                if f.size == size:
                    axes.append(ax)
                else:
                    axes.append((ax if ax.size == 1 else ax.collapse()).constant())
            per_axis.append(union(axes, size[axis]))
        return Field(*per_axis, dim=dim)


_PERMUTES = (torch.permute, torch.Tensor.permute)
