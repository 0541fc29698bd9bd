"""Early stopping and the plateau schedule: their decisions against torch's ReduceLROnPlateau and a hand
count, the refusals (patience 0, no validation split), and a run that stops, says why and records it."""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import run_cli

from cnnlab.errors import CnnlabError
from cnnlab.training import TrainConfig
from cnnlab.training.stopping import EarlyStopping, PlateauSchedule


def _fake_trainer(epochs: int = 1000):
    logs: list[str] = []
    return SimpleNamespace(epochs=epochs, stop_training=False, log=logs.append, logs=logs, run=None,
                           step=SimpleNamespace(schedules=[lambda step: 1.0, lambda step: 0.5]))


# metric sequences with stalls, ties, tiny (sub-threshold) improvements and a missing (not evaluated) epoch
LOSSES = [2.0, 1.5, 1.5, 1.49999, 1.6, 1.2, 1.2, 1.3, 1.25, 1.21, 1.1, 1.1, None, 1.1, 1.0999, 1.2, 0.9, 0.95, 0.95,
          0.95, 0.95, 0.8]
ACCURACIES = [0.5, 0.6, 0.6, 0.60001, 0.55, 0.7, 0.7, 0.69, 0.71, 0.71, 0.71, None, 0.71, 0.72, 0.72, 0.72, 0.72, 0.9]


@pytest.mark.parametrize("monitor, values", [("val_loss", LOSSES), ("val_accuracy", ACCURACIES)])
@pytest.mark.parametrize("patience, factor", [(0, 0.5), (1, 0.1), (2, 0.3)])
def test_plateau_cuts_where_torch_reduce_lr_on_plateau_does(monitor, values, patience, factor):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    mode = "min" if monitor == "val_loss" else "max"
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=factor, patience=patience)
    plateau, trainer = PlateauSchedule(patience, factor, monitor), _fake_trainer()
    plateau.on_fit_start(trainer)
    for epoch, value in enumerate(values):
        plateau.on_epoch_end(trainer, epoch, {monitor: value})
        if value is not None:  # an epoch that was not evaluated does not count
            ref.step(value)
        assert math.isclose(trainer.step.schedules[0](123), opt.param_groups[0]["lr"], rel_tol=1e-12), epoch
        assert math.isclose(trainer.step.schedules[1](123), 0.5 * opt.param_groups[0]["lr"], rel_tol=1e-12)
    assert plateau.scale < 1.0 and len(trainer.logs) >= 1


@pytest.mark.parametrize("monitor, values, patience, stop_epoch, best, best_epoch", [
    # strict improvement resets the count (Keras: min_delta 0); ties and rises count against it
    ("val_loss", [1.0, 0.9, 0.9, 0.95, 0.8, 0.8, 0.85, 0.81], 3, 8, 0.8, 5),
    ("val_loss", [1.0, 0.9, 0.9, 0.95, 0.8, 0.8, 0.85, 0.81], 4, None, 0.8, 5),
    # epochs not evaluated (None) are not counted
    ("val_accuracy", [0.5, 0.6, None, 0.6, None, 0.59, 0.7, 0.7, 0.7], 2, 6, 0.6, 2),
    ("val_accuracy", [0.5, 0.6, None, 0.6, None, 0.59, 0.7, 0.7, 0.7], 3, None, 0.7, 7),
    ("val_accuracy", [0.5, 0.4], 1, 2, 0.5, 1),
])
def test_early_stopping_stops_after_patience_epochs_without_improvement(monitor, values, patience, stop_epoch,
                                                                        best, best_epoch):
    stopper, trainer = EarlyStopping(patience, monitor), _fake_trainer()
    stopped_at = None
    for epoch, value in enumerate(values):
        stopper.on_epoch_end(trainer, epoch, {monitor: value})
        if trainer.stop_training:
            stopped_at = epoch + 1
            break
    assert stopped_at == stop_epoch and stopper.stopped_epoch == stop_epoch
    assert stopper.watch.best == best and stopper.watch.best_epoch == best_epoch
    if stop_epoch:
        assert trainer.logs == [f"early stopping after epoch {stop_epoch} of 1000: {stopper.reason}"]


def test_early_stopping_state_survives_a_checkpoint():
    a, b = EarlyStopping(3, "val_loss"), EarlyStopping(3, "val_loss")
    trainer = _fake_trainer()
    for epoch, v in enumerate([1.0, 0.9, 0.95]):
        a.on_epoch_end(trainer, epoch, {"val_loss": v})
    b.load_state_dict(torch.load(_roundtrip(a.state_dict()), weights_only=True))
    for epoch, v in enumerate([0.95, 0.95], start=3):
        a.on_epoch_end(trainer, epoch, {"val_loss": v})
        b.on_epoch_end(trainer, epoch, {"val_loss": v})
    assert a.stopped_epoch == b.stopped_epoch == 5


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("bad, message", [
    (dict(early_stop=0), "early-stop must be a positive integer"),
    (dict(monitor="test_loss"), "unknown monitor 'test_loss'"),
    (dict(ema=1.0), "ema must be a number in (0, 1)"),
    (dict(plateau_factor=1.5), "plateau-factor must be a number in (0, 1)"),
])
def test_config_refuses_bad_values(bad, message):
    with pytest.raises(CnnlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**bad).resolved()


def test_cli_early_stop_0_is_one_line_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--data", "digits", "--epochs", "100", "--early-stop", "0", "--val-fraction", "0.1",
                   "--out", str(out))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--early-stop" in proc.stderr and "got '0'" in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags", [["--early-stop", "5"], ["--schedule", "plateau"]])
def test_monitoring_without_a_validation_split_is_refused_before_anything_is_written(tmp_path, flags):
    out = tmp_path / "run"
    proc = run_cli("train", "--data", "digits", "--epochs", "3", "--val-fraction", "0", *flags, "--out", str(out))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "validation split" in proc.stderr and "--val-fraction 0.1" in proc.stderr and flags[0] in proc.stderr
    assert not out.exists()


def test_a_run_that_stalls_stops_says_why_and_records_it(tmp_path):
    """A learning rate of 1e-12 leaves the weights as they are (far below float32's resolution), so the
    validation accuracy never improves after epoch 1: with patience 2 training must stop after epoch 3,
    and the plateau schedule (patience 0) must have cut the rate after epochs 2 and 3."""
    out = tmp_path / "run"
    proc = run_cli("train", "--data", "digits", "--model", "simple_cnn", "--epochs", "50", "--batch-size", "512",
                   "--optimizer", "sgd", "--lr", "1e-12", "--momentum", "0", "--weight-decay", "0",
                   "--schedule", "plateau", "--plateau-patience", "0", "--plateau-factor", "0.5",
                   "--early-stop", "2", "--monitor", "val_accuracy", "--val-fraction", "0.1", "--quiet",
                   "--out", str(out), check=True)
    assert "early stopping after epoch 3 of 50: val_accuracy has not improved for 2 evaluated epochs" in proc.stdout
    stopped = json.loads((out / "config.json").read_text())["stopped"]
    assert stopped["epoch"] == 3 and stopped["early"] is True and stopped["best_epoch"] == 1
    assert "has not improved for 2 evaluated epochs" in stopped["reason"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == pytest.approx([1e-12, 1e-12, 0.5e-12], rel=1e-9)
    assert proc.stdout.count("plateau: val_accuracy has not improved") == 2
