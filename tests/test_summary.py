"""`summary()`: MACs against torchvision's documented GFLOPS and torch's FlopCounterMode, parameter counts
against published numbers, rows in call order, the model left untouched, and the CLI."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import run_cli
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.errors import CnnlabError
from cnnlab.inspect import summary


def _meta(builder, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return builder(weights=None, **kwargs)


# torchvision's model documentation: "GFLOPS" (counted as multiply-accumulates) and "num_params".
PUBLISHED = {
    "alexnet": (0.71e9, 61_100_840),
    "vgg16": (15.47e9, 138_357_544),
    "resnet50": (4.09e9, 25_557_032),
    "resnet152": (11.51e9, 60_192_808),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_macs_and_params_match_torchvision_docs(name):
    macs, params = PUBLISHED[name]
    s = summary(_meta(getattr(torchvision.models, name)), (3, 224, 224))
    assert s.total_macs == pytest.approx(macs, rel=0.01)
    assert s.total_params == params
    assert sum(r.macs for r in s.layers) == s.total_macs


# Further architectures from the same documentation: depthwise, dense, channels-last, attention.
MORE_MACS = {"mobilenet_v2": 0.30e9, "densenet121": 2.83e9, "convnext_tiny": 4.46e9, "vit_b_16": 17.56e9}


@pytest.mark.parametrize("name", list(MORE_MACS))
def test_macs_of_other_architectures_match_torchvision_docs(name):
    s = summary(_meta(getattr(torchvision.models, name)), (3, 224, 224))
    assert s.total_macs == pytest.approx(MORE_MACS[name], rel=0.01)


class OpZoo(nn.Module):
    """Every op kind the MAC counter knows, some inside leaves, some written in this forward."""

    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(4, 8, 3, groups=2, dilation=2, padding=2)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1)
        self.kernel = nn.Parameter(torch.randn(6, 4, 3, 3))
        self.proj = nn.Parameter(torch.randn(6, 5))
        self.fc = nn.Linear(5, 7)

    def forward(self, x):
        x = self.up(self.grouped(x))  # (N, 4, 2H-1, 2W-1)
        x = F.conv2d(x, self.kernel, stride=2)  # functional: a row of its own
        x = x.mean(dim=(2, 3))  # (N, 6)
        x = x @ self.proj  # (N, 5)
        y = torch.einsum("nc,kc->nk", x, self.fc.weight)  # (N, 7)
        z = torch.bmm(y[:, None, :], self.fc.weight[None])  # (N, 1, 5)
        return self.fc(z.flatten(1))


def test_macs_match_flop_counter_per_op_kind():
    model = OpZoo()
    x = torch.randn(1, 4, 9, 11)
    with FlopCounterMode(display=False) as counter:
        model(x)
    s = summary(model, (4, 9, 11))
    assert s.total_macs == counter.get_total_flops() // 2  # FlopCounterMode counts 2 FLOPs per MAC
    assert sum(r.macs for r in s.layers) == s.total_macs
    names = [r.name for r in s.layers]
    assert names == ["grouped", "up", "conv2d", "matmul", "einsum", "bmm", "fc"]


def test_locally_connected_macs():
    layers = pytest.importorskip("cnnlab.layers")
    layer = layers.LocallyConnected2d(3, 4, 3, input_size=(10, 12))
    with FlopCounterMode(display=False) as counter:
        layer(torch.randn(1, 3, 10, 12))
    assert summary(layer, (3, 10, 12)).total_macs == counter.get_total_flops() // 2


def test_lecture_cnn_shapes_and_params():
    # "conv3x3-32 maxpool2 conv3x3-64 maxpool2 fc10" on 1x28x28, built by hand: the lecture's 50,186.
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 7 * 64, 10),
    )
    s = summary(model, (1, 28, 28))
    assert s.total_params == 50_186
    shapes = [tuple(r.output_shape) for r in s.layers]
    assert shapes == [(32, 28, 28), (32, 28, 28), (32, 14, 14), (64, 14, 14), (64, 14, 14), (64, 7, 7), (3136,), (10,)]
    table = str(s)
    for text in ("1x28x28", "32x28x28", "32x14x14", "64x14x14", "64x7x7", "50,186"):  # CxHxW, as --input
        assert text in table
    # MACs by hand: output elements x products per output.
    assert s.total_macs == 28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 10 * 3136
    # receptive fields by hand: 3, pool -> 4 (jump 2), 3x3 at jump 2 -> 8, pool -> 10 (jump 4)
    assert [r.receptive_field[0] for r in s.layers[:6]] == [3, 3, 4, 8, 8, 10]
    assert s.layers[-1].receptive_field == [10 + 6 * 4] * 2  # fc: a kernel over the whole 7x7 map


@pytest.mark.skipif(importlib.util.find_spec("cnnlab.models.spec") is None, reason="cnnlab.models.spec not written yet")
def test_spec_string():
    s = summary("conv3x3-32 maxpool2 conv3x3-64 maxpool2 fc10", (1, 28, 28))
    assert s.total_params == 50_186
    assert tuple(s.layers[-1].output_shape) == (10,)


def test_rows_per_call_params_once():
    s = summary(_meta(torchvision.models.resnet50), (3, 224, 224))
    relu_rows = [r for r in s.layers if r.name == "layer1.0.relu"]
    assert len(relu_rows) == 3  # torchvision's Bottleneck calls its one ReLU three times
    assert sum(r.params for r in s.layers) == 25_557_032
    conv = next(r for r in s.layers if r.name == "layer4.2.conv2")
    assert conv.params == 512 * 512 * 9 and conv.output_shape == (512, 7, 7)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x.flatten(1)))

    rows = summary(Twice(), (1, 2, 2)).layers
    assert [(r.name, r.params, r.macs) for r in rows] == [("fc", 20, 16), ("fc", 0, 16)]


def test_model_is_left_untouched():
    model = torchvision.models.resnet18(num_classes=10)
    model.train()
    model.layer2.eval()  # a mixed state must come back as it was
    model.fc.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    summary(model, (3, 64, 64))
    assert [m.training for m in model.modules()] == modes
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert all(p.grad is None for p in model.parameters())
    assert not model.fc.weight.requires_grad and model.fc.bias.requires_grad
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_meta_and_real_devices_agree():
    real = summary(torchvision.models.resnet18(), (3, 64, 64)).to_dict()
    assert summary(_meta(torchvision.models.resnet18), (3, 64, 64)).to_dict() == real


def test_frozen_layers_are_marked():
    model = _meta(torchvision.models.resnet18)
    for p in [*model.conv1.parameters(), *model.layer1.parameters()]:
        p.requires_grad_(False)
    model.bn1.bias.requires_grad_(False)
    s = summary(model, (3, 224, 224))
    d = s.to_dict()
    assert d["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = {line.split()[0]: line for line in str(s).splitlines() if line.strip()}
    assert lines["conv1"].endswith("frozen") and lines["bn1"].endswith("part frozen")
    assert not lines["layer2.0.conv1"].endswith("frozen")
    row = next(r for r in d["layers"] if r["name"] == "bn1")
    assert (row["params"], row["trainable_params"]) == (128, 64)


def test_to_dict_is_plain_json():
    d = summary(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.AdaptiveAvgPool2d(1)), (3, 15, 15)).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {"input_size", "layers", "total_params", "trainable_params", "total_macs"}
    assert d["input_size"] == [3, 15, 15]
    first = d["layers"][0]
    assert set(first) == {"name", "kind", "output_shape", "params", "trainable_params", "macs", "receptive_field", "jump"}
    assert first["output_shape"] == [8, 7, 7] and first["receptive_field"] == [3, 3] and first["jump"] == [2, 2]
    assert d["layers"][1]["receptive_field"] == [3 + 6 * 2] * 2  # global pool: the whole 7x7 map


@pytest.mark.parametrize("bad", [(3, 224), (3, 0, 5), "3x224x224", (3.5, 10, 10)])
def test_bad_input_size(bad):
    with pytest.raises(CnnlabError):
        summary(nn.Conv2d(3, 3, 1), bad)


def test_input_too_small_is_one_line_error():
    with pytest.raises(CnnlabError, match="does not accept a 3x16x16 input"):
        summary(_meta(torchvision.models.alexnet), (3, 16, 16))
    with pytest.raises(CnnlabError, match="input_size"):
        summary(nn.Conv2d(3, 3, 1))


# ----------------------------------------------------------------------------------------------------
# CLI (each call starts a fresh interpreter: kept few)

def test_summary_of_a_registered_name_prints_the_totals():
    out = str(summary("resnet50", (3, 224, 224)))  # built on the meta device
    assert "25,557,032" in out and "4.09 G" in out and "Receptive field of the output" in out


@pytest.mark.slow
def test_cli_summary_json():
    d = json.loads(run_cli("summary", "resnet50", "--json", check=True).stdout)  # default input: 3x224x224
    assert d["input_size"] == [3, 224, 224] and d["total_params"] == 25_557_032
    assert d["total_macs"] == pytest.approx(4.09e9, rel=0.01)
    assert d == summary("resnet50", (3, 224, 224)).to_dict()  # exactly the dict


@pytest.mark.parametrize("args", [("resnet50", "--input", "3x224"), ("resnet50", "--input", "3x0x4"),
                                  ("alexnet", "--input", "3x16x16"), ("conv3x3-32 maxpol2", "--input", "1x28x28")])
def test_cli_summary_bad_input_one_line_exit_2(args):
    proc = run_cli("summary", *args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_models_json():
    from cnnlab.models import list_models

    proc = run_cli("models", "--json", check=True)
    stats = {d["name"]: d for d in json.loads(proc.stdout)}
    assert list(stats) == list_models()  # every model, in the registry's (natural) order
    for name, d in stats.items():  # same name in torchvision: same architecture, same counts
        if name in PUBLISHED and d["num_classes"] == 1000:
            assert d["params"] == PUBLISHED[name][1]
            assert d["macs"] == pytest.approx(PUBLISHED[name][0], rel=0.01)
        assert d["paper"] and len(d["input_size"]) == 3
    assert run_cli("models", "no-such-model*").returncode == 2
