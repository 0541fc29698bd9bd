"""Gradient norms, warnings, the training monitor and `cnnlab gradients`, checked against independent truth."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from torch import nn

from cnnlab.inspect.gradients import gradient_lab
from cnnlab.models import resolve_model
from cnnlab.training.monitor import GradientMonitor, gradient_norms, gradient_warnings


def _small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3, stride=2),
                         nn.Tanh(), nn.Flatten(), nn.Linear(6 * 3 * 3, 5))


def test_norms_match_a_direct_autograd_computation():
    net = _small_net()
    x, y = torch.randn(7, 1, 8, 8), torch.randint(0, 5, (7,))
    F.cross_entropy(net(x), y).backward()
    norms = gradient_norms(net)
    # independent: torch.autograd.grad on the same batch, norms as sqrt(sum g^2) in float64
    weights = {"0": net[0].weight, "3": net[3].weight, "6": net[6].weight}
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(weights.values()))
    expected = {k: math.sqrt(float((g.double() ** 2).sum())) for k, g in zip(weights, grads, strict=True)}
    assert list(norms) == ["0", "3", "6"]  # conv, conv, linear in depth order; BN's 1-d scale is no layer
    for k, v in expected.items():
        assert norms[k] == pytest.approx(v, rel=1e-5)


def test_vanishing_warning_on_deep_sigmoid_net_not_on_resnet():
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    deep, _ = resolve_model("plain20", (1, 8, 8), 10, {"activation": "sigmoid", "batch_norm": False, "init_scale": 0.5})
    F.cross_entropy(deep(x), y).backward()
    warned = gradient_warnings(gradient_norms(deep))
    assert any(w.startswith("vanishing") for w in warned), warned
    resnet, _ = resolve_model("resnet20", (1, 8, 8), 10)
    F.cross_entropy(resnet(x), y).backward()
    assert gradient_warnings(gradient_norms(resnet)) == []


def test_non_finite_warning_and_monitor_records():
    net = _small_net()
    F.cross_entropy(net(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    assert gradient_warnings(gradient_norms(net)) == []
    net[3].weight.grad[0, 0, 0, 0] = float("inf")
    assert any(w.startswith("non-finite") for w in gradient_warnings(gradient_norms(net)))

    # the monitor: a step between two records with a NaN gradient is still reported
    seen: list[str] = []
    mon = GradientMonitor(records_per_epoch=1, on_warning=seen.append)
    trainer = SimpleNamespace(model=net, steps_per_epoch=3, dist=SimpleNamespace(is_main=False))
    net[3].weight.grad.fill_(1.0)
    mon.on_after_backward(trainer, 0, 1)  # a record step: healthy
    assert seen == [] and mon.records[0]["step"] == 1 and list(mon.records[0]["norms"]) == ["0", "3", "6"]
    assert mon.records[0]["norms"]["3"] == pytest.approx(math.sqrt(net[3].weight.numel()))
    net[6].weight.grad[0, 0] = float("nan")
    mon.on_after_backward(trainer, 0, 2)  # not a record step: no host read, but the flag is kept
    net[6].weight.grad[0, 0] = 0.0
    mon.on_after_backward(trainer, 1, 1)  # next record (epoch 2, global step 4)
    assert mon.records[-1]["step"] == 4 and mon.records[-1]["epoch"] == 2
    assert any("non-finite" in w for w in seen), seen


def test_warnings_go_on_their_own_line_above_the_progress_bar():
    import io

    from cnnlab.training import TrainConfig, Trainer
    from cnnlab.training.progress import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    bar = ProgressBar(10, "epoch 1/1", stream=term, interval=3600)
    bar.update(1, 64, lambda: (2.3, 0.1))
    trainer = Trainer(TrainConfig(model="simple_cnn", data="digits", monitor_gradients=True))
    (monitor,) = [cb for cb in trainer.callbacks if isinstance(cb, GradientMonitor)]
    trainer.bar = bar
    monitor._warn("vanishing gradients in layer 0")  # what the monitor calls while training
    bar.update(2, 128, lambda: (2.2, 0.2))  # redrawn at once, although the interval has not passed
    lines = term.getvalue().split("\n")
    assert lines[0].endswith("\rgradient warning: vanishing gradients in layer 0")  # the bar's line cleared first
    assert lines[1].startswith("\repoch 1/1") and " 2/10 " in lines[1]


@pytest.mark.slow
def test_train_monitor_gradients_writes_the_contract(tmp_path):
    out = tmp_path / "run"
    run_cli("train", "--model", "conv3x3-4 maxpool2 conv3x3-8 fc10", "--data", "digits", "--epochs", "2",
            "--batch-size", "128", "--monitor-gradients", "--out", str(out), "--quiet", check=True)
    lines = (out / "gradients.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    steps_per_epoch = 1295 // 128  # digits: 1,437 training images less 142 for validation, last partial batch dropped
    assert 2 <= len(records) <= 2 * 4  # a few per epoch, not one per step
    assert records[0]["epoch"] == 1 and records[0]["step"] == 1  # the first record is at initialisation
    for r in records:
        assert set(r) == {"epoch", "step", "norms"}
        assert isinstance(r["epoch"], int) and isinstance(r["step"], int)
        assert r["epoch"] == (r["step"] - 1) // steps_per_epoch + 1
        # conv, conv, fc in depth order, each a positive finite float
        assert len(r["norms"]) == 3 and all(isinstance(v, float) and 0 < v < 1e6 for v in r["norms"].values())
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})
    assert {r["epoch"] for r in records} == {1, 2}
    names = list(records[0]["norms"])
    model, _ = resolve_model("conv3x3-4 maxpool2 conv3x3-8 fc10", (1, 8, 8), 10)
    assert names == [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert (out / "gradients.png").read_bytes()[:4] == b"\x89PNG"


def test_lab_init_norms_match_autograd_on_the_first_batch():
    from cnnlab.data import load_dataset

    spec = "conv3x3-4 maxpool2 fc10"
    lab = gradient_lab([spec], "digits", steps=3, batch_size=32, seed=3)
    trace = lab.models[0]
    assert trace.depth == 2 and trace.steps_done == 3 and len(trace.loss) == 3
    # independent: same seed -> same init weights; the first shuffled batch of epoch 0; fp32 autograd
    ds = load_dataset("digits")
    torch.manual_seed(3)
    model, _ = resolve_model(spec, (1, 8, 8), 10)
    images, labels = next(iter(ds.train.batches(32, shuffle=True, seed=3, epoch=0, drop_last=True)))
    mean, std = torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1)
    loss = F.cross_entropy(model((images.float() / 255 - mean) / std), labels)
    grads = torch.autograd.grad(loss, [model.get_submodule(n).weight for n in trace.layers])
    for got, g in zip(trace.norms_init, grads, strict=True):
        assert got == pytest.approx(float(g.norm()), rel=0.05)  # the lab may run in bf16 autocast
    assert trace.loss_start == pytest.approx(float(loss.detach()), rel=0.02)


@pytest.mark.slow
def test_cli_json_parses_and_bad_model_is_one_line(tmp_path):
    proc = run_cli("gradients", "--models", "plain20", "--data", "digits", "--steps", "2", "--batch-size", "16",
                   "--json", "--out", str(tmp_path / "g"), check=True)
    result = json.loads(proc.stdout)
    m = result["models"][0]
    assert result["format"] == "cnnlab-gradients-1" and result["steps"] == 2
    assert m["depth"] == 20 and len(m["norms_init"]) == 20  # 6n+2 weighted layers, He et al. 2016
    assert m["layers"][0] == "conv1" and m["layers"][-1] == "fc"
    assert (tmp_path / "g" / "plot.png").is_file() and (tmp_path / "g" / "table.md").is_file()
    bad = run_cli("gradients", "--models", "plain21", "--data", "digits", "--out", str(tmp_path / "b"))
    assert bad.returncode == 2 and "plain21" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b").exists()


def _first_over_last(name: str, **options) -> float:
    """|dL/dW| of the first conv over the fc layer's, at initialisation, on one random batch (seeded)."""
    from cnnlab.models import create_model  # noqa: PLC0415

    torch.manual_seed(0)
    model = create_model(name, in_channels=1, **options)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return float(model.conv1.weight.grad.norm() / model.fc.weight.grad.norm())


def test_sigmoid_gradients_vanish_through_post_activation_skips_but_not_pre_activation_ones():
    """The lecture's claim, measured at initialisation (no BN, sigmoid): the first layer's gradient of plain56
    is orders of magnitude below the last layer's; resnet56 with pre-activation blocks (identity shortcut path)
    keeps it within two orders; the original post-activation resnet56 loses it as the plain net does,
    since its shortcut path crosses a sigmoid (slope <= 1/4) after every block."""
    knobs = dict(batch_norm=False, activation="sigmoid")
    plain = _first_over_last("plain56", preact=True, **knobs)
    pre = _first_over_last("resnet56", preact=True, **knobs)
    post = _first_over_last("resnet56", **knobs)
    assert plain < 1e-4 and post < 1e-4, (plain, post)
    assert pre > 1e-2, pre
