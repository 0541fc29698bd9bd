"""The why-conv and depth experiments: parameter counts by hand, receptive fields by recurrence, quick runs."""

from __future__ import annotations

import pytest
import torch
from conftest import check_experiment_files, needs_fashion

from cnnlab.experiments import run_experiment
from cnnlab.experiments._common import subsample
from cnnlab.experiments.depth import closed_form_rf, depth_spec
from cnnlab.experiments.why_conv import NETS
from cnnlab.models import resolve_model


def _params(spec: str) -> int:
    model, _ = resolve_model(spec, (1, 28, 28), 10)
    return sum(p.numel() for p in model.parameters())


def _hand_counts() -> dict[str, int]:
    """The lecture's formulas, written out for the three 28x28x1 nets of `NETS`."""
    dense = (784 * 256 + 256) + (256 * 128 + 128) + (128 * 10 + 10)
    # a locally connected layer: one (C*3*3) kernel and one bias per output channel AND per position
    local = (28 * 28) * 16 * (1 * 9 + 1) + (14 * 14) * 32 * (16 * 9 + 1) + (7 * 7 * 32 * 10 + 10)
    conv = 16 * (1 * 9 + 1) + 32 * (16 * 9 + 1) + (7 * 7 * 32 * 10 + 10)
    return {"dense": dense, "local": local, "conv": conv}


def test_why_conv_parameter_counts_match_hand_formulas():
    hand = _hand_counts()
    for name, spec in NETS.items():
        assert _params(spec) == hand[name], name
    # weight sharing: the local net has as many connections as the conv but ~50x the parameters
    assert hand["local"] > 50 * hand["conv"]


def _rf_by_recurrence(layers: list[tuple[int, int]]) -> int:
    """r_out = r_in + (k - 1) * jump_in; jump_out = jump_in * stride (Araujo et al. 2019)."""
    r, jump = 1, 1
    for k, s in layers:
        r += (k - 1) * jump
        jump *= s
    return r


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
def test_depth_closed_forms_against_recurrence(depth):
    assert closed_form_rf(depth, pool=False) == _rf_by_recurrence([(3, 1)] * depth) == 1 + 2 * depth
    # with pooling, the last conv comes after d-1 (conv, pool) pairs
    pooled = [(3, 1), (2, 2)] * (depth - 1) + [(3, 1)]
    assert closed_form_rf(depth, pool=True) == _rf_by_recurrence(pooled)


def test_depth_spec_parameter_count():
    for depth in (1, 3):
        for pool in (False, True):
            expect = 16 * (9 + 1) + (depth - 1) * 16 * (16 * 9 + 1) + (16 * 10 + 10)
            assert _params(depth_spec(depth, pool)) == expect


def test_subsample_is_balanced_and_keeps_labels():
    from cnnlab.data.dataset import in_memory_dataset

    images = torch.arange(60, dtype=torch.uint8).view(60, 1, 1, 1).expand(60, 1, 2, 2).contiguous()
    labels = torch.arange(60) % 3  # image value v has class v % 3
    ds = in_memory_dataset("toy", ["a", "b", "c"], "test", (images, labels), (images[:30], labels[:30]))
    sub = subsample(ds, 4, 2, seed=1)
    assert torch.bincount(sub.train.labels).tolist() == [4, 4, 4]
    assert torch.bincount(sub.test.labels).tolist() == [2, 2, 2]
    assert torch.equal(sub.train.images[:, 0, 0, 0].long() % 3, sub.train.labels)
    again = subsample(ds, 4, 2, seed=1)
    assert torch.equal(again.train.images, sub.train.images)


@needs_fashion
@pytest.mark.slow
def test_why_conv_quick(tmp_path):
    res = run_experiment("why-conv", out=tmp_path, quick=True, progress=False)
    saved = check_experiment_files(tmp_path / "why-conv")
    rows = {r["net"]: r for r in saved["outcome"]["rows"]}
    assert set(rows) == {"dense", "local", "conv"}
    hand = _hand_counts()
    assert {k: r["params"] for k, r in rows.items()} == hand
    # a conv and a local layer of the same shape make the same multiply-adds (the local one just shares nothing)
    assert rows["conv"]["macs"] == rows["local"]["macs"]
    assert all(0.0 <= r["accuracy"]["mean"] <= 1.0 for r in rows.values())
    assert res.outcome.supported is None  # one seed: the interval rule cannot decide, so inconclusive
    assert "inconclusive at quick size" in (tmp_path / "why-conv" / "table.md").read_text()


@needs_fashion
@pytest.mark.slow
def test_depth_quick(tmp_path):
    run_experiment("depth", out=tmp_path, quick=True, progress=False)
    rows = check_experiment_files(tmp_path / "depth")["outcome"]["rows"]
    plain = [r for r in rows if not r["pool"]]
    pooled = [r for r in rows if r["pool"]]
    assert [r["depth"] for r in plain] == [1, 2, 3] and [r["depth"] for r in pooled] == [1, 2]
    # the traced receptive field equals the closed form 1 + 2d and the recurrence with pooling
    assert [r["rf"] for r in plain] == [1 + 2 * d for d in (1, 2, 3)]
    assert [r["rf"] for r in pooled] == [_rf_by_recurrence([(3, 1), (2, 2)] * (d - 1) + [(3, 1)]) for d in (1, 2)]
    assert [r["params"] for r in plain] == [_params(depth_spec(d, False)) for d in (1, 2, 3)]
