"""Training options: refused before any work, layered correctly, and schedules equal PyTorch's own."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import run_cli

from cnnlab.errors import CnnlabError
from cnnlab.models import resolve_model
from cnnlab.training import TrainConfig, resolve_config
from cnnlab.training.optim import build_optimizer, build_schedule
from cnnlab.training.precision import cpu_supports_bf16, resolve_precision
from cnnlab.training.recipes import RECIPES


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"batch_size": 0}, "batch-size"),
        ({"epochs": 0}, "epochs"),
        ({"optimizer": "adamx"}, "did you mean 'adam"),
        ({"schedule": "linear"}, "schedule"),
        ({"precision": "int8"}, "precision"),
        ({"label_smoothing": 1.0}, "label-smoothing"),
        ({"warmup": 5.0, "epochs": 2}, "warmup"),
        ({"momentum": 1.5}, "momentum"),
    ],
)
def test_bad_options_are_refused(options, needle):
    with pytest.raises(CnnlabError, match=needle):
        TrainConfig(**options).resolved()


def test_defaults_resolve_per_optimizer():
    assert TrainConfig(optimizer="sgd").resolved().lr == 0.05
    assert TrainConfig(optimizer="adam").resolved().lr == 1e-3
    c = TrainConfig(schedule="onecycle", epochs=10).resolved()
    assert c.warmup == pytest.approx(3.0)
    assert TrainConfig(schedule="cosine").resolved().warmup == 0.0


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_resolves_and_builds_its_model(name):
    cfg = resolve_config({}, recipe=name).resolved()
    model, size = resolve_model(cfg.model, (1, 28, 28), 10, cfg.extra)
    assert size == (1, 28, 28) and model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_layers_recipe_then_file_then_flags(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('epochs = 7\nlr = 0.002\n[train]\naugment = "flip"\n')
    cfg = resolve_config({"lr": 0.005, "model": None}, recipe="fashion-mnist", config_file=toml)
    assert cfg.model == "vgg_like" and cfg.extra["width"] == 16  # from the recipe
    assert cfg.epochs == 7 and cfg.augment == "flip"  # the file overrides the recipe
    assert cfg.lr == 0.005  # an explicit option overrides the file; None means "not given"
    assert cfg.recipe == "fashion-mnist"


def test_unknown_config_key_is_refused(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("epoch = 3\n")
    with pytest.raises(CnnlabError, match="unknown option 'epoch'.*did you mean 'epochs'"):
        resolve_config({}, config_file=toml)


def test_schedule_onecycle_equals_pytorch_onecyclelr():
    total, warm, peak = 120, 36, 0.1
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=peak)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=total, pct_start=warm / total,
                                              cycle_momentum=False)
    ours = build_schedule("onecycle", peak, total, warm)
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    np.testing.assert_allclose([ours(i) for i in range(total)], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["cosine", "step"])
def test_schedule_cosine_and_step_equal_pytorch(name):
    total, peak = 80, 0.1
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=peak)
    if name == "cosine":
        ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.0)
    else:
        ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[total // 2, 3 * total // 4], gamma=0.1)
    ours = build_schedule(name, peak, total, 0)
    for i in range(total):
        assert ours(i) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15), i
        opt.step()
        ref.step()


def test_weight_decay_skips_biases_and_norm_scales():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    opt = build_optimizer(model, "adamw", 1e-3, weight_decay=0.05)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}


def test_precision_detection_is_consistent_with_the_cpu():
    auto = resolve_precision("auto", "cpu")
    assert auto.name == ("bf16" if cpu_supports_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu").dtype == torch.float32
    with pytest.raises(CnnlabError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--lr", "0"], "lr must be"),
        (["--batch-size", "0"], "batch-size must be"),
        (["--model", "no_such_net"], "unknown model"),
        (["--data", "no-such-data"], "no-such-data"),
        (["--model", "lenet5", "--model-option", "input_size=(8, 8)"], "lenet5"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(tmp_path, args, needle):
    out = tmp_path / "run"
    proc = run_cli("train", "--data", "digits", "--epochs", "1", "--out", str(out), *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "config.json").exists()  # refused before any file was written


def test_cli_refuses_spec_too_deep_for_the_images(tmp_path):
    # three 2x2 poolings after a "valid" 5x5 convolution cannot take 8x8 digits
    out = tmp_path / "run"
    proc = run_cli("train", "--data", "digits", "--model", "conv5x5-8/valid maxpool2 maxpool2 maxpool2 fc10",
                   "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "maxpool2" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "module, needle",
    [
        (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 10)), "cannot take images of size (1, 8, 8)"),
        (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5)), "outputs shape (1, 5)"),
    ],
)
def test_module_that_does_not_fit_the_data_is_refused(tmp_path, module, needle):
    from cnnlab.training import train

    with pytest.raises(CnnlabError, match=re.escape(needle)):
        train(module, "digits", epochs=1, out=str(tmp_path / "run"), verbose=False)
    assert not (tmp_path / "run").exists()
