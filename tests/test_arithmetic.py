"""The lecture's parameter arithmetic against real torch layers and an empirical receptive field."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.errors import CnnlabError
from cnnlab.inspect.arithmetic import bottleneck, connectivity, receptive_field_growth


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _local_params(c, o, k, size, stride, padding, bias) -> int:
    """LocallyConnected2d when it exists; otherwise the Conv2d count times the output positions."""
    try:
        from cnnlab.layers import LocallyConnected2d
    except ImportError:
        conv = nn.Conv2d(c, o, k, stride, padding, bias=bias, device="meta")
        oh = (size[0] + 2 * padding - k) // stride + 1
        ow = (size[1] + 2 * padding - k) // stride + 1
        weights = conv.weight.numel() * oh * ow
        return weights + (o * oh * ow if bias else 0)
    with torch.device("meta"):
        layer = LocallyConnected2d(c, o, k, input_size=size, stride=stride, padding=padding, bias=bias)
    return _numel(layer)


def _layers(c, h, w, k, o, stride, padding, bias):
    """The three real layers, on the meta device (the dense one has 24 billion weights)."""
    with torch.device("meta"):
        conv = nn.Conv2d(c, o, k, stride, padding, bias=bias)
        out = conv(torch.zeros(1, c, h, w))
        dense = nn.Linear(c * h * w, out[0].numel(), bias=bias)
    return _numel(conv), _local_params(c, o, k, (h, w), stride, padding, bias), _numel(dense), tuple(out.shape[1:])


@pytest.mark.parametrize("bias", [False, True])
def test_lecture_example_matches_real_layers(bias):
    r = connectivity((3, 300, 300), kernel=3)
    conv, local, dense, out = _layers(3, 300, 300, 3, 1, 1, 0, bias)
    assert r.output_size == out == (1, 298, 298)
    assert r.params(bias) == {"conv": conv, "local": local, "dense": dense}
    if not bias:  # the lecture's own numbers
        assert (conv, local, dense) == (27, 298 * 298 * 27, 270_000 * 88_804)


@settings(max_examples=25, deadline=None)
@given(
    c=st.integers(1, 4), h=st.integers(5, 20), w=st.integers(5, 20), k=st.integers(1, 5),
    o=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2), bias=st.booleans(),
)
def test_connectivity_matches_real_layers(c, h, w, k, o, stride, padding, bias):
    r = connectivity((c, h, w), k, o, stride, padding)
    conv, local, dense, out = _layers(c, h, w, k, o, stride, padding, bias)
    assert r.output_size == out
    assert r.params(bias) == {"conv": conv, "local": local, "dense": dense}


@pytest.mark.parametrize("bias", [False, True])
def test_bottleneck_matches_real_layers_and_flop_counter(bias):
    r = bottleneck(256, 64, 3, spatial=56, bias=bias)
    with torch.device("meta"):
        block = nn.Sequential(
            nn.Conv2d(256, 64, 1, bias=bias), nn.Conv2d(64, 64, 3, padding=1, bias=bias), nn.Conv2d(64, 256, 1, bias=bias)
        )
        plain = nn.Conv2d(256, 256, 3, padding=1, bias=bias)
        x = torch.zeros(1, 256, 56, 56)
        with FlopCounterMode(display=False) as fb:
            block(x)
        with FlopCounterMode(display=False) as fp:
            plain(x)
    assert (r.params, r.plain_params) == (_numel(block), _numel(plain))
    assert (r.macs, r.plain_macs) == (fb.get_total_flops() // 2, fp.get_total_flops() // 2)  # 2 FLOPs per MAC
    if not bias:
        assert (r.params, r.plain_params) == (69_632, 589_824)  # the lecture's numbers


def _empirical_rf(kernel: int, layers: int, stride: int, dilation: int) -> int:
    """Extent of the input gradient of the centre unit of a stack of positive 1-channel convolutions."""
    stack = nn.Sequential(*[nn.Conv2d(1, 1, kernel, stride, dilation=dilation, bias=False) for _ in range(layers)])
    for m in stack:
        nn.init.constant_(m.weight, 1.0)
    size = 4 * (dilation * (kernel - 1) + 1) * stride**layers + 1
    x = torch.ones(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    y = stack.double()(x)
    y[0, 0, y.shape[2] // 2, y.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].sum(1)).flatten()
    assert rows.min() > 0 and rows.max() < size - 1  # not clipped
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("kernel,stride,dilation", [(3, 1, 1), (3, 3, 1), (3, 2, 1), (5, 1, 2), (2, 2, 1), (4, 3, 1)])
def test_rf_growth_matches_empirical(kernel, stride, dilation):
    r = receptive_field_growth(kernel, 3, stride, dilation)
    assert list(r.rfs) == [_empirical_rf(kernel, n, stride, dilation) for n in (1, 2, 3)]


def test_rf_growth_lecture_numbers():
    assert receptive_field_growth(3, 3, stride=1).rfs == (3, 5, 7)
    assert receptive_field_growth(3, 3, stride=3).rfs == (3, 9, 27)  # only without overlap


@pytest.mark.parametrize("call", [
    lambda: connectivity((3, 300), 3),
    lambda: connectivity((3, 4, 4), 9),
    lambda: connectivity((3, 8, 8), 0),
    lambda: bottleneck(256, -1),
    lambda: receptive_field_growth(3, 0),
])
def test_bad_input_is_a_cnnlab_error(call):
    with pytest.raises(CnnlabError):
        call()


def test_cli_prints_the_three_lecture_examples():
    out = run_cli("arithmetic", check=True).stdout
    for text in ("27 weights", "2,397,708", "270,000 x 88,804", "69,632", "589,824", "3, 5, 7", "3, 9, 27"):
        assert text in out


def test_cli_options_and_errors():
    out = run_cli("arithmetic", "connectivity", "--input", "1x28x28", "--kernel", "5", "--out-channels", "6",
                  check=True).stdout
    assert "150 weights" in out and "6x24x24" in out  # 6 * 5*5 weights; 28 - 5 + 1 = 24
    proc = run_cli("arithmetic", "connectivity", "--input", "28x28")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
