"""The learning-rate range test: the suggestion rule on a known curve, and a short real run."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import run_cli

from cnnlab.training.lr_find import lr_find, suggest


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = list(np.logspace(-6, 0, 61))  # 10 points per decade
    # a loss that falls fastest at lr = 1e-3 (tanh's steepest point), bottoms out near 1e-1, then rises
    losses = [2.0 - math.tanh(2 * (math.log10(lr) + 3)) + (5 * (lr - 0.1) if lr > 0.1 else 0.0) for lr in lrs]
    steep, at_min = suggest(lrs, losses)
    assert steep == pytest.approx(1e-3, rel=0.3)
    assert at_min == pytest.approx(lrs[int(np.argmin(losses))])


def test_lr_find_on_digits(tmp_path):
    r = lr_find("simple_cnn", "digits", start_lr=1e-5, end_lr=1.0, steps=30, batch_size=64, out=tmp_path / "lr")
    ratios = np.array(r.lrs[1:]) / np.array(r.lrs[:-1])
    np.testing.assert_allclose(ratios, (1.0 / 1e-5) ** (1 / 29), rtol=1e-9)  # exponential sweep
    assert r.lrs[0] == pytest.approx(1e-5)
    assert 1e-5 <= r.suggestion <= 1.0 and 1e-5 <= r.min_loss_lr <= 1.0
    assert min(r.losses) < r.losses[0]  # the loss fell somewhere along the sweep
    assert (tmp_path / "lr" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_lr_find_refuses_an_empty_range(tmp_path):
    proc = run_cli("lr-find", "--data", "digits", "--start-lr", "1", "--end-lr", "0.1", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "start-lr" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
