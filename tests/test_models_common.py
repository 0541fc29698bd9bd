"""Every registered model honours the `ConvNet` contract, checked on real tensors.

Parametrised over `cnnlab.list_models()`, so models registered later are checked too. Truth is measured,
not taken from the code under test: feature_info strides are measured by running the features at two
input sizes, channels by hooking the named modules, gradients by a real backward pass.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from cnnlab.models import ConvNet, create_model, list_models, model_info

BIG = 20_000_000  # parameters; building a model this big on the CPU costs seconds on 2 cores


def _num_params_meta(name: str) -> int:
    """Parameter count without allocating memory (the meta device stores shapes only)."""
    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


@functools.cache
def _spatial_size(name: str) -> tuple[int, int]:
    """The model's default (H, W); for the ImageNet nets, which pool adaptively, the smallest of 32 and 64
    that runs (probed on the meta device, which checks shapes without computing)."""
    c, h, w = model_info(name).input_size
    if h <= 64 and w <= 64:
        return h, w
    for s in (32, 64):
        try:
            with torch.device("meta"), torch.no_grad():
                create_model(name).eval()(torch.empty(2, c, s, s))
            return s, s
        except RuntimeError:  # too small: a pooling output would be empty
            continue
    return h, w


def _input_size(name: str, in_channels: int | None = None) -> tuple[int, int, int]:
    return (in_channels or model_info(name).input_size[0], *_spatial_size(name))


@pytest.fixture(scope="module", params=list_models())
def built(request) -> tuple[str, ConvNet, torch.Tensor, torch.Tensor]:
    """`(name, model in eval mode, input batch, its output)`, built once per name and shared by the
    tests below: pytest runs all tests of one parameter before building the next model."""
    name = request.param
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(2, *_input_size(name))
    with torch.no_grad():
        out = model(x)
    return name, model, x, out


def test_is_convnet_with_expected_output_shape(built):
    name, model, _, out = built
    assert isinstance(model, ConvNet)
    assert out.shape == (2, model_info(name).num_classes)
    assert model.num_classes == model_info(name).num_classes
    assert torch.isfinite(out).all()


def test_forward_is_head_of_features(built):
    _, model, x, out = built
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.ndim == 4  # (N, C, H, W): before global pooling
        torch.testing.assert_close(model.forward_head(features), out, rtol=1e-6, atol=1e-6)
        # pre_logits is exactly what the classifier reads
        pre = model.forward_head(features, pre_logits=True)
        assert pre.ndim == 2 and pre.shape[0] == 2
        torch.testing.assert_close(model.get_classifier()(pre), out, rtol=1e-6, atol=1e-6)
    if isinstance(model.get_classifier(), nn.Linear):
        assert pre.shape[1] == model.get_classifier().in_features


def test_traces_with_torch_fx(built):
    """torchvision's feature extraction (create_feature_extractor) and other graph tools trace with fx."""
    _, model, x, out = built
    graph = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), out, rtol=0, atol=0)


def _hook_shapes(model: ConvNet, x: torch.Tensor, names: list[str], tolerate: bool) -> dict[str, torch.Size]:
    """Output shapes of the named modules during `forward_features(x)`."""
    shapes: dict[str, torch.Size] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape))
        for n in names
    ]
    try:
        model.forward_features(x)
    except RuntimeError:
        if not tolerate:
            raise
        # A model whose later layers need its native size (flatten + Linear) may fail at the larger
        # input after the hooked stages already ran; the stages that ran are still measured.
        pass
    finally:
        for h in handles:
            h.remove()
    return shapes


def test_feature_info_matches_hooked_shapes(built):
    _, model, x, _ = built
    info = model.feature_info
    assert len(info) >= 1
    names = [d["name"] for d in info]
    strides = [d["stride"] for d in info]
    assert strides == sorted(strides), "stages must be listed from input to output"
    with torch.no_grad():
        small = _hook_shapes(model, x, names, tolerate=False)
        # Growing the input by a multiple of a stage's true stride grows its map by exactly
        # delta / stride, whatever the padding and rounding: this measures the stride. 64 is a
        # multiple of every stride up to 64, so a wrong claim (say 16 for 32) cannot pass.
        delta = 64 * math.ceil(max(strides) / 64)
        big_x = torch.randn(2, x.shape[1], x.shape[2] + delta, x.shape[3] + delta)
        big = _hook_shapes(model, big_x, names, tolerate=True)
    h, w = x.shape[2:]
    for d in info:
        shape = small[d["name"]]
        assert shape[1] == d["channels"], d
        if d["name"] in big:
            dh, dw = big[d["name"]][2] - shape[2], big[d["name"]][3] - shape[3]
            assert (dh * d["stride"], dw * d["stride"]) == (delta, delta), d
        else:
            assert (h / shape[2], w / shape[3]) == (d["stride"], d["stride"]), d


def test_gradients_reach_every_parameter(built):
    # Reuses the shared model (building a VGG costs seconds); it is put back in eval mode with no
    # gradients afterwards, and the read-only tests above do not depend on the BN statistics this updates.
    _, model, x, _ = built
    model.train()
    try:
        out = model(x)
        # a random linear loss: every logit matters, none by the same amount
        loss = (out * torch.randn_like(out)).sum()
        loss.backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert no_grad == []
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize("name", list_models())
def test_in_channels_and_reset_classifier(name):
    # Big models run on the meta device: it executes the real forward code and checks every shape
    # (a first conv still expecting 3 channels fails there too) without a second costly build.
    device = "meta" if _num_params_meta(name) > BIG else "cpu"
    with torch.device(device), torch.no_grad():
        model = create_model(name, in_channels=1).eval()
        x = torch.randn(2, *_input_size(name, in_channels=1))
        assert model(x).shape == (2, model_info(name).num_classes)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)
    assert model.num_classes == 7
