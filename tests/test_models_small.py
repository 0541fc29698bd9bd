"""The small-image zoo: simple_cnn, vgg_like, lenet5, the CIFAR ResNets and plain nets.

Truth: parameter counts from formulas written here and the papers' published figures, sizes worked out
by hand, and the residual path checked by zeroing the residual branches.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.layers import ShortcutA
from cnnlab.models import create_model
from cnnlab.models.spec import build_spec


def _nparams(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _shapes(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(v.shape) for v in model.state_dict().values()]


def _conv(k: int, c_in: int, c_out: int, bias: bool = True) -> int:
    return k * k * c_in * c_out + (c_out if bias else 0)


def _fc(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


# ------------------------------------------------------------------------------------------ simple_cnn


def test_simple_cnn():
    model = create_model("simple_cnn")
    assert _nparams(model) == _conv(3, 1, 32) + _conv(3, 32, 64) + _fc(7 * 7 * 64, 10) == 50_186
    assert model.spec == "conv3x3-32 maxpool2 conv3x3-64 maxpool2 fc10"
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    cifar = create_model("simple_cnn", in_channels=3, num_classes=100, input_size=(32, 32))
    assert _nparams(cifar) == _conv(3, 3, 32) + _conv(3, 32, 64) + _fc(8 * 8 * 64, 100)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 100)


# -------------------------------------------------------------------------------------------- vgg_like


def _vgg_params(n: int, m: int, width: int, c: int, side: int, classes: int, gap: bool) -> int:
    total, c_in = 0, c
    for i in range(m):
        for _ in range(n):
            total += _conv(3, c_in, width * 2**i)
            c_in = width * 2**i
        side //= 2
    return total + _fc(c_in * (1 if gap else side * side), classes)


@pytest.mark.parametrize("n, m, width, head", [(2, 3, 32, "flatten"), (1, 4, 8, "gap"), (3, 2, 16, "flatten")])
def test_vgg_like_counts_and_shapes(n, m, width, head):
    model = create_model("vgg_like", n=n, m=m, width=width, head=head)
    assert _nparams(model) == _vgg_params(n, m, width, 1, 28, 10, head == "gap")
    feats = model.forward_features(torch.randn(2, 1, 28, 28))
    assert feats.shape == (2, width * 2 ** (m - 1), 28 // 2**m, 28 // 2**m)
    assert [d["stride"] for d in model.feature_info] == [2**i for i in range(1, m + 1)]


def test_vgg_like_is_the_written_out_pattern():
    hand = ("conv3x3-32 conv3x3-32 maxpool2 conv3x3-64 conv3x3-64 maxpool2 "
            "conv3x3-128 conv3x3-128 maxpool2 fc10")
    model = create_model("vgg_like")
    assert model.expanded_spec == hand
    assert _shapes(model) == _shapes(build_spec(hand))


def test_vgg_like_options():
    model = create_model("vgg_like", n=1, m=2, batch_norm=True, hidden=(64,), dropout=0.5, activation="tanh")
    kinds = [type(m).__name__ for m in model.modules() if not isinstance(m, nn.Sequential)][1:]
    assert kinds == ["Conv2d", "BatchNorm2d", "Tanh", "MaxPool2d", "Conv2d", "BatchNorm2d", "Tanh", "MaxPool2d",
                     "Flatten", "Dropout", "Linear", "Tanh", "Dropout", "Linear"]
    assert model.classifier[2].in_features == 64 * 7 * 7


def test_vgg_like_validates_m_against_input():
    assert create_model("vgg_like", m=4)(torch.randn(1, 1, 28, 28)).shape == (1, 10)  # 28 -> 14 -> 7 -> 3 -> 1
    with pytest.raises(CnnlabError, match="m=5 .* m <= 4 works"):
        create_model("vgg_like", m=5)
    assert create_model("vgg_like", m=5, in_channels=3, input_size=32).feature_info[-1]["stride"] == 32
    with pytest.raises(CnnlabError, match="head must be"):
        create_model("vgg_like", head="dense")


# ---------------------------------------------------------------------------------------------- lenet5


def test_lenet5_parameter_count():
    c1, c3 = _conv(5, 1, 6), _conv(5, 6, 16)
    c5, f6, out = _fc(16 * 5 * 5, 120), _fc(120, 84), _fc(84, 10)
    assert (c1, c3, c5, f6, out) == (156, 2_416, 48_120, 10_164, 850)
    assert _nparams(create_model("lenet5")) == c1 + c3 + c5 + f6 + out == 61_706
    assert _nparams(create_model("lenet5", input_size=28)) == 61_706


@pytest.mark.parametrize("size", [32, 28])
def test_lenet5_sizes(size):
    model = create_model("lenet5", input_size=size)
    seen = {}
    for name in ("features.c1", "features.s2", "features.c3", "features.s4", "classifier.c5", "classifier.f6"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape[1:]))
    assert model(torch.randn(2, 1, size, size)).shape == (2, 10)
    assert [tuple(s) for s in seen.values()] == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (120,), (84,)]


def test_lenet5_variants_and_spec():
    classic = create_model("lenet5")
    assert sum(isinstance(m, nn.Tanh) for m in classic.modules()) == 4
    assert sum(isinstance(m, nn.AvgPool2d) for m in classic.modules()) == 2
    modern = create_model("lenet5", activation="relu", pool="max")
    assert sum(isinstance(m, nn.ReLU) for m in modern.modules()) == 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in modern.modules()) == 2
    for model, size in ((classic, 32), (modern, 32), (create_model("lenet5", input_size=28), 28)):
        twin = build_spec(model.spec, input_size=(1, size, size))
        assert _shapes(twin) == _shapes(model)
        kinds = [type(m) for m in model.modules() if not isinstance(m, (nn.Sequential, type(model)))]
        assert kinds == [type(m) for m in twin.modules() if not isinstance(m, (nn.Sequential, type(twin)))]
    with pytest.raises(CnnlabError, match="32x32 images .* got input_size=64"):
        create_model("lenet5", input_size=64)
    with pytest.raises(CnnlabError, match="pool must be"):
        create_model("lenet5", pool="min")


# ------------------------------------------------------------------------------------- CIFAR ResNets


def _resnet_cifar_params(depth: int, classes: int = 10, c: int = 3) -> int:
    """He et al. 2016 sec. 4.2 counted by hand: stem, 3 stages of n two-conv blocks (no conv biases, two
    BN params per channel), option-A shortcuts (free), fc."""
    n = (depth - 2) // 6
    total, c_in = _conv(3, c, 16, bias=False) + 2 * 16, 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += _conv(3, c_in, width, bias=False) + _conv(3, width, width, bias=False) + 2 * 2 * width
            c_in = width
    return total + _fc(64, classes)


PUBLISHED = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}  # millions, the paper's Table 6


@pytest.mark.parametrize("depth", sorted(PUBLISHED))
def test_resnet_cifar_parameter_counts(depth):
    with torch.device("meta"):  # counting needs no memory
        resnet, plain = create_model(f"resnet{depth}"), create_model(f"plain{depth}")
    count = _nparams(resnet)
    assert count == _resnet_cifar_params(depth)
    digits = 1 if PUBLISHED[depth] >= 1 else 2
    assert round(count / 1e6, digits) == PUBLISHED[depth]
    assert _nparams(plain) == count  # option A: the shortcuts add nothing
    weighted = [m for m in resnet.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == depth  # 6n + 2 layers


def test_option_a_shortcuts_are_parameter_free():
    model = create_model("resnet20")
    shortcuts = [m for m in model.modules() if isinstance(m, ShortcutA)]
    assert len(shortcuts) == 2  # entering stages 2 and 3
    assert all(not list(m.parameters()) for m in shortcuts)
    assert not any(isinstance(m, ShortcutA) for m in create_model("plain20").modules())


def _zero_residual_branches(model: nn.Module) -> None:
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(".bn2"):
                module.weight.zero_()
                module.bias.zero_()


def test_skip_connections_carry_the_signal():
    # With every residual branch silenced, a ResNet's stages pass the stem's (non-negative, post-ReLU)
    # output through the shortcuts alone: subsample by 4, zero-pad 16 -> 64 channels. A plain net gives 0.
    resnet = create_model("resnet20").eval()
    _zero_residual_branches(resnet)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stem = resnet.act1(resnet.bn1(resnet.conv1(x)))  # (2, 16, 32, 32)
        expected = torch.zeros(2, 64, 8, 8)
        expected[:, :16] = stem[:, :, ::4, ::4]
        torch.testing.assert_close(resnet.forward_features(x), expected)
        plain = create_model("plain20").eval()
        _zero_residual_branches(plain)
        assert plain.forward_features(x).abs().max() == 0


def test_skip_false_is_the_plain_net():
    torch.manual_seed(1)
    a = create_model("resnet20", skip=False).eval()
    b = create_model("plain20").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))
    with pytest.raises(CnnlabError, match="plain20 is the plain net"):
        create_model("plain20", skip=True)


def test_resnet_options():
    names = dict(create_model("resnet20").named_parameters())
    for key in ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer3.2.bn2.bias", "fc.weight"):
        assert key in names
    no_bn = create_model("resnet20", batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_bn.modules())
    assert _nparams(no_bn) == _resnet_cifar_params(20) - 2 * sum(
        m.num_features for m in create_model("resnet20").modules() if isinstance(m, nn.BatchNorm2d)
    ) + sum(m.out_channels for m in no_bn.modules() if isinstance(m, nn.Conv2d))
    tanh = create_model("plain20", activation="tanh")
    assert sum(isinstance(m, nn.Tanh) for m in tanh.modules()) == 19 and not any(
        isinstance(m, nn.ReLU) for m in tanh.modules())
    with pytest.raises(CnnlabError, match="depth 6n\\+2"):
        from cnnlab.models.resnet_cifar import ResNetCifar  # noqa: PLC0415
        ResNetCifar(depth=21)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_kaiming_init_scale(scale):
    # Measured: the std of a 64x64x3x3 conv's weights vs Kaiming normal, fan_out mode, ReLU gain sqrt(2).
    model = create_model("resnet20", init_scale=scale)
    w = model.layer3[1].conv1.weight
    expected = scale * math.sqrt(2.0 / (64 * 9))
    assert abs(w.std().item() - expected) < 0.03 * expected
    assert abs(w.mean().item()) < 0.05 * expected


def test_resnet_on_mnist_sized_input():
    model = create_model("resnet20", in_channels=1)
    x = torch.randn(2, 1, 28, 28)
    assert model.forward_features(x).shape == (2, 64, 7, 7)
    assert model(x).shape == (2, 10)


# ---- pre-activation blocks (He et al. 2016, Identity Mappings) ----------------------------------------

def test_preact_block_is_bn_act_conv_twice_then_the_sum():
    """Against a hand-written functional reference built from the block's own weights."""
    import torch.nn.functional as F  # noqa: PLC0415

    torch.manual_seed(0)
    model = create_model("resnet20", preact=True).eval()
    block = model.layer2[0]  # 16 -> 32 channels, stride 2: the option-A shortcut too
    with torch.no_grad():
        for bn in (block.bn1, block.bn2):  # non-trivial statistics, so the order of bn and act matters
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        x = torch.randn(2, 16, 16, 16)

        def bn(m, t):
            return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

        h = F.conv2d(F.relu(bn(block.bn1, x)), block.conv1.weight, None, 2, 1)
        h = F.conv2d(F.relu(bn(block.bn2, h)), block.conv2.weight, None, 1, 1)
        shortcut = torch.zeros(2, 32, 8, 8)
        shortcut[:, :16] = x[:, :, ::2, ::2]
        torch.testing.assert_close(block(x), h + shortcut)
    # printed in the order it computes: bn1, act1, conv1, bn2, act2, conv2
    names = [n for n, _ in block.named_children()]
    assert names[:6] == ["bn1", "act1", "conv1", "bn2", "act2", "conv2"]


def test_preact_shortcut_path_is_a_pure_identity():
    # Every residual branch silenced (conv2 zero, no BN): the stem conv's output reaches the end unchanged
    # except for option A (subsample by 4, zero-pad 16 -> 64), then the final activation. The plain twin gives act(0).
    torch.manual_seed(0)
    resnet = create_model("resnet20", preact=True, batch_norm=False, activation="tanh").eval()
    plain = create_model("plain20", preact=True, batch_norm=False, activation="tanh").eval()
    for m in (resnet, plain):
        with torch.no_grad():
            for name, module in m.named_modules():
                if name.endswith(".conv2"):
                    module.weight.zero_()
                    module.bias.zero_()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stem = resnet.conv1(x)
        expected = torch.zeros(2, 64, 8, 8)
        expected[:, :16] = stem[:, :, ::4, ::4]
        torch.testing.assert_close(resnet.forward_features(x), torch.tanh(expected))
        assert plain.forward_features(x).abs().max() == 0  # tanh(0)
    # without BN the pre-activation nets hold exactly the post-activation nets' parameters (same convs and fc)
    assert _nparams(resnet) == _nparams(create_model("resnet20", batch_norm=False))
    with pytest.raises(CnnlabError, match="preact must be true or false"):
        create_model("resnet20", preact="yes")
