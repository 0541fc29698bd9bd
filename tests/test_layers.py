"""cnnlab.layers: LocallyConnected2d against a naive loop and F.conv2d, the option-A shortcut, activations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from cnnlab.layers import LocallyConnected2d, ShortcutA, activation_gain, make_activation


def _naive_local(x, weight, bias, stride, padding, dilation):
    """Locally-connected layer by its definition, one output value at a time, in numpy float64."""
    x = np.pad(x.numpy().astype(np.float64), ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    w = weight.detach().numpy().astype(np.float64)  # (H', W', O, C, kh, kw)
    oh, ow, o, _, kh, kw = w.shape
    out = np.zeros((x.shape[0], o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * stride[0], j * stride[1]
            patch = x[:, :, r0 : r0 + dilation[0] * (kh - 1) + 1 : dilation[0], c0 : c0 + dilation[1] * (kw - 1) + 1 : dilation[1]]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w[i, j])
    if bias is not None:
        out += bias.detach().numpy()[None]
    return out


@pytest.mark.parametrize(
    "c, o, k, size, stride, padding, dilation",
    [
        (3, 4, (3, 3), (7, 6), (1, 1), (0, 0), (1, 1)),
        (2, 5, (3, 3), (8, 8), (2, 2), (1, 1), (1, 1)),
        (1, 3, (2, 3), (6, 7), (1, 2), (1, 0), (1, 1)),
        (2, 2, (3, 3), (9, 9), (1, 1), (2, 2), (2, 2)),
    ],
)
def test_local_matches_naive_loop(c, o, k, size, stride, padding, dilation):
    layer = LocallyConnected2d(c, o, k, size, stride, padding, dilation)
    x = torch.randn(2, c, *size)
    out = layer(x)
    expected = _naive_local(x, layer.weight, layer.bias, stride, padding, dilation)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_local_with_one_shared_kernel_is_conv2d(stride, padding, dilation):
    conv_w, conv_b = torch.randn(4, 3, 3, 3), torch.randn(4)
    layer = LocallyConnected2d(3, 4, 3, (10, 10), stride, padding, dilation)
    with torch.no_grad():
        layer.weight.copy_(conv_w.expand_as(layer.weight))  # the same kernel at every position
        layer.bias.copy_(conv_b[:, None, None].expand_as(layer.bias))
    x = torch.randn(2, 3, 10, 10)
    expected = F.conv2d(x, conv_w, conv_b, stride, padding, dilation)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_local_parameter_count_and_shapes():
    # 28x28x1 -> local3x3-8 without padding: 26x26 positions, each with its own 8x1x3x3 kernel
    layer = LocallyConnected2d(1, 8, 3, (28, 28))
    assert layer.weight.shape == (26, 26, 8, 1, 3, 3)
    assert layer.bias.shape == (8, 26, 26)  # untied: one bias per channel and position
    assert sum(p.numel() for p in layer.parameters()) == 26 * 26 * 8 * 1 * 3 * 3 + 8 * 26 * 26
    no_bias = LocallyConnected2d(2, 3, (3, 5), (10, 12), stride=2, padding=1, bias=False)
    oh, ow = (10 + 2 - 3) // 2 + 1, (12 + 2 - 5) // 2 + 1
    assert sum(p.numel() for p in no_bias.parameters()) == oh * ow * 3 * 2 * 3 * 5
    assert no_bias(torch.randn(1, 2, 10, 12)).shape == (1, 3, oh, ow)


def test_local_kernels_are_not_shared():
    # The gradient of one output pixel reaches only that position's kernel: "sparsity without reuse".
    layer = LocallyConnected2d(2, 3, 3, (6, 6), padding=1)
    layer(torch.randn(1, 2, 6, 6))[0, :, 2, 4].sum().backward()
    touched = layer.weight.grad.abs().sum(dim=(2, 3, 4, 5)) > 0  # (H', W')
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[2, 4] = True
    assert torch.equal(touched, expected)


def test_local_initial_scale_matches_conv2d_default():
    # Each position starts as a fresh nn.Conv2d would: weights uniform in +-1/sqrt(fan_in).
    layer = LocallyConnected2d(16, 16, 3, (12, 12), padding=1)
    bound = 1 / math.sqrt(16 * 9)
    assert layer.weight.abs().max() <= bound
    assert abs(layer.weight.std().item() - bound / math.sqrt(3)) < 0.02 * bound


def test_local_refuses_wrong_input_size_and_empty_output():
    layer = LocallyConnected2d(1, 2, 3, (8, 8))
    with pytest.raises(CnnlabError, match="built for 8x8 inputs, got 9x9"):
        layer(torch.randn(1, 1, 9, 9))
    with pytest.raises(CnnlabError, match="no output position"):
        LocallyConnected2d(1, 2, 5, (3, 3))


def test_shortcut_a_subsamples_and_zero_pads():
    x = torch.randn(2, 4, 7, 7)
    sc = ShortcutA(4, 8, stride=2)
    out = sc(x)
    assert out.shape == (2, 8, 4, 4)  # ceil(7 / 2)
    expected = np.zeros((2, 8, 4, 4), dtype=np.float32)
    expected[:, :4] = x.numpy()[:, :, 0:7:2, 0:7:2]
    np.testing.assert_array_equal(out.numpy(), expected)
    assert list(sc.parameters()) == []
    assert torch.equal(ShortcutA(3, 3, 1)(x[:, :3]), x[:, :3])


def test_activations_by_name():
    assert isinstance(make_activation("TANH"), torch.nn.Tanh)
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(make_activation("leakyrelu")(x), torch.where(x > 0, x, 0.01 * x))
    assert activation_gain("relu") == pytest.approx(math.sqrt(2))  # He et al. 2015
    assert activation_gain("tanh") == pytest.approx(5 / 3)
    with pytest.raises(CnnlabError, match="unknown activation 'tahn' \\(did you mean 'tanh'\\?\\)"):
        make_activation("tahn")


# ---- Flatten that keeps the gradient's layout ---------------------------------------------------


def _backward_map_copies(flatten: torch.nn.Module, fmt: torch.memory_format) -> tuple[tuple, int]:
    """Gradients of conv -> ReLU -> 2x2 max-pool -> flatten -> fc, and how many copies of the 8x8 map
    (the pool's input) the backward pass made."""
    from torch.profiler import profile

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), flatten,
                              torch.nn.Linear(8 * 4 * 4, 5)).to(memory_format=fmt)
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=fmt).requires_grad_()
    out = net(x)
    with profile(record_shapes=True) as prof:
        out.square().sum().backward()
    copies = sum(e.name == "aten::copy_" and e.input_shapes[0] == [4, 8, 8, 8] for e in prof.events())
    return (out.detach(), x.grad, net[0].weight.grad, net[4].weight.grad), copies


@pytest.mark.parametrize("channels_last", [True, False])
def test_flatten_matches_nn_flatten_without_layout_copies(channels_last):
    from cnnlab.layers import FlattenKeepLayout

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ref, ref_copies = _backward_map_copies(torch.nn.Flatten(), fmt)
    got, copies = _backward_map_copies(FlattenKeepLayout(), fmt)
    assert repr(FlattenKeepLayout()) == "FlattenKeepLayout(start_dim=1, end_dim=-1)"
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=0)  # the same values, bit for bit
    assert copies == 0
    if channels_last:  # what it saves: torch's flatten makes the pool's backward convert the map, and back
        assert ref_copies >= 2
