"""Model selection off the test set (cnnlab.training.selection) and size-dependent defaults (defaults.py).

Independent truths: the class counts of the validation split from scikit-learn's own digits split and a
hand computation of round(10% of each class); the held-out and kept images as multisets of the original
training images; a training run whose test labels were shuffled must choose the same epoch with the same
weights (the test set cannot influence selection).
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import run_cli
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from cnnlab.data import load_dataset
from cnnlab.data.dataset import in_memory_dataset
from cnnlab.data.imagefolder import has_val_folder
from cnnlab.errors import CnnlabError
from cnnlab.training import TrainConfig, Trainer
from cnnlab.training.config import DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_LR
from cnnlab.training.defaults import size_defaults
from cnnlab.training.selection import holdout, load_for_training


def _rows(split) -> Counter:
    return Counter((int(y), bytes(x.numpy().tobytes())) for x, y in zip(split.images, split.labels, strict=True))


@pytest.mark.parametrize("seed", [0, 7])
def test_stratified_validation_split_is_disjoint_and_has_the_right_class_counts(seed):
    ds, sel = load_for_training("digits", val_fraction=None, seed=seed)
    # class counts of train, from scikit-learn's own split (not from cnnlab)
    raw = load_digits()
    _, _, y_train, _ = train_test_split(raw.images, raw.target, test_size=360, stratify=raw.target, random_state=0)
    per_class = np.bincount(y_train, minlength=10)
    assert per_class.tolist() == [142, 146, 142, 146, 145, 145, 145, 143, 139, 144]
    val_counts = torch.bincount(ds.val.labels, minlength=10).numpy()
    # 10% of each class, rounded: exact where 10% is no tie (14.2 -> 14, 14.6 -> 15), within a half where it is
    tie = np.isclose(0.1 * per_class % 1, 0.5)
    assert np.all(val_counts[~tie] == np.floor(0.1 * per_class[~tie] + 0.5))
    assert np.all(np.abs(val_counts - 0.1 * per_class) <= 0.5)
    assert torch.bincount(ds.train.labels, minlength=10).tolist() == (per_class - val_counts).tolist()
    # disjoint, and together exactly the original training images (as a multiset: digits has duplicates)
    original = load_dataset("digits").train
    assert _rows(ds.train) + _rows(ds.val) == _rows(original)
    assert len(ds.train) + len(ds.val) == len(original) == 1437
    # the normalisation comes from the images trained on, not the held-out ones
    pixels = ds.train.images.double() / 255
    assert ds.mean[0] == pytest.approx(float(pixels.mean()), abs=1e-9)
    assert ds.std[0] == pytest.approx(float(pixels.std(unbiased=False)), abs=1e-9)
    assert sel.chooses and sel.val_images == int(val_counts.sum()) == len(ds.val) and sel.fraction == 0.1


def test_dataset_objects_are_split_the_same_way_and_their_own_val_is_used():
    named, _ = load_for_training("digits", val_fraction=0.2, seed=3)
    base = load_dataset("digits")
    obj, sel = load_for_training(base, val_fraction=0.2, seed=3)
    assert torch.equal(obj.val.images, named.val.images) and torch.equal(obj.train.labels, named.train.labels)
    assert obj.mean == named.mean and base.val is None and len(base.train) == 1437  # the caller's object untouched
    own, sel = load_for_training(holdout(base, 0.25, 1), val_fraction=None, seed=0)
    assert sel.chooses and sel.fraction is None and sel.val_images == len(own.val) and "own" in sel.source
    with pytest.raises(CnnlabError, match="own validation split"):
        load_for_training(holdout(base, 0.25, 1), val_fraction=0.1, seed=0)
    none, sel = load_for_training(base, val_fraction=0.0, seed=0)
    assert not sel.chooses and sel.chosen_by == "last" and none.val is None and len(none.train) == 1437


def test_imagefolder_with_train_val_test_brings_its_own_validation(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / "three" / split / "a").mkdir(parents=True)
    for split in ("train", "test"):
        (tmp_path / "two" / split / "a").mkdir(parents=True)
    assert has_val_folder(tmp_path / "three") and not has_val_folder(tmp_path / "two")
    assert not has_val_folder(tmp_path / "missing")


def _digits_with(test_labels=None):
    ds = load_dataset("digits")
    labels = ds.test.labels if test_labels is None else test_labels
    return in_memory_dataset("digits", ds.classes, ds.source, (ds.train.images, ds.train.labels),
                             (ds.test.images, labels))


def test_shuffled_test_labels_change_no_chosen_epoch_and_no_weight():
    """Training sees the test set after every epoch here (eval_test_every_epoch): even so, shuffling its
    labels changes the test figures only, never the chosen epoch nor a single weight."""
    opts = dict(model="simple_cnn", epochs=3, batch_size=64, lr=3e-3, seed=1, eval_test_every_epoch=True,
                precision="fp32")
    plain = Trainer(TrainConfig(**opts), data=_digits_with(), save=False, quiet=True).fit()
    labels = load_dataset("digits").test.labels
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))]
    assert (shuffled != labels).float().mean() > 0.8
    other = Trainer(TrainConfig(**opts), data=_digits_with(shuffled), save=False, quiet=True).fit()
    assert other.best_epoch == plain.best_epoch and other.chosen_by == plain.chosen_by == "val"
    assert [h["val_accuracy"] for h in other.history] == [h["val_accuracy"] for h in plain.history]
    a, b = plain.model.state_dict(), other.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the test figures did change: the test set was really evaluated, on chosen weights that learned
    assert plain.test_accuracy > 0.8 and other.test_accuracy < 0.3
    assert [h["test_accuracy"] for h in other.history] != [h["test_accuracy"] for h in plain.history]


def test_val_fraction_zero_trains_on_everything_and_keeps_the_last_weights():
    captured = {}

    class Last:
        def on_epoch_end(self, trainer, epoch, metrics):
            captured[epoch + 1] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    cfg = TrainConfig(model="simple_cnn", data="digits", epochs=2, batch_size=64, lr=3e-3, val_fraction=0.0)
    trainer = Trainer(cfg, save=False, quiet=True, callbacks=[Last()])
    result = trainer.fit()
    assert len(trainer.dataset.train) == 1437 and trainer.dataset.val is None
    assert result.chosen_by == "last" and result.best_epoch == 2 and result.val_accuracy is None
    assert [h["test_accuracy"] is None for h in result.history] == [True, False]  # once, on the last weights
    assert result.best_accuracy == result.test_accuracy == result.history[-1]["test_accuracy"]
    state = result.model.state_dict()
    assert all(torch.equal(state[k], captured[2][k]) for k in state)


def test_size_defaults_by_hand():
    cfg = TrainConfig(model="simple_cnn", data="digits")
    small, notes = size_defaults(cfg, 1295)
    # 1295 // 128 = 10 and 1295 // 64 = 20 steps per epoch: batch 64; 500 / 20 = 25 epochs
    assert (small.batch_size, small.epochs, small.lr) == (64, 25, 3e-3) and set(notes) == {"batch_size", "epochs", "lr"}
    assert "20 steps per epoch" in notes["batch_size"] and "500 steps" in notes["epochs"]
    large, notes = size_defaults(cfg, 54_000)  # Fashion-MNIST less its validation split: 421 x 10 steps
    assert (large.batch_size, large.epochs, large.lr, notes) == (DEFAULT_BATCH, DEFAULT_EPOCHS, None, {})
    assert large.resolved().lr == DEFAULT_LR["adamw"]
    mid, notes = size_defaults(cfg, 5_000)  # 39 steps per epoch at 128: the batch stays, 13 epochs make 507
    assert (mid.batch_size, mid.epochs, mid.lr) == (128, 13, 3e-3) and set(notes) == {"epochs", "lr"}
    tiny, _ = size_defaults(cfg, 100)  # at least 16 images a batch, at most 100 epochs
    assert (tiny.batch_size, tiny.epochs) == (16, 84)
    assert math.ceil(500 / (100 // 16)) == 84
    # explicit options always win; with max_steps the epochs do not matter
    given, notes = size_defaults(TrainConfig(epochs=5, batch_size=32, lr=1e-3, optimizer="adam"), 1295)
    assert (given.batch_size, given.epochs, given.lr, notes) == (32, 5, 1e-3, {})
    sgd, notes = size_defaults(TrainConfig(optimizer="sgd"), 1295)
    assert sgd.lr is None and "lr" not in notes  # SGD keeps its own default rate
    steps, _ = size_defaults(TrainConfig(max_steps=30), 1295)
    assert steps.epochs is None


@pytest.mark.slow
def test_cli_prints_validation_and_test_separately_and_records_why(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--model", "simple_cnn", "--data", "digits", "--epochs", "2", "--quiet", "--out", str(out),
                   check=True)
    text = proc.stdout
    assert "val loss" in text and "test loss" not in text  # per epoch: validation only
    assert "chosen weights: epoch" in text and "best validation accuracy" in text
    assert "evaluated once on the chosen weights" in text
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["selection"]["chosen_by"] == "val" and cfg["config"]["val_fraction"] == 0.1
    assert cfg["config"]["batch_size"] == 64 and cfg["config"]["epochs"] == 2 and cfg["config"]["lr"] == 3e-3
    assert set(cfg["defaults"]) == {"batch_size", "lr"}  # epochs were given
    card = json.loads((out / "best.json").read_text())
    shown = run_cli("eval", str(out), "--split", "val", check=True).stdout
    assert "chosen by validation accuracy" in shown
    assert f"accuracy {100 * card['extra']['val_accuracy']:.2f}% on 142 images" in shown  # the run's own split
