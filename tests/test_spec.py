"""The lecture's notation: shapes and counts worked out by hand, a hand-built reference model, round trips,
the doubling pattern against its written-out form, and errors that name the token and its position."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.layers import LocallyConnected2d
from cnnlab.models import resolve_model
from cnnlab.models.spec import SpecNet, build_spec, canonical_spec, expand_spec, parse_spec

LECTURE = "conv3x3-32 maxpool2 conv3x3-64 maxpool2 fc10"


def _nparams(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _conv_params(k: int, c_in: int, c_out: int) -> int:
    return (k * k * c_in + 1) * c_out


# ------------------------------------------------------------------------------ the lecture's typical CNN


def test_lecture_cnn_shapes_by_hand():
    model = build_spec(LECTURE, input_size=(1, 28, 28))
    seen = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.Linear)):
            module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape[1:])))
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    # 28x28x1 -> 28x28x32 -> 14x14x32 -> 14x14x64 -> 7x7x64 -> 10
    assert list(seen.values()) == [(32, 28, 28), (32, 14, 14), (64, 14, 14), (64, 7, 7), (10,)]
    assert list(seen) == ["features.0", "features.2", "features.3", "features.5", "classifier.1"]


def test_lecture_cnn_parameter_count():
    expected = _conv_params(3, 1, 32) + _conv_params(3, 32, 64) + (7 * 7 * 64 + 1) * 10
    assert expected == 320 + 18_496 + 31_370 == 50_186
    assert _nparams(build_spec(LECTURE, input_size=(1, 28, 28))) == expected


def test_lecture_cnn_equals_hand_written_model():
    ref = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 7 * 64, 10),
    )
    model = build_spec(LECTURE)
    ref_params = [p for p in ref.parameters()]
    assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in ref_params]
    with torch.no_grad():
        for p, q in zip(model.parameters(), ref_params, strict=True):
            p.copy_(q)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(model(x), ref(x))


def test_handles():
    model = build_spec(LECTURE)
    x = torch.randn(2, 1, 28, 28)
    feats = model.forward_features(x)
    assert feats.shape == (2, 64, 7, 7)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 7 * 7 * 64)
    assert model.get_classifier() is model.classifier[1]
    assert model.feature_info == [
        {"name": "features.2", "channels": 32, "stride": 2},
        {"name": "features.5", "channels": 64, "stride": 4},
    ]
    assert model.num_classes == 10 and isinstance(model, SpecNet)


def test_resolve_model_builds_specs():
    model, size = resolve_model(LECTURE, input_size=(1, 28, 28), num_classes=10)
    assert size == (1, 28, 28) and _nparams(model) == 50_186


# --------------------------------------------------------------------------------- layers and options


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
def test_padding_defaults():
    # stride 1: "same"; stride s: padding (k-1)//2, i.e. ceil(H/s) for odd k
    cases = {"conv3x3-4": (28, 28), "conv5x5-4": (28, 28), "conv4x4-4": (28, 28), "conv3x3-4/s2": (14, 14),
             "conv5x5-4/s2": (14, 14), "conv3x3-4/valid": (26, 26), "conv3x3-4/p2": (30, 30),
             "conv3x3-4/d2": (28, 28), "conv3x3-4/d2/valid": (24, 24), "conv1x3-4": (28, 28),
             "maxpool3/s1/p1": (28, 28), "avgpool3": (9, 9), "maxpool2/s1": (27, 27), "local3x3-4/p1": (28, 28)}
    for spec, hw in cases.items():
        model = build_spec(spec, input_size=(1, 28, 28))
        assert model(torch.randn(1, 1, 28, 28)).shape[2:] == hw, spec
    odd = build_spec("conv3x3-4/s2", input_size=(1, 27, 27))
    assert odd(torch.randn(1, 1, 27, 27)).shape[2:] == (14, 14)


def test_batch_norm_option_and_activation_tokens():
    model = build_spec("tanh conv3x3-8/bn maxpool2 fc16 dropout0.5 fc10")
    kinds = [type(m).__name__ for m in model.modules() if not isinstance(m, (nn.Sequential, SpecNet))]
    assert kinds == ["Conv2d", "BatchNorm2d", "Tanh", "MaxPool2d", "Flatten", "Linear", "Tanh", "Dropout", "Linear"]
    assert model.features[0].bias is None  # the batch norm's shift replaces it
    assert model.classifier[3].p == 0.5
    # the last fc is the classifier: no activation after it
    assert isinstance(model.classifier[-1], nn.Linear)


def test_pool_option_pools_between_conv_and_its_activation():
    """Without batch norm `conv/pool2` computes what `conv maxpool2` does (max commutes with a rising
    activation: independent truth, checked with the same weights); with /bn the order is conv, pool, bn, act."""
    torch.manual_seed(0)
    for act in ("relu", "tanh", "sigmoid"):
        fused, plain = build_spec(f"{act} conv3x3-8/pool2 fc10"), build_spec(f"{act} conv3x3-8 maxpool2 fc10")
        assert _shapes(fused) == _shapes(plain)
        fused.load_state_dict(plain.state_dict())
        x = torch.randn(4, 1, 28, 28)
        torch.testing.assert_close(fused(x), plain(x))
    model = build_spec("(conv3x3-8/bn conv3x3-8/bn/pool2)*2/double fc10")
    assert model.spec == "(conv3x3-8/bn conv3x3-8/pool2/bn)*2/double fc10"
    kinds = [type(m).__name__ for m in model.features]
    assert kinds[:7] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    assert model.features[5].num_features == 8
    assert [(f["name"], f["stride"]) for f in model.feature_info] == [("features.6", 2), ("features.13", 4)]
    assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.forward_features(torch.randn(2, 1, 28, 28)).shape == (2, 16, 7, 7)
    odd = build_spec("conv3x3-4/pool3 fc10", input_size=(1, 7, 7))  # sizes round down, as maxpool3's
    assert odd.forward_features(torch.randn(1, 1, 7, 7)).shape[2:] == (2, 2)


def test_gap_bn_on_vectors_and_local_layers():
    model = build_spec("local3x3-8 gap bn fc10", input_size=(1, 10, 10))
    assert isinstance(model.features[0], LocallyConnected2d)
    assert isinstance(model.classifier[2], nn.BatchNorm1d)
    # 10x10 "same" local layer: 100 positions x (8x1x3x3 weights + 8 untied biases)
    assert _nparams(model.features) == 10 * 10 * 8 * 9 + 8 * 10 * 10
    assert model.eval()(torch.randn(2, 1, 10, 10)).shape == (2, 10)


def test_spec_without_fc():
    model = build_spec("conv3x3-8 conv3x3-8", input_size=(3, 12, 12))
    assert model.num_classes == 0
    assert model(torch.randn(2, 3, 12, 12)).shape == (2, 8, 12, 12)
    model.reset_classifier(5)
    assert model.spec == "conv3x3-8 conv3x3-8 fc5" and model(torch.randn(2, 3, 12, 12)).shape == (2, 5)
    assert _shapes(model) == _shapes(build_spec(model.spec, input_size=(3, 12, 12)))


def test_reset_classifier_updates_spec():
    model = build_spec("(conv3x3-8 maxpool2)*2/double fc32 fc10 softmax")
    model.reset_classifier(3)
    assert model.spec == "(conv3x3-8 maxpool2)*2/double fc32 fc3"
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3) and model.num_classes == 3
    inside = build_spec("conv3x3-8 fc10*2")  # the classifier inside a repetition: written out
    inside.reset_classifier(4)
    assert inside.spec == "conv3x3-8 fc10 fc4"
    with pytest.raises(CnnlabError, match="positive integer"):
        inside.reset_classifier(0)


def test_parse_spec_positions():
    layers = parse_spec("(conv3x3-32*2 maxpool2)*2 fc10")
    assert [(layer.kind, layer.position) for layer in layers] == [
        ("conv", 1), ("conv", 1), ("maxpool", 2), ("conv", 1), ("conv", 1), ("maxpool", 2), ("fc", 3)]


# ------------------------------------------------------------------------- repetition and round trips


def test_doubling_pattern_equals_hand_expansion():
    hand = ("conv3x3-32 conv3x3-32 maxpool2 conv3x3-64 conv3x3-64 maxpool2 "
            "conv3x3-128 conv3x3-128 maxpool2 fc10")
    model = build_spec("(conv3x3-32*2 maxpool2)*3/double fc10")
    assert _shapes(model) == _shapes(build_spec(hand))
    assert model.expanded_spec == hand
    assert model.spec == "(conv3x3-32*2 maxpool2)*3/double fc10"


def test_nested_groups():
    model = build_spec("((conv3x3-4 maxpool2)*2/double conv1x1-8)*2 fc10", input_size=(1, 32, 32))
    hand = "conv3x3-4 maxpool2 conv3x3-8 maxpool2 conv1x1-8 conv3x3-4 maxpool2 conv3x3-8 maxpool2 conv1x1-8 fc10"
    assert model.expanded_spec == hand
    assert _shapes(model) == _shapes(build_spec(hand, input_size=(1, 32, 32)))


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("Conv3x3-32 RELU maxpool2/s2 conv3x3-64/p1/s1/d1 maxpool2 fc10 softmax", LECTURE),
        ("conv3x3-32, maxpool2, fc10", "conv3x3-32 maxpool2 fc10"),
        ("(conv3x3-8)*3 (maxpool2)*1 fc10", "conv3x3-8*3 maxpool2 fc10"),
        ("( conv3x3-8*2 ( conv3x3-8 )*2 )*2 fc10", "(conv3x3-8*2 conv3x3-8*2)*2 fc10"),
        ("relu tanh conv5x5-6/p0 avgpool2 fc10", "tanh conv5x5-6/valid avgpool2 fc10"),
        ("tanh conv3x3-8 tanh relu fc16 fc10", "tanh conv3x3-8 relu fc16 fc10"),
        ("conv3x3-8/bn/s2 dropout.5 fc10", "conv3x3-8/s2/bn dropout0.5 fc10"),
        ("conv3x3-8/bn/pool2 conv3x3-8/POOL3/s2", "conv3x3-8/pool2/bn conv3x3-8/s2/pool3"),
        ("conv3x3-8/s2/p1 conv4x4-8/s2/p1 conv2x2-8/p0 conv2x2-8/p1", "conv3x3-8/s2 conv4x4-8/s2 conv2x2-8/valid conv2x2-8/p1"),
    ],
)
def test_canonical_form(text, canonical):
    assert canonical_spec(text) == canonical
    model = build_spec(text)
    assert model.spec == canonical
    assert _shapes(build_spec(canonical)) == _shapes(model)


_TOKENS = ["conv3x3-4", "conv1x1-4/bn", "conv3x3-2/s2", "local3x3-2/p1", "maxpool2", "avgpool3/s1/p1",
           "bn", "dropout0.25", "tanh", "relu", "gelu"]


@st.composite
def _specs(draw):
    """Random valid specs for a 1x8x8 input: at most two halvings, groups with and without doubling."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        toks = draw(st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=3))
        toks = [t for t in toks if "s2" not in t and "maxpool2" not in t] or ["conv1x1-2"]
        if draw(st.booleans()):
            parts.append(f"({' '.join(toks)})*{draw(st.integers(1, 2))}{draw(st.sampled_from(['', '/double']))}")
        else:
            parts.extend(toks)
    parts.insert(draw(st.integers(0, len(parts))), draw(st.sampled_from(["maxpool2", "conv3x3-2/s2", "conv3x3-2/bn/pool2", "bn"])))
    parts.append(draw(st.sampled_from(["fc3", "gap fc3", "fc5 fc3", "gap", ""])))
    return "conv3x3-4 " + " ".join(parts)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_specs())
def test_round_trip_property(text):
    try:
        model = build_spec(text, input_size=(1, 8, 8))
    except CnnlabError as e:  # a random activation token may apply to nothing: that must be the reason
        assert "applies to no layer" in str(e)
        return
    again = build_spec(model.spec, input_size=(1, 8, 8))
    assert again.spec == model.spec
    assert again.expanded_spec == model.expanded_spec
    assert _shapes(again) == _shapes(model)
    assert _shapes(build_spec(model.expanded_spec, input_size=(1, 8, 8))) == _shapes(model)
    assert expand_spec(text) == model.expanded_spec
    features = model.eval().forward_features(torch.randn(2, 1, 8, 8))
    assert model.feature_info[-1]["channels"] == features.shape[1]


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "text, message",
    [
        ("conv3x3-32 maxpoool2", "unknown layer 'maxpoool2' at token 2 of the spec (did you mean 'maxpool2'?)"),
        ("conv3x3-32 rleu fc10", "unknown layer 'rleu' at token 2 of the spec (did you mean 'relu'?)"),
        ("conv3x-32 fc10", "bad conv layer 'conv3x-32' at token 1 of the spec; write conv<k>x<k>-<channels>"),
        ("conv3x3-0", "the channel count must be at least 1 in 'conv3x3-0' at token 1"),
        ("fc10 dropout1.5", "bad dropout 'dropout1.5' at token 2"),
        ("conv3x3-8/q2 fc10", "unknown option '/q2' in 'conv3x3-8/q2' at token 1 of the spec; its options are /s<n>"),
        ("maxpool2/bn", "unknown option '/bn' in 'maxpool2/bn' at token 1"),
        ("conv3x3-8/s2/s3", "option '/s3' given twice"),
        ("conv3x3-8 softmax fc10", "softmax may only be the last token, not 'softmax' at token 2"),
        ("conv3x3-8 fc10 maxpool2", "layer 'maxpool2' at token 3 of the spec comes after the classifier 'fc10' at token 2"),
        ("conv3x3-8 maxpool2*4 maxpool2 fc10", "layer 'maxpool2' at token 3 of the spec shrinks the 1x1 map below 1x1"),
        ("conv3x3-8/valid*14 fc10", "layer 'conv3x3-8/valid' at token 1 of the spec shrinks the 2x2 map below 1x1"),
        ("(conv3x3-8 maxpool2 fc10", "unclosed '(' at token 1 of the spec"),
        ("conv3x3-8 maxpool2) fc10", "')' closes no group in 'maxpool2)' at token 2"),
        ("(conv3x3-8)*2/triple fc10", "bad group ending"),
        ("conv3x3-8*0 fc10", "the repeat count must be at least 1 in 'conv3x3-8*0' at token 1"),
        ("conv3x3-8 tanh fc10", "activation 'tanh' at token 2 of the spec applies to no layer"),
        ("gap conv3x3-8 fc10", "layer 'conv3x3-8' at token 2 of the spec comes after 'gap' at token 1"),
        ("local2x2-4 fc10", "even kernel"),
        ("maxpool3/p2", "padding larger than half the pool size"),
        ("conv3x3-8/pool1 fc10", "the pool size must be at least 2 in 'conv3x3-8/pool1' at token 1"),
        ("conv3x3-8/pool fc10", "unknown option '/pool' in 'conv3x3-8/pool'"),
        ("conv3x3-8/pool32 fc10", "'conv3x3-8/pool32' at token 1 of the spec max-pools its 28x28 output below 1x1"),
        ("", "a spec must be a non-empty string"),
    ],
)
def test_errors_name_token_and_position(text, message):
    with pytest.raises(CnnlabError) as e:
        build_spec(text, input_size=(1, 28, 28))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_num_classes_checks():
    assert build_spec(LECTURE, num_classes=10).num_classes == 10
    with pytest.raises(CnnlabError, match="num_classes=5 differs from the classifier 'fc10' at token 5"):
        build_spec(LECTURE, num_classes=5)
    with pytest.raises(CnnlabError, match="has no fc layer"):
        build_spec("conv3x3-8 maxpool2", num_classes=10)
    with pytest.raises(CnnlabError, match="input_size must be three positive integers"):
        build_spec(LECTURE, input_size=(28, 28))


@pytest.mark.slow  # a fresh interpreter imports torch: ~5 s on 2 busy cores
def test_cli_reports_spec_error_in_one_line():
    proc = run_cli("summary", "conv3x3-32 maxpoool2 fc10", "--input", "1x28x28")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'maxpoool2' at token 2" in lines[0] and "did you mean 'maxpool2'" in lines[0]
