"""The one training step and the loops built on it: label smoothing reaches fine-tuning, the Trainer
trains in memory without a file, `quiet` prints nothing, `max_steps` and `stop_training` are exact,
lr-find writes into --out only. Truth comes from independent computations and the file system."""

from __future__ import annotations

import copy
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data import load_dataset
from cnnlab.data.dataset import in_memory_dataset
from cnnlab.training import Callback, TrainConfig, Trainer, TrainStep, train
from cnnlab.training.precision import resolve_precision
from cnnlab.training.step import NonFiniteLossError


def _files(folder: Path) -> list[str]:
    """Everything below `folder`, but torch's own compile cache (`torchinductor_<user>` in the temp folder)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "torchinductor_" not in str(p))


def test_step_is_smoothed_cross_entropy_then_one_sgd_update():
    """Reference: the loss and the SGD update computed by hand on a copy of the same linear model."""
    torch.manual_seed(0)
    net = nn.Linear(6, 4)
    ref = copy.deepcopy(net)
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    step = TrainStep(net, opt, resolve_precision("fp32", "cpu", channels_last=False), label_smoothing=0.2,
                     schedules=lambda s: 0.1 * (s + 1))
    out = step(x, y, 2)  # the schedule's rate at global step 2: 0.3
    # independent: smoothed cross-entropy written out, q = (1 - eps) one-hot + eps / K
    logp = torch.log_softmax(ref(x), 1)
    q = torch.full((10, 4), 0.2 / 4).scatter_add_(1, y[:, None], torch.full((10, 1), 0.8))
    loss = -(q * logp).sum(1).mean()
    assert float(out.loss) == pytest.approx(float(loss.detach()), rel=1e-6)
    assert float(out.loss) != pytest.approx(float(F.cross_entropy(ref(x), y)), rel=1e-3)  # smoothing mattered
    gw, gb = torch.autograd.grad(loss, [ref.weight, ref.bias])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.3)
    torch.testing.assert_close(net.weight.detach(), ref.weight.detach() - 0.3 * gw, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(net.bias.detach(), ref.bias.detach() - 0.3 * gb, rtol=1e-5, atol=1e-7)


def test_step_refuses_a_non_finite_loss_before_touching_the_weights():
    net = nn.Linear(3, 2)
    before = copy.deepcopy(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=1.0)
    step = TrainStep(net, opt, resolve_precision("fp32", "cpu", channels_last=False))
    with pytest.raises(NonFiniteLossError):
        step(torch.full((2, 3), float("nan")), torch.tensor([0, 1]), 0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and not opt.state


def test_fine_tuning_applies_label_smoothing():
    """`transfer.finetune.fit` trains through the Trainer: one full-batch step on the whole set records the
    loss of the untrained model, which must equal smoothed cross-entropy computed independently."""
    from cnnlab.transfer_learning.adapt import InputAdapter
    from cnnlab.transfer_learning.finetune import Classifier, fit

    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = Classifier(InputAdapter((1, 8, 8), (3, 8, 8), (0.5,) * 3, (0.25,) * 3), body, nn.Linear(4, 3))
    untrained = copy.deepcopy(model).eval()
    images = torch.randint(0, 256, (24, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(24) % 3
    data = in_memory_dataset("random", ["a", "b", "c"], "test", (images, labels), (images, labels))
    report = fit(model, data, [{"params": list(model.parameters()), "lr": 1e-3}], steps=1, batch_size=64,
                 label_smoothing=0.3, precision="fp32", device="cpu", evaluate=False)
    with torch.no_grad():
        logits = untrained(images)
    expected = float(F.cross_entropy(logits, labels, label_smoothing=0.3))
    assert report.final_loss == pytest.approx(expected, rel=1e-5)
    assert report.final_loss != pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-3)


def test_in_memory_trainer_writes_no_file(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # a temporary run folder would land here
    before = _files(tmp_path)
    cfg = TrainConfig(model="simple_cnn", data="digits", epochs=2, batch_size=64, lr=3e-3, monitor_gradients=True)
    result = Trainer(cfg, save=False, quiet=True).fit()
    assert _files(tmp_path) == before == ["cwd", "tmp"]
    assert result.path is None and [h["epoch"] for h in result.history] == [1, 2]
    # it trained: an independent fp32 count of hits on the test split with the returned model
    ds = load_dataset("digits")
    model = result.model.float().eval()
    with torch.no_grad():
        x = (ds.test.images.float() / 255 - ds.mean[0]) / ds.std[0]
        accuracy = float((model(x).argmax(1) == ds.test.labels).float().mean())
    assert accuracy > 0.5  # chance is 0.1
    # the returned model holds the chosen weights, whose test accuracy is the result (bf16 may flip a few)
    assert result.test_accuracy == pytest.approx(accuracy, abs=3 / 360)


def test_quiet_prints_nothing(tmp_path, capfd):
    train(model="simple_cnn", data="digits", epochs=2, batch_size=256, out=str(tmp_path / "run"), quiet=True,
          plots=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert (tmp_path / "run" / "last.safetensors").is_file()  # quiet, not idle


def test_max_steps_and_stop_training_are_exact(tmp_path):
    class Count(Callback):
        def __init__(self, stop_at=None):
            self.steps, self.stop_at = 0, stop_at

        def on_step_end(self, trainer, epoch, step):
            self.steps += 1
            if self.steps == self.stop_at:
                trainer.stop_training = True

    cfg = TrainConfig(model="simple_cnn", data="digits", batch_size=64, max_steps=30, schedule="cosine", warmup=0.0)
    count = Count()
    result = Trainer(cfg, save=False, quiet=True, evaluate=False, callbacks=[count]).fit()
    assert count.steps == 30  # 20 steps per epoch (1,295 // 64, validation held out), then 10 of the second
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(h["test_accuracy"] is None for h in result.history)

    stop = Count(stop_at=5)
    result = Trainer(cfg, save=False, quiet=True, callbacks=[stop]).fit()
    assert stop.steps == 5 and result.history == []  # the unfinished epoch is not recorded


def test_trainer_counts_optimizer_steps_with_max_steps():
    """Independent truth: AdamW's own per-parameter step counter."""
    captured = {}

    class Grab(Callback):
        def on_fit_end(self, trainer, last_eval):
            captured["opt"] = trainer.optimizer

    cfg = TrainConfig(model="simple_cnn", data="digits", batch_size=64, max_steps=9)
    Trainer(cfg, save=False, quiet=True, evaluate=False, callbacks=[Grab()]).fit()
    steps = {int(s["step"]) for s in captured["opt"].state.values()}
    assert steps == {9}


def test_param_groups_follow_the_schedule_from_their_own_peaks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    groups = [{"params": list(model[1].parameters()), "lr": 1e-2, "name": "body"},
              {"params": list(model[3].parameters()), "lr": 1e-3, "name": "head"}]
    seen = []

    class Rates(Callback):
        def on_step_end(self, trainer, epoch, step):
            seen.append({g["name"]: g["lr"] for g in trainer.optimizer.param_groups})

    cfg = TrainConfig(data="digits", batch_size=128, max_steps=4, schedule="cosine", warmup=0.0, weight_decay=0.1)
    trainer = Trainer(cfg, model=model, param_groups=groups, save=False, quiet=True, evaluate=False,
                      callbacks=[Rates()])
    trainer.fit()
    for s, rates in enumerate(seen):  # cosine from each peak to 0 over the 4 steps
        factor = 0.5 * (1 + math.cos(math.pi * s / 4))
        assert rates == {"body": pytest.approx(1e-2 * factor), "head": pytest.approx(1e-3 * factor)}
    decay = {(g["name"], p.ndim): g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert decay == {("body", 2): 0.1, ("body", 1): 0.0, ("head", 2): 0.1, ("head", 1): 0.0}


def test_cli_lr_find_writes_into_out_only_and_prints_a_train_command(tmp_path):
    from cnnlab.cli.main import build_parser

    work, out = tmp_path / "cwd", tmp_path / "lr"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "cnnlab", "lr-find", "--data", "digits", "--steps", "12",
                           "--batch-size", "64", "--start-lr", "1e-5", "--end-lr", "1", "--out", str(out)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert _files(work) == []  # nothing in the current folder
    assert _files(out) == ["lr_find.json", "lr_find.png"]
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "lr_find.json").read_text())
    line = [x.strip() for x in proc.stdout.splitlines() if x.strip().startswith("cnnlab train")]
    assert len(line) == 1
    words = shlex.split(line[0])
    args = build_parser().parse_args(words[1:])  # a command line the CLI accepts as it is
    assert args.model == "simple_cnn" and args.data == "digits" and args.batch_size == 64
    assert args.lr == pytest.approx(saved["suggestion"], rel=5e-3)
    assert 1e-5 <= saved["suggestion"] <= 1 and len(saved["lrs"]) == len(saved["smoothed_losses"]) >= 3


def test_experiments_train_in_memory(tmp_path, monkeypatch):
    """`experiments._common.fit` leaves no run folder, not even a temporary one; `final_accuracy` evaluates
    the returned model, checked against an independent fp32 count."""
    from cnnlab.experiments._common import final_accuracy, fit, subsample

    work, tmp = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # where a TemporaryDirectory would be made
    made, mkdtemp = [], tempfile.mkdtemp  # ... and removed again: count the folders made meanwhile
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(mkdtemp(*a, **k)) or made[-1])
    ds = subsample(load_dataset("digits"), 40, 20, seed=0)
    result = fit("conv3x3-8 maxpool2 fc10", ds, device="cpu", epochs=3, batch_size=50, lr=3e-3, seed=0)
    assert _files(tmp_path) == ["cwd", "tmp"] and made == [] and result.path is None
    model = result.model.float().eval()
    with torch.no_grad():
        x = (ds.test.images.float() / 255 - ds.mean[0]) / ds.std[0]
        expected = float((model(x).argmax(1) == ds.test.labels).float().mean())
    assert final_accuracy(result, ds) == pytest.approx(expected, abs=3 / len(ds.test))  # bf16 may flip a few
