"""AlexNet, VGG, ResNet and GoogLeNet against published numbers and against torchvision itself.

Truth here is external: the parameter counts published by torchvision and the papers, torchvision's
own models (built on the meta device when only shapes matter, which costs nothing), the papers'
layer tables for the arithmetic of variants, and the initialisation formulas.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models, model_info
from cnnlab.models.vgg import VGG, make_layers

VGGS = [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
RESNETS = [f"resnet{d}" for d in (18, 34, 50, 101, 152)]
ALL = ["alexnet", *VGGS, *RESNETS, "googlenet"]

# torchvision's published `num_params` (its weights' metadata) at 1000 classes.
PUBLISHED = {
    "alexnet": 61_100_840,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "resnet50": 25_557_032,
    "resnet152": 60_192_808,
    "googlenet": 6_624_904,  # without the auxiliary classifiers
}


def _torchvision(name: str, **kwargs) -> nn.Module:
    if name == "googlenet":
        kwargs.setdefault("aux_logits", False)  # ours has none by default
        kwargs.setdefault("init_weights", True)  # silences torchvision's FutureWarning
    return getattr(torchvision.models, name)(**kwargs)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def test_all_registered_with_imagenet_defaults():
    assert set(ALL) <= set(list_models())
    for name in ALL:
        info = model_info(name)
        assert (info.input_size, info.num_classes) == ((3, 224, 224), 1000)


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_count_equals_published(name):
    with torch.device("meta"):
        model = create_model(name)
    assert _count(model) == PUBLISHED[name]


# (our name, our options, torchvision's options): same architecture, so same keys and counts.
VARIANTS = [(n, {}, {}) for n in ALL] + [
    ("googlenet", {"aux_logits": True}, {"aux_logits": True}),
    ("resnet50", {"num_classes": 10}, {"num_classes": 10}),
    ("vgg16_bn", {"num_classes": 10}, {"num_classes": 10}),
]


@pytest.mark.parametrize(("name", "ours_kw", "tv_kw"), VARIANTS)
def test_count_and_state_dict_keys_equal_torchvision(name, ours_kw, tv_kw):
    with torch.device("meta"):
        ours = create_model(name, **ours_kw)
        ref = _torchvision(name, **tv_kw)
    assert _count(ours) == _count(ref)
    assert _shapes(ours) == _shapes(ref)  # names, shapes and order, buffers included


def _randomise_batchnorm(model: nn.Module) -> None:
    """Give every BN layer non-trivial statistics and affine parameters, so eps and order matter."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def _assert_same_outputs(name: str, size: int = 64, ours_kw=None, tv_kw=None) -> None:
    ref = _torchvision(name, **(tv_kw or {})).eval()
    _randomise_batchnorm(ref)
    ours = create_model(name, **(ours_kw or {})).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = ref(x)
        got = ours(x)
    assert expected.abs().max() > 1e-3  # a meaningful comparison, not two near-zero tensors
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


FAST_OUTPUT_CHECK = ["alexnet", "vgg11_bn", "resnet18", "resnet50", "googlenet"]


@pytest.mark.parametrize("name", FAST_OUTPUT_CHECK)
def test_torchvision_weights_give_same_outputs(name):
    # 64x64 is the smallest size every one of these accepts (AlexNet needs 63).
    _assert_same_outputs(name)


@pytest.mark.slow
# The other depths differ from the fast ones only in their config (key equality above covers that);
# building two VGGs costs seconds, so only the famous VGG-16 and the deepest ResNet of each block run.
@pytest.mark.parametrize("name", ["vgg16", "resnet34", "resnet152"])
def test_torchvision_weights_give_same_outputs_other_depths(name):
    _assert_same_outputs(name, size=32 if name.startswith("vgg") else 64)


def test_googlenet_transform_input_matches_torchvision():
    _assert_same_outputs("googlenet", ours_kw={"transform_input": True}, tv_kw={"transform_input": True})


def test_googlenet_aux_heads_match_torchvision():
    ref = _torchvision("googlenet", aux_logits=True)
    _randomise_batchnorm(ref)
    ours = create_model("googlenet", aux_logits=True)
    ours.load_state_dict(ref.state_dict(), strict=True)  # the full published checkpoint's layout
    ours.eval()
    ref.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert ours(x).shape == (2, 1000)  # eval: the logits alone
        features = torch.randn(2, 512, 4, 4)
        torch.testing.assert_close(ours.aux1(features), ref.aux1(features), rtol=1e-5, atol=1e-5)
        features = torch.randn(2, 528, 4, 4)
        torch.testing.assert_close(ours.aux2(features), ref.aux2(features), rtol=1e-5, atol=1e-5)
    # training mode: (logits, aux_logits2, aux_logits1), torchvision's order; same seed, same dropout masks
    ours.train()
    ref.train()
    torch.manual_seed(1)
    out = ours(x)
    torch.manual_seed(1)
    expected = ref(x)
    assert out._fields == ("logits", "aux_logits2", "aux_logits1")
    assert [tuple(t.shape) for t in out] == [(2, 1000)] * 3
    for got, want in zip(out, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    ours.reset_classifier(5)
    ours.train()
    assert [tuple(t.shape) for t in ours(x)] == [(2, 5)] * 3


# First convolution of each family: (out channels, kernel size), from the papers / torchvision.
FIRST_CONV = {"alexnet": (64, 11), "vgg11": (64, 3), "resnet18": (64, 7), "googlenet": (64, 7)}


@pytest.mark.parametrize("name", FIRST_CONV)
def test_in_channels_changes_only_the_first_conv(name):
    out_channels, k = FIRST_CONV[name]
    with torch.device("meta"):
        rgb = create_model(name)
        gray = create_model(name, in_channels=1)
        y = gray(torch.empty(2, 1, 64, 64))
    # two input channels fewer: 2 * k * k weights fewer per filter; biases do not depend on inputs
    assert _count(rgb) - _count(gray) == 2 * k * k * out_channels
    assert y.shape == (2, 1000)
    first = next(m for m in gray.modules() if isinstance(m, nn.Conv2d))
    assert first.weight.shape == (out_channels, 1, k, k)


# Table 1 of the GoogLeNet paper: (#5x5 reduce, #5x5) of the nine Inception modules.
PAPER_5X5 = [(16, 32), (32, 96), (16, 48), (24, 64), (24, 64), (32, 64), (32, 128), (32, 128), (48, 128)]


def test_googlenet_paper_5x5_adds_the_expected_weights():
    with torch.device("meta"):
        tv_like = create_model("googlenet")
        paper = create_model("googlenet", paper_5x5=True)
        y = paper(torch.empty(2, 3, 64, 64))
    # each module's second conv in branch 3 grows from 3x3 to 5x5 kernels: 25 - 9 = 16 weights more
    # per (input, output) channel pair; BN and the other branches are unchanged
    expected = sum((25 - 9) * red * out for red, out in PAPER_5X5)
    assert expected == 380_928
    assert _count(paper) - _count(tv_like) == expected
    assert paper.inception3a.branch3[1].conv.kernel_size == (5, 5)
    assert y.shape == (2, 1000)


def test_vgg16_transfer_cut_points():
    with torch.device("meta"), torch.no_grad():
        model = create_model("vgg16")
        x = torch.empty(1, 3, 224, 224)
        pool5 = model.forward_features(x)
        fc6 = model.classifier[:2](torch.flatten(model.avgpool(pool5), 1))
    assert tuple(pool5.shape) == (1, 512, 7, 7) and pool5[0].numel() == 25_088
    assert model.feature_info[-1]["name"] == "features.30"
    assert isinstance(model.get_submodule("features.30"), nn.MaxPool2d)
    assert isinstance(model.get_submodule("classifier.1"), nn.ReLU)
    assert tuple(fc6.shape) == (1, 4096)
    with torch.device("meta"):
        assert create_model("vgg16_bn").feature_info[-1]["name"] == "features.43"


@pytest.mark.parametrize(
    ("batch_norm", "pool_names"),
    [(False, ["features.2", "features.5"]), (True, ["features.3", "features.7"])],  # conv [bn] relu pool
)
def test_make_layers_names_the_pools(batch_norm, pool_names):
    features, info = make_layers([64, "M", 128, "M"], batch_norm=batch_norm, in_channels=1)
    assert [d["name"] for d in info] == pool_names
    assert [(d["channels"], d["stride"]) for d in info] == [(64, 2), (128, 4)]
    assert all(isinstance(features.get_submodule(n.split(".", 1)[1]), nn.MaxPool2d) for n in pool_names)
    assert features(torch.randn(2, 1, 8, 8)).shape == (2, 128, 2, 2)


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ([64, "X", 512, "M"], "'X'"),
        ([0, 512, "M"], "got 0"),
        ([True, 512, "M"], "got True"),
        ([64, "M", 256, "M"], "512 filters"),
    ],
)
def test_vgg_refuses_bad_configs(cfg, needle):
    with pytest.raises(CnnlabError, match=needle), torch.device("meta"):
        VGG(cfg)


def test_resnet_init_follows_he_fan_out():
    model = create_model("resnet18")
    w = model.layer3[0].conv2.weight  # 256 filters of 256 x 3 x 3
    expected_std = math.sqrt(2.0 / (256 * 3 * 3))  # He et al. 2015, mode fan_out
    assert abs(w.std().item() / expected_std - 1) < 0.02
    assert torch.all(model.layer3[0].bn2.weight == 1) and torch.all(model.layer3[0].bn2.bias == 0)


def test_googlenet_init_is_truncated_normal():
    model = create_model("googlenet")
    w = model.inception4c.branch2[1].conv.weight  # 256 x 128 x 3 x 3: ~295k samples
    assert abs(w.std().item() / 0.01 - 1) < 0.02
    assert abs(w.mean().item()) < 1e-4


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zero_init_residual_makes_blocks_identity(name):
    model = create_model(name, zero_init_residual=True).eval()
    block = model.layer2[1]  # no projection shortcut: relu(F(x) + x) with F(x) = 0 is x for x >= 0
    x = torch.rand(2, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)
        assert not torch.allclose(create_model(name).eval().layer2[1](x), x)


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("googlenet", {"in_channels": 1, "transform_input": True}, "in_channels=3"),
        ("googlenet", {"paper_5x5": "yes"}, "paper_5x5"),
        ("resnet18", {"groups": 32}, "no option 'groups'; options: num_classes, in_channels, zero_init_residual"),
        ("vgg16_bn", {"dropuot": 0.1}, "did you mean 'dropout'"),
        ("googlenet", {"aux": True}, "aux_logits"),
        ("resnet50", {"zero_init_residual": 1}, "True or False"),
        ("alexnet", {"dropout": 1.0}, "dropout"),
        ("googlenet", {"dropout": -0.1}, "dropout"),
    ],
)
def test_bad_options_raise_cnnlab_error(name, options, needle):
    with pytest.raises(CnnlabError, match=needle), torch.device("meta"):
        create_model(name, **options)


def test_vgg_bad_dropout_is_refused_before_building():
    # dropout is validated first, so the error comes without building 138 M parameters
    with pytest.raises(CnnlabError, match=r"dropout must be in \[0, 1\), got 1.5"):
        create_model("vgg16", dropout=1.5)


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "resnet18", "googlenet"])
def test_reset_classifier_refuses_nonpositive(name):
    with torch.device("meta"):
        model = create_model(name)
    with pytest.raises(CnnlabError, match="positive integer"):
        model.reset_classifier(0)
