"""Imbalanced classes, k-fold, compare and logging in training: the weighted loss by hand, the evaluation
metrics against scikit-learn, bad input refused in one line with nothing written, k-fold sub-runs whose
validation folds are disjoint and cover train, `cnnlab compare`, and the csv/TensorBoard logs read back."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import PNG, run_cli
from PIL import Image
from sklearn.metrics import (
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)
from torch import nn

from cnnlab.core.preprocess import Preprocess
from cnnlab.data import MemorySplit, load_dataset
from cnnlab.data.dataset import in_memory_dataset
from cnnlab.errors import CnnlabError
from cnnlab.inspect.compare import compare_runs
from cnnlab.inspect.report import build_report
from cnnlab.training import TrainConfig, Trainer, TrainStep, train
from cnnlab.training.evaluate import EvalResult, evaluate_split
from cnnlab.training.inputs import load_data
from cnnlab.training.precision import resolve_precision

FP32 = resolve_precision("fp32", "cpu", channels_last=False)
TINY = dict(model="simple_cnn", data="digits", batch_size=256, precision="fp32", epochs=1)


# ---- the loss and the metrics -------------------------------------------------------------------
def test_class_weighted_loss_is_the_weighted_mean_of_the_per_image_losses():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 0, 0, 1, 2, 2])
    w = torch.tensor([0.5, 2.0, 1.5])
    logp = torch.log_softmax(net(x).detach(), 1)
    by_hand = -sum(w[t] * logp[i, t] for i, t in enumerate(y.tolist())) / sum(w[t] for t in y.tolist())
    step = TrainStep(net, torch.optim.SGD(net.parameters(), lr=0.0), FP32, class_weights=w)
    assert float(step(x, y, 0).loss) == pytest.approx(float(by_hand), rel=1e-6)


def test_class_weighted_soft_targets_take_the_mean_over_the_targets_weights():
    # MixUp/CutMix targets: sum_i sum_c w_c q_ic (-log p_ic) / sum_i (q_i . w); one-hot q gives the hard-label loss
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 0, 0, 1, 2, 2])
    w = torch.tensor([0.5, 2.0, 1.5])
    q = torch.softmax(torch.randn(6, 3), 1)
    logp = torch.log_softmax(net(x).detach(), 1)
    by_hand = -(q * w * logp).sum() / (q * w).sum()
    step = TrainStep(net, torch.optim.SGD(net.parameters(), lr=0.0), FP32, class_weights=w)
    assert float(step(x, q, 0).loss) == pytest.approx(float(by_hand), rel=1e-6)
    hard = float(step(x, y, 0).loss)
    assert float(step(x, torch.nn.functional.one_hot(y, 3).float(), 0).loss) == pytest.approx(hard, rel=1e-6)


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    k = 6
    y_true = rng.choice(k, 500, p=[0.5, 0.2, 0.15, 0.1, 0.05, 0.0])  # class 5 never occurs
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, k - 1, 500))
    cm = torch.bincount(torch.as_tensor(y_true * k + y_pred), minlength=k * k).view(k, k)
    ev = EvalResult(0.0, float((y_true == y_pred).mean()), cm, [str(c) for c in range(k)])
    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=range(k), zero_division=0)
    got = ev.class_metrics()
    for c in range(k):
        m = got[str(c)]
        assert (m["precision"], m["recall"], m["f1"], m["support"]) == pytest.approx((p[c], r[c], f[c], n[c]))
    assert ev.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert ev.balanced_accuracy == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert "balanced accuracy" in ev.table() and "macro-F1" in ev.table()


def test_top5_matches_scikit_learn():
    torch.manual_seed(0)
    k, n = 8, 300
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, k, (n,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, k))
    prep = Preprocess((0.5,), (0.25,), torch.device("cpu"), channels_last=False)
    ev = evaluate_split(model, MemorySplit(images, labels), prep, FP32, k, batch_size=64)
    with torch.no_grad():
        scores = model(prep(images)).numpy()
    assert ev.top5 == pytest.approx(top_k_accuracy_score(labels.numpy(), scores, k=5, labels=range(k)))


# ---- bad input: one line, exit 2, nothing written -------------------------------------------------
def _one_line_exit_2(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_class_weights_with_an_empty_class_is_one_line_and_writes_nothing(tmp_path):
    # class "b" has one image: 20% for test rounds to none, --val-fraction 0.6 holds it out: train has no "b"
    for cls, count in (("a", 12), ("b", 1)):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(tmp_path / "photos" / cls / f"{i}.png")
    out = tmp_path / "run"
    proc = run_cli("train", "--data", f"imagefolder:{tmp_path / 'photos'}", "--val-fraction", "0.6",
                   "--class-weights", "auto", "--model", "conv3x3-4 fc2", "--out", str(out))
    _one_line_exit_2(proc, "class 'b'", "--class-weights")
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--folds", "1"], ["--folds", "from 2 to 100"]),
    (["--sampler", "uniform"], ["sampler", "balanced"]),
    (["--class-weights", "inverse"], ["class-weights", "auto"]),
    (["--log", "wandb"], ["log", "tensorboard"]),
])
def test_bad_options_are_one_line_and_write_nothing(tmp_path, args, words):
    out = tmp_path / "run"
    _one_line_exit_2(run_cli("train", "--data", "digits", "--out", str(out), *args), *words)
    assert not out.exists()


def test_trainer_refuses_an_empty_class_before_any_file(tmp_path):
    ds = load_dataset("digits")
    keep = ds.train.labels != 3
    empty = in_memory_dataset("digits-no3", ds.classes, "test", (ds.train.images[keep], ds.train.labels[keep]),
                              (ds.test.images, ds.test.labels))
    for option in ({"class_weights": "auto"}, {"sampler": "balanced"}):
        cfg = TrainConfig(**{**TINY, "data": "x"}, out=str(tmp_path / "run"), **option)
        with pytest.raises(CnnlabError, match="class '3'"):
            Trainer(cfg, data=empty, quiet=True).fit()
        assert not (tmp_path / "run").exists()


# ---- training with the options ------------------------------------------------------------------
def test_balanced_sampler_and_class_weights_train(tmp_path):
    seen = []

    class Count:
        def on_step_end(self, trainer, epoch, step):
            seen.append(trainer.last_step.labels)

    result = train(**{**TINY, "batch_size": 479}, val_fraction=0.0, class_weights="auto", sampler="balanced", callbacks=[Count()],
                   out=str(tmp_path / "run"), quiet=True)
    counts = torch.bincount(torch.cat(seen), minlength=10)
    assert counts.max() - counts.min() <= 1  # 3 batches of 479 (all 1,437): 143 or 144 images of each class
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (saved["class_weights"], saved["sampler"]) == ("auto", "balanced")
    assert len(result.history) == 1 and result.history[-1]["test_accuracy"] is not None


@pytest.fixture(scope="module")
def folds_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("folds") / "cv"
    proc = run_cli("train", "--data", "digits", "--epochs", "1", "--batch-size", "128", "--precision", "fp32",
                   "--folds", "3", "--seed", "4", "--out", str(out), "--quiet", "--log", "csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, proc.stdout


@pytest.mark.slow
def test_folds_write_sub_runs_whose_validation_folds_partition_train(folds_run):
    out, stdout = folds_run
    summary = json.loads((out / "folds.json").read_text())
    assert [r["path"] for r in summary["runs"]] == ["fold-1", "fold-2", "fold-3"]
    accs = [r["val_accuracy"] for r in summary["runs"]]
    assert summary["mean"]["val_accuracy"] == pytest.approx(np.mean(accs))
    assert summary["std"]["val_accuracy"] == pytest.approx(np.std(accs, ddof=1))
    assert "val_accuracy" in stdout and "±" in stdout
    train_rows = load_dataset("digits").train.images.flatten(1).numpy()
    val_rows = []
    for k in (1, 2, 3):
        meta = json.loads((out / f"fold-{k}" / "config.json").read_text())
        cfg = meta["config"]
        assert (cfg["folds"], cfg["fold"], cfg["seed"]) == (3, k, 4)
        assert meta["dataset"]["train"] + meta["dataset"]["val"] == len(train_rows)
        ds = load_data(cfg["data"], seed=cfg["seed"], folds=cfg["folds"], fold=cfg["fold"])  # as the fold trained
        assert len(ds.val) == meta["dataset"]["val"]
        val_rows += list(map(bytes, ds.val.images.flatten(1).numpy()))
        records = [json.loads(x) for x in (out / f"fold-{k}" / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["val_accuracy"] == summary["runs"][k - 1]["val_accuracy"]
    # disjoint and covering: the three validation folds together are the training images, each once
    assert sorted(val_rows) == sorted(map(bytes, train_rows))


@pytest.mark.slow
def test_compare_and_csv_log_of_the_fold_runs(folds_run, tmp_path):
    out, _ = folds_run
    png = tmp_path / "c.png"
    c = compare_runs([out], png)  # a k-fold folder stands for its folds
    assert [r.label for r in c.runs] == ["fold-1", "fold-2", "fold-3"]
    assert list(c.differing) == ["fold"]  # nothing else differs between folds
    assert png.read_bytes().startswith(PNG)
    proc = run_cli("compare", str(out / "fold-1"), str(out / "fold-2"), "--out", str(tmp_path / "d.png"))
    assert proc.returncode == 0 and "options that differ" in proc.stdout and "val_accuracy" in proc.stdout
    report = build_report([out / "fold-1", out / "fold-2"], tmp_path / "r.html", errors=4)
    page = report.path.read_text()
    assert "Runs compared" in page and page.count("<h1") == 3 and 'id="run-2-config"' in page
    rows = list(csv.DictReader((out / "fold-1" / "metrics.csv").open()))
    jsonl = json.loads((out / "fold-1" / "metrics.jsonl").read_text().splitlines()[0])
    assert float(rows[0]["val_accuracy"]) == jsonl["val_accuracy"] and rows[0]["epoch"] == "1"


def test_compare_refuses_one_run_and_writes_nothing(tmp_path):
    out = tmp_path / "c.png"
    _one_line_exit_2(run_cli("compare", str(tmp_path), "--out", str(out)), "at least two runs")
    assert not out.exists()


@pytest.mark.slow  # importing tensorboard loads TensorFlow where it is installed: seconds
def test_tensorboard_log_holds_the_scalars_and_the_confusion_image(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: PLC0415

    result = train(**TINY, log="tensorboard", out=str(tmp_path / "run"), quiet=True)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    assert {"loss/train", "accuracy/train", "accuracy/val", "lr"} <= set(tags["scalars"])
    [event] = acc.Scalars("accuracy/val")
    assert event.step == 1 and math.isclose(event.value, result.history[-1]["val_accuracy"], rel_tol=1e-6)
    assert tags["images"] == ["confusion_matrix"]
