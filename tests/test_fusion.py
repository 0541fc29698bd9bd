"""`cnnlab.fuse` (cnnlab.layers.fusion): every zoo model with `ReLU -> MaxPool2d(2, 2)` pairs gives the same
outputs and gradients fused as unfused, bit for bit; the truth is PyTorch running the unfused model's
modules in their printed order. Fused models print what they run, keep their state_dict keys, and go
through torch.fx, torch.export, torch.compile and torch.func by PyTorch's own mechanisms; `create_model`
gives plain PyTorch."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import cnnlab
from cnnlab.layers import FlattenKeepLayout, MaxPool2x2, ReLUMaxPool2x2, _native, fuse
from cnnlab.layers.maxpool2x2 import load_kernel
from cnnlab.models import create_model, list_models
from cnnlab.models.spec import build_spec
from cnnlab.models.vgg import CFGS, make_layers

SIMD = load_kernel() and _native.simd_loaded()
needs_simd = pytest.mark.skipif(not SIMD, reason="the kernel runs only where its AVX-512 or AVX2 loops do")
_FUSED_TYPES = (ReLUMaxPool2x2, MaxPool2x2, FlattenKeepLayout)


def _fusable() -> list[str]:
    """Registered models in which fuse finds a ReLU -> 2x2 max-pool pair (built on the meta device)."""
    names = []
    for name in list_models():
        with torch.device("meta"):
            fused = fuse(create_model(name))
        if any(isinstance(m, ReLUMaxPool2x2) for m in fused.modules()):
            names.append(name)
    return names


def _build(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """A small version of the model: VGG's convolutional part as VGG builds it (its fc layers hold 120 M
    parameters and no pool); the others whole."""
    if name.startswith("vgg") and name != "vgg_like":
        return make_layers(CFGS[name.removesuffix("_bn")], batch_norm=name.endswith("_bn"))[0], (3, 32, 32)
    return create_model(name), (1, 28, 28)


def _tied(model: nn.Module) -> nn.Module:
    """Weights on a coarse grid: with integer inputs, sums are exact and windows hold many equal maxima."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-2, 3, p.shape) / 4)
    return model


def _step(model: nn.Module, x: torch.Tensor, bf16: bool):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.profiler.profile() as prof:
        out = model(x)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad, [p.grad for p in model.parameters()], [e.name for e in prof.events()]


def test_the_zoo_models_with_pairs_are_found():
    assert {"simple_cnn", "vgg_like", "vgg11", "vgg16_bn", "vgg19"} <= set(_fusable())


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32-nchw", "bf16-channels_last"])
@pytest.mark.parametrize("name", [*_fusable(), "conv/pool2/bn spec"])
def test_fused_models_compute_what_the_unfused_ones_do_bit_for_bit(name, bf16):
    if name == "conv/pool2/bn spec":  # the fashion-mnist-94 recipe's layers: lone pools before batch norm
        plain, size = build_spec("(conv3x3-32/bn conv3x3-32/pool2/bn)*2/double fc10", input_size=(1, 16, 16)), (1, 16, 16)
    else:
        plain, size = _build(name)
    plain = _tied(plain)
    if bf16:
        plain = plain.to(memory_format=torch.channels_last)
    fused = fuse(plain)
    assert sum(isinstance(m, (ReLUMaxPool2x2, MaxPool2x2)) for m in fused.modules()) >= 2
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    x = torch.randint(-2, 3, (3, *size)).float().contiguous(memory_format=fmt)
    out, xg, grads, names = _step(fused, x, bf16)
    ref_out, ref_xg, ref_grads, ref_names = _step(plain, x, bf16)
    assert not any(n.startswith("cnnlab::") for n in ref_names)  # the truth is plain PyTorch
    if bf16 and _native.simd_level() == 2:  # bf16 runs the kernel only with AVX-512
        assert "cnnlab::max_pool2x2" in names  # the kernel ran, at least where the channels allow
    assert (ref_out != 0).any()
    assert torch.equal(out, ref_out)
    assert torch.equal(xg, ref_xg)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.equal(g, r)


def test_state_dict_keys_stay_and_the_printout_shows_the_fused_modules():
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        assert list(fuse(model).state_dict()) == list(model.state_dict()), name
    plain = create_model("simple_cnn")
    fused = cnnlab.fuse(plain)
    assert fused is not plain and not any(isinstance(m, _FUSED_TYPES) for m in plain.modules())  # a copy by default
    text = str(fused)
    assert "(1): Identity()" in text and "(2): ReLUMaxPool2x2(kernel_size=2, stride=2)" in text
    assert "(0): FlattenKeepLayout(start_dim=1, end_dim=-1)" in text
    assert "ReLUMaxPool2x2" in str(cnnlab.summary(fused, (1, 28, 28)))
    fused.load_state_dict(create_model("simple_cnn").state_dict())  # weights move both ways
    assert fuse(fused, inplace=True) is fused and str(fused) == text  # in place, and fusing twice changes nothing


def test_pools_that_are_not_2x2_and_observed_modules_stay():
    pools = [nn.MaxPool2d(3, 2), nn.MaxPool2d(2, 1), nn.MaxPool2d(2, padding=1), nn.MaxPool2d(2, ceil_mode=True),
             nn.MaxPool2d(2, return_indices=True), nn.MaxPool2d(2, dilation=2)]
    for pool in pools:
        seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), pool)
        assert str(fuse(seq)) == str(seq)
    model = create_model("simple_cnn")
    model.features[1].register_forward_hook(lambda m, i, o: None)  # someone reads the ReLU's output
    kinds = [type(m).__name__ for m in fuse(model).features]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2x2", "Conv2d", "Identity", "ReLUMaxPool2x2"]
    kinds = [type(m).__name__ for m in fuse(create_model("simple_cnn"), keep=["features.4"]).features]
    assert kinds == ["Conv2d", "Identity", "ReLUMaxPool2x2", "Conv2d", "ReLU", "MaxPool2x2"]


@pytest.mark.parametrize("name", ["simple_cnn", "vgg_like", "vgg11_bn", "alexnet", "resnet18", "googlenet", "lenet5"])
def test_create_model_gives_plain_pytorch(name):
    """No cnnlab operator runs in an unfused model, even where the kernel would apply (bf16 channels_last,
    the kernel loaded): what runs is what the model prints."""
    load_kernel()
    model = create_model(name, num_classes=10).to(memory_format=torch.channels_last)
    size = (1, 28, 28) if name in ("simple_cnn", "vgg_like") else (3, 32, 32) if name == "lenet5" else (3, 64, 64)
    if name == "lenet5":
        model = create_model(name)
        size = (1, 32, 32)
    assert not any(isinstance(m, _FUSED_TYPES) for m in model.modules())
    x = torch.randn(2, *size).contiguous(memory_format=torch.channels_last)
    _, _, _, names = _step(model, x, bf16=True)
    assert not any(n.startswith("cnnlab::") for n in names)


def _small_fused():
    plain = _tied(create_model("simple_cnn")).to(memory_format=torch.channels_last)
    return plain, fuse(plain)


def test_fx_symbolic_trace_export_and_compile_match():
    plain, fused = _small_fused()
    x = torch.randint(-2, 3, (4, 1, 28, 28)).float().contiguous(memory_format=torch.channels_last)
    expected = plain(x)
    traced = torch.fx.symbolic_trace(fused)
    calls = [getattr(n.target, "__name__", str(n.target)) for n in traced.graph.nodes if n.op == "call_function"]
    assert calls.count("relu_max_pool2x2") == 2 and calls.count("flatten_keep_layout") == 1
    assert torch.equal(traced(x), expected)
    program = torch.export.export(fused.eval(), (x,))
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    if SIMD:
        assert ops.count("cnnlab.max_pool2x2.default") == 2  # the operator itself, through its fake
    assert torch.equal(program.module()(x), expected)
    compiled = torch.compile(fused.train(), backend="aot_eager", fullgraph=True)  # fake + autograd, no codegen
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = compiled(xa)
    out.square().sum().backward()
    plain(xb).square().sum().backward()
    assert torch.equal(out, expected) and torch.equal(xa.grad, xb.grad)


def test_torch_func_per_sample_gradients_match():
    """vmap(grad(...)) over the fused model: the kernel runs under both transforms, with the same numbers."""
    plain, fused = _small_fused()
    params = {k: v.detach() for k, v in plain.named_parameters()}
    x = torch.randint(-2, 3, (5, 1, 28, 28)).float().contiguous(memory_format=torch.channels_last)
    y = torch.arange(5)

    def per_sample(model):
        def loss(p, xi, yi):
            out = functional_call(model, p, (xi.unsqueeze(0),))
            return nn.functional.cross_entropy(out, yi.unsqueeze(0))
        return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)

    with torch.profiler.profile() as prof:
        got = per_sample(fused)
    if SIMD:
        assert any(e.name == "cnnlab::max_pool2x2" for e in prof.events())
    ref = per_sample(plain)
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


# ---- where cnnlab fuses: the Trainer (TrainConfig.fuse, --no-fuse), evaluation, feature extraction ----------


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "last.safetensors")


def test_the_trainer_fuses_by_default_and_no_fuse_trains_the_same_weights(tmp_path):
    import json

    from cnnlab.cli.main import main

    fused_run = cnnlab.train(model="simple_cnn", data="digits", epochs=1, out=str(tmp_path / "fused"),
                             verbose=False, plots=False)
    assert any(isinstance(m, ReLUMaxPool2x2) for m in fused_run.model.modules())
    assert main(["train", "--model", "simple_cnn", "--data", "digits", "--epochs", "1", "--no-fuse",
                 "--out", str(tmp_path / "plain"), "--quiet"]) == 0
    assert json.loads((tmp_path / "fused" / "config.json").read_text())["config"]["fuse"] is True
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["config"]["fuse"] is False
    a, b = _weights(tmp_path / "fused"), _weights(tmp_path / "plain")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _ToFloat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def test_feature_extraction_at_a_fused_relu_still_reads_the_relu():
    """A cut at the ReLU of a pair (read by a forward hook) keeps that pair unfused: the features are the
    ReLU's output, not the convolution's."""
    from cnnlab.transfer_learning.backbone import Truncated
    from cnnlab.transfer_learning.features import extract

    model = _tied(create_model("simple_cnn")).eval()
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    body = Truncated(model, "features.4")
    feats = extract(body, _ToFloat(), images, precision="fp32")
    assert type(body.model.features[4]) is nn.ReLU  # kept
    assert isinstance(body.model.features[2], ReLUMaxPool2x2)  # the other pair fused
    x = images.float()
    expected = torch.relu(model.features[3](torch.relu(nn.functional.max_pool2d(model.features[0](x), 2))))
    assert (feats >= 0).all() and (feats == 0).any()
    torch.testing.assert_close(feats, expected.flatten(1))
