"""Receptive fields against an EMPIRICAL receptive field, and against published values.

The empirical field of one output unit is the extent of the non-zero input gradient in a positive,
linearised copy of the model: activations -> identity, max-pool -> average pool of the same geometry,
BatchNorm -> identity, all weights positive, biases 0, float64. With everything positive nothing
cancels, so a pixel has a non-zero gradient exactly when some path connects it to the unit. Channel
counts do not change which pixels are connected (every output channel sums all input channels with
positive weights), so the copy has one channel per convolution (`LazyConv2d` infers what arrives),
which keeps large inputs cheap. The input is made large enough that the unit's field is not clipped
by the border, and that is asserted.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlab.inspect import summary

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.ELU)


def _linearise(module: nn.Module) -> nn.Module:
    """Replace, in place, every child by its positive linear stand-in (see the module docstring)."""
    for name, child in module.named_children():
        if isinstance(child, _ACTIVATIONS + (nn.BatchNorm2d, nn.LayerNorm, nn.Dropout)):
            new = nn.Identity()
        elif isinstance(child, nn.MaxPool2d):
            k, s, p, d = child.kernel_size, child.stride, child.padding, child.dilation
            if d == 1 or d == (1, 1):
                new = nn.AvgPool2d(k, s, p, ceil_mode=child.ceil_mode, count_include_pad=True)
            else:  # AvgPool2d has no dilation: a ones kernel with the same geometry
                assert not child.ceil_mode
                new = nn.LazyConv2d(1, k, s, p, d, bias=False)
        elif isinstance(child, nn.Conv2d):
            new = nn.LazyConv2d(1, child.kernel_size, child.stride, child.padding, child.dilation, bias=False)
        else:
            _linearise(child)
            continue
        setattr(module, name, new)
    return module


def empirical_field(model: nn.Module, input_size: tuple[int, int, int]):
    """`(output (H', W'), centre (i, j), ((lo_h, hi_h), (lo_w, hi_w)))` of the centre output unit."""
    lin = _linearise(copy.deepcopy(model)).double().eval()
    x = torch.ones(1, *input_size, dtype=torch.float64)
    with torch.no_grad():
        lin(x)  # materialise the lazy convolutions
    for m in lin.modules():
        if isinstance(getattr(m, "weight", None), torch.Tensor):
            m.weight.data.uniform_(0.5, 1.5)
            m.weight.data /= m.weight[0].numel()  # keep values near 1 through deep stacks
        if isinstance(getattr(m, "bias", None), torch.Tensor):
            m.bias.data.zero_()
    x.requires_grad_(True)
    y = lin(x)
    h, w = y.shape[-2:]
    ci, cj = h // 2, w // 2
    y[0, :, ci, cj].sum().backward()
    g = x.grad[0].abs().sum(0)
    rows = torch.nonzero(g.sum(1)).flatten()
    cols = torch.nonzero(g.sum(0)).flatten()
    extent = ((int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max())))
    H, W = input_size[1:]
    assert extent[0][0] > 0 and extent[0][1] < H - 1 and extent[1][0] > 0 and extent[1][1] < W - 1, (
        f"field {extent} touches the border of {H}x{W}: the test input is too small"
    )
    return (h, w), (ci, cj), extent


def traced_interval(model: nn.Module, input_size, centre) -> tuple:
    field = summary(model, input_size).output_field
    (lo_h, hi_h), (lo_w, hi_w) = field.h.interval(centre[0]), field.w.interval(centre[1])
    return (lo_h, hi_h), (lo_w, hi_w)


def assert_matches(model: nn.Module, input_size) -> tuple:
    size, centre, extent = empirical_field(model, input_size)
    s = summary(model, input_size)
    assert s.output_field.size == size
    got = (s.output_field.h.interval(centre[0]), s.output_field.w.interval(centre[1]))
    assert got == extent
    return extent


# ----------------------------------------------------------------------------------------------------
# Random conv/pool stacks

@st.composite
def stacks(draw):
    layers, spec, jump = [], [], [1, 1]
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "max", "avg"]))
        k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        s = tuple(si if jump[i] * si <= 8 else 1 for i, si in enumerate(s))  # keep inputs small
        if kind == "conv":
            d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
            p = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
            layers += [nn.Conv2d(1, 1, k, s, p, d), nn.ReLU()]
        elif kind == "max":
            d = (draw(st.integers(1, 2)),) * 2
            p = tuple(draw(st.integers(0, ki // 2)) for ki in k)  # PyTorch: padding <= kernel/2
            layers.append(nn.MaxPool2d(k, s, p, d, ceil_mode=d[0] == 1 and draw(st.booleans())))
        else:
            d = (1, 1)
            p = tuple(draw(st.integers(0, ki // 2)) for ki in k)
            layers.append(nn.AvgPool2d(k, s, p, ceil_mode=draw(st.booleans())))
        spec.append((k, s, d))
        jump = [jump[i] * s[i] for i in range(2)]
    # A generous input: every window at full extent, twice over, plus room for the centre unit.
    sizes = []
    for i in range(2):
        j, bound = 1, 0
        for k, s, d in spec:
            bound += (d[i] * (k[i] - 1) + 1 + 4) * j
            j *= s[i]
        sizes.append(2 * bound + 2 * j + 8)
    return nn.Sequential(*layers), (1, *sizes)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(stacks())
def test_random_stacks_match_empirical(case):
    model, input_size = case
    assert_matches(model, input_size)


# ----------------------------------------------------------------------------------------------------
# Branches: concatenation, residual add, adaptive pooling, padding, broadcast gates

class TwoBranch(nn.Module):
    """Inception-like: a dilated 3x3 and a strided 5x5 branch concatenated, then a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.a = nn.Conv2d(2, 2, 3, padding=2, dilation=2)
        self.b = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(2, 2, 5, padding=2))
        self.skip = nn.Conv2d(2, 4, 1)
        self.pad = nn.ZeroPad2d((3, 1, 0, 2))
        self.tail = nn.Conv2d(4, 1, (3, 1), stride=(1, 2))

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.a(x), self.b(x)], dim=1) + self.skip(x)
        return self.tail(self.pad(torch.relu(y)))


def test_branches_concat_add_pad_match_empirical():
    assert_matches(TwoBranch(), (1, 64, 64))


def test_adaptive_pool_non_divisible_matches_centre():
    # 7 -> 5: windows of 2, 2, 3, 2, 2 pixels; the centre one is the largest and is exact.
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.AdaptiveAvgPool2d(5))
    extent = assert_matches(model, (1, 7, 7))
    assert extent == ((1, 5), (1, 5))


def test_locally_connected_matches_empirical():
    from cnnlab.layers import LocallyConnected2d  # unfold + einsum inside: traced op by op

    model = nn.Sequential(
        LocallyConnected2d(1, 2, 3, input_size=(40, 36), stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(2, 1, 3, dilation=2),
    )
    assert_matches(model, (1, 40, 36))


def test_flattened_positions_stay_positions():
    class Tokens(nn.Module):  # (N, C, H*W) tokens mixed along C only, then back to a map
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 5, stride=2)
            self.mix = nn.Parameter(torch.ones(3, 3))

        def forward(self, x):
            x = self.conv(x)
            t = torch.einsum("ncl,dc->ndl", x.flatten(2), self.mix)
            return t.reshape(x.shape)

    s = summary(Tokens(), (1, 21, 21))
    assert s.output_field.rf == (5, 5) and s.output_field.jump == (2, 2)


class ChannelsLastBlock(nn.Module):
    """ConvNeXt's block: depthwise 7x7, then LayerNorm and an MLP on (N, H, W, C), plus the skip."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        y = self.fc2(self.act(self.fc1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)  # back to (N, C, H, W)


def test_channels_last_blocks_match_empirical():
    model = nn.Sequential(nn.Conv2d(1, 1, 4, stride=4), ChannelsLastBlock(), ChannelsLastBlock(), nn.MaxPool2d(2))
    (lo, hi), _ = assert_matches(model, (1, 128, 128))
    assert hi - lo + 1 == 4 + 2 * 6 * 4 + 4  # two 7x7 at jump 4, then a 2x2 pool at jump 4


def test_squeeze_excitation_gate_sees_the_whole_map():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x):
            x = self.conv(x)
            return x * torch.sigmoid(x.mean((2, 3), keepdim=True))

    s = summary(SE(), (1, 16, 16))
    lo, hi = s.output_field.h.interval(8)
    assert lo <= 0 and hi >= 15  # the gate depends on every pixel: empirical truth checked below
    x = torch.randn(1, 1, 16, 16, requires_grad=True)
    SE()(x)[0, :, 8, 8].sum().backward()
    assert bool((x.grad != 0).all())
    assert s.layers[-1].jump == [1, 1]  # the map's step stays one pixel


# ----------------------------------------------------------------------------------------------------
# torchvision models and the published values (Araujo et al., Distill 2019)

def _meta(builder, **kwargs) -> nn.Module:
    """torchvision's architecture without allocating its weights: the empirical copy replaces them all."""
    with torch.device("meta"):
        return builder(weights=None, **kwargs)


def test_alexnet_features_published_195_and_empirical():
    features = _meta(torchvision.models.alexnet).features
    assert summary(features, (3, 224, 224)).layers[-1].receptive_field == [195, 195]
    (lo, hi), _ = assert_matches(features, (3, 256, 256))
    assert hi - lo + 1 == 195


def test_vgg16_features_published_212_and_empirical():
    features = _meta(torchvision.models.vgg16).features
    assert summary(features, (3, 224, 224)).layers[-1].receptive_field == [212, 212]
    (lo, hi), _ = assert_matches(features, (3, 288, 288))
    assert hi - lo + 1 == 212


def _trunk(model: nn.Module, last: str) -> nn.Sequential:
    """The model's children up to and including `last`, skipping auxiliary heads."""
    parts = OrderedDict()
    for name, child in model.named_children():
        if not name.startswith("aux"):
            parts[name] = child
        if name == last:
            break
    return nn.Sequential(parts)


def test_resnet18_skips_match_empirical():
    trunk = _trunk(_meta(torchvision.models.resnet18), "layer4")
    (lo, hi), _ = assert_matches(trunk, (3, 512, 512))
    assert hi - lo + 1 == 435  # the value usually quoted for ResNet-18; the full model's row agrees
    s = summary(_meta(torchvision.models.resnet18), (3, 224, 224))
    last_block = [r for r in s.layers if r.name == "layer4.1.relu"][-1]
    assert last_block.receptive_field == [435, 435]


def test_googlenet_inception_branches_match_empirical():
    model = _meta(torchvision.models.googlenet, aux_logits=False, init_weights=False)
    assert_matches(_trunk(model, "inception5b"), (3, 480, 480))
