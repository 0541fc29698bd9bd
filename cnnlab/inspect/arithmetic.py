"""The lecture's parameter arithmetic, as functions that return numbers and print as explanations.

1. `connectivity`: one kernel on one image, counted three ways: a convolution (shared kernel), a
   locally-connected layer (a separate kernel at every output position), a fully-connected layer.
2. `bottleneck`: ResNet's 1x1 -> 3x3 -> 1x1 block against one plain 3x3 convolution of the same width.
3. `receptive_field_growth`: how the receptive field of stacked kernels grows with depth.

Pure arithmetic, no torch; the tests check every count against real `nn.Conv2d`/`nn.Linear`/
`LocallyConnected2d` layers and against an empirical receptive field.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnlab.errors import CnnlabError

# Bounds on every argument, so that one number cannot ask for hours of looping or pages of digits.
MAX_SIZE = 1_000_000  # channels, heights, widths, kernels, strides, paddings, dilations
MAX_RF_LAYERS = 1_000  # stacked layers in receptive_field_growth (one number printed per layer)


def _positive(label: str, value, allow_zero: bool = False, high: int = MAX_SIZE) -> int:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        need = "a non-negative" if allow_zero else "a positive"
        shown = repr(value) if not isinstance(value, int) or abs(value) < 10**20 else f"a {len(str(abs(value)))}-digit number"
        raise CnnlabError(f"{label} must be {need} integer of at most {high:,}, got {shown}")
    return value


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


# ----------------------------------------------------------------------------------------------------
# 1. Convolution vs locally-connected vs fully-connected

@dataclass(frozen=True)
class Connectivity:
    """Parameter counts of one kernel geometry applied to one `(C, H, W)` input, three ways."""

    input_size: tuple[int, int, int]  # (C, H, W)
    kernel: int
    out_channels: int
    stride: int
    padding: int
    output_size: tuple[int, int, int]  # (O, H', W')

    @property
    def positions(self) -> int:
        """Output positions H' * W'."""
        return self.output_size[1] * self.output_size[2]

    @property
    def conv_weights(self) -> int:
        c = self.input_size[0]
        return self.out_channels * c * self.kernel * self.kernel  # one kernel per output channel, shared

    @property
    def local_weights(self) -> int:
        return self.positions * self.conv_weights  # the same kernel count at every position, unshared

    @property
    def dense_weights(self) -> int:
        c, h, w = self.input_size
        o, oh, ow = self.output_size
        return (c * h * w) * (o * oh * ow)  # every input value to every output value

    def params(self, bias: bool) -> dict[str, int]:
        """`{"conv", "local", "dense"}` counts; biases: one per output channel for the convolution,
        one per output value (untied) for the locally-connected and the dense layer."""
        o = self.out_channels
        n_out = o * self.positions
        return {
            "conv": self.conv_weights + (o if bias else 0),
            "local": self.local_weights + (n_out if bias else 0),
            "dense": self.dense_weights + (n_out if bias else 0),
        }

    def __str__(self) -> str:
        c, h, w = self.input_size
        o, oh, ow = self.output_size
        k = self.kernel
        nb, wb = self.params(False), self.params(True)
        geo = f"stride {self.stride}, padding {self.padding}"
        lines = [
            f"A {c}x{k}x{k} kernel ({o} output channel{'s' if o > 1 else ''}, {geo}) on a {c}x{h}x{w} input "
            f"-> {o}x{oh}x{ow} output:",
            f"  convolution (shared kernel):      {o} x {c}*{k}*{k} = {nb['conv']:,} weights"
            f"   ({wb['conv']:,} with biases)",
            f"  locally connected (no sharing):   {oh}*{ow} positions x {self.conv_weights:,} = "
            f"{nb['local']:,} weights   ({wb['local']:,} with biases)",
            f"  fully connected (no locality):    {c * h * w:,} x {o * oh * ow:,} = {nb['dense']:,} weights"
            f"   ({wb['dense']:,} with biases)",
        ]
        return "\n".join(lines)


def connectivity(
    input_size: tuple[int, int, int] = (3, 300, 300),
    kernel: int = 3,
    out_channels: int = 1,
    stride: int = 1,
    padding: int = 0,
) -> Connectivity:
    """Count the weights of a `kernel x kernel` layer on a `(C, H, W)` input three ways.

    The lecture's example (defaults): a 3x3x3 kernel on a 300x300x3 image has 27 weights as a
    convolution, 298*298*27 locally connected, and 270,000 x 88,804 fully connected.
    """
    if not isinstance(input_size, (tuple, list)) or len(input_size) != 3:
        raise CnnlabError(f"input_size must be (C, H, W), got {input_size!r}")
    c, h, w = (_positive(n, v) for n, v in zip(("channels", "height", "width"), input_size, strict=True))
    _positive("kernel", kernel)
    _positive("out_channels", out_channels)
    _positive("stride", stride)
    _positive("padding", padding, allow_zero=True)
    oh, ow = _conv_out(h, kernel, stride, padding), _conv_out(w, kernel, stride, padding)
    if min(oh, ow) < 1:
        raise CnnlabError(
            f"a {kernel}x{kernel} kernel with padding {padding} does not fit a {h}x{w} input; "
            f"use a kernel of at most {min(h, w) + 2 * padding}"
        )
    return Connectivity((c, h, w), kernel, out_channels, stride, padding, (out_channels, oh, ow))


# ----------------------------------------------------------------------------------------------------
# 2. The 1x1 bottleneck

@dataclass(frozen=True)
class Bottleneck:
    """ResNet's bottleneck (`channels -> mid -> mid -> channels`) vs one `channels -> channels` conv."""

    channels: int
    mid: int
    kernel: int
    spatial: tuple[int, int]  # (H, W) of the feature map, kept by every layer (stride 1, "same" padding)
    bias: bool

    @property
    def layers(self) -> list[tuple[str, int]]:
        """`(description, parameters)` of the three convolutions of the bottleneck."""
        c, m, k, b = self.channels, self.mid, self.kernel, int(self.bias)
        return [
            (f"1x1 {c}->{m}", c * m + b * m),
            (f"{k}x{k} {m}->{m}", m * m * k * k + b * m),
            (f"1x1 {m}->{c}", m * c + b * c),
        ]

    @property
    def params(self) -> int:
        return sum(n for _, n in self.layers)

    @property
    def plain_params(self) -> int:
        c, k = self.channels, self.kernel
        return c * c * k * k + (c if self.bias else 0)

    @property
    def macs(self) -> int:
        """MACs of the bottleneck per image: weights (no biases) x output positions."""
        h, w = self.spatial
        c, m, k = self.channels, self.mid, self.kernel
        return (c * m + m * m * k * k + m * c) * h * w

    @property
    def plain_macs(self) -> int:
        h, w = self.spatial
        return self.channels * self.channels * self.kernel**2 * h * w

    def __str__(self) -> str:
        c, k = self.channels, self.kernel
        h, w = self.spatial
        bias = "with" if self.bias else "without"
        parts = " + ".join(f"{n:,} ({d})" for d, n in self.layers)
        return "\n".join([
            f"Bottleneck {c}->{self.mid}->{self.mid}->{c} vs a plain {k}x{k} {c}->{c} convolution ({bias} biases):",
            f"  bottleneck: {parts} = {self.params:,} parameters",
            f"  plain {k}x{k}:  {c}*{c}*{k}*{k}{f' + {c}' if self.bias else ''} = {self.plain_params:,} parameters "
            f"({self.plain_params / self.params:.1f}x more)",
            f"  MACs on a {h}x{w} map: {self.macs:,} vs {self.plain_macs:,}",
        ])


def bottleneck(
    channels: int = 256, mid: int = 64, kernel: int = 3, spatial: int | tuple[int, int] = 56, bias: bool = False
) -> Bottleneck:
    """Count the lecture's bottleneck: 256->64->64->256 has 69,632 weights against 589,824 for a 3x3."""
    _positive("channels", channels)
    _positive("mid", mid)
    _positive("kernel", kernel)
    hw = (spatial, spatial) if isinstance(spatial, int) else tuple(spatial)
    if len(hw) != 2:
        raise CnnlabError(f"spatial must be an int or (H, W), got {spatial!r}")
    for v in hw:
        _positive("spatial", v)
    return Bottleneck(channels, mid, kernel, hw, bool(bias))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# 3. Receptive-field growth

@dataclass(frozen=True)
class RFGrowth:
    """Receptive field (input pixels) and jump after each of `len(rfs)` stacked identical kernels."""

    kernel: int
    stride: int
    dilation: int
    rfs: tuple[int, ...]
    jumps: tuple[int, ...]

    def __str__(self) -> str:
        k, s = self.kernel, self.stride
        kind = "overlapping" if s < k else ("non-overlapping" if s == k else "gapped")
        dil = f", dilation {self.dilation}" if self.dilation > 1 else ""
        rfs = ", ".join(str(r) for r in self.rfs)
        rule = "r_n = r_{n-1} + (k_eff - 1) * jump_{n-1}, jump_n = jump_{n-1} * stride"
        k_eff = self.dilation * (k - 1) + 1
        if s == 1:
            rule = f"r_n = 1 + n*({k_eff}-1): linear growth"
        elif s == k and self.dilation == 1:
            rule = f"r_n = {k}^n: exponential growth, only because the windows do not overlap"
        return f"{len(self.rfs)} stacked {k}x{k} kernels, stride {s}{dil} ({kind}): receptive fields {rfs}\n  {rule}"


def receptive_field_growth(kernel: int = 3, layers: int = 3, stride: int = 1, dilation: int = 1) -> RFGrowth:
    """The textbook recursion for a stack of identical `kernel x kernel` windows.

    Stride 1 gives 3, 5, 7 for 3x3 kernels; the 3, 9, 27 sometimes quoted holds only for stride 3,
    where the windows tile the input without overlap.
    """
    for label, v in (("kernel", kernel), ("stride", stride), ("dilation", dilation)):
        _positive(label, v)
    _positive("layers", layers, high=MAX_RF_LAYERS)
    k_eff = dilation * (kernel - 1) + 1
    rf, jump, rfs, jumps = 1, 1, [], []
    for _ in range(layers):
        rf, jump = rf + (k_eff - 1) * jump, jump * stride
        rfs.append(rf)
        jumps.append(jump)
    return RFGrowth(kernel, stride, dilation, tuple(rfs), tuple(jumps))


def lecture_examples() -> str:
    """The three worked examples of the lecture, as text."""
    return "\n\n".join([
        "1. Why convolutions: sparse connectivity and parameter sharing\n" + str(connectivity()),
        "2. The 1x1 bottleneck\n" + str(bottleneck()),
        "3. Receptive-field growth of stacked 3x3 kernels\n"
        + str(receptive_field_growth(3, 3, stride=1))
        + "\n"
        + str(receptive_field_growth(3, 3, stride=3)),
    ])
