"""`transfer --strategy auto` decides by measurement on the training set: the validation splits
(stratified, disjoint, seeded), the choice (within one standard error of the best, the strategy that adapts the most weights), and that the test set takes
no part in it (scrambling the test labels and images changes nothing `auto` measured or chose)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from cnnlab.data.dataset import in_memory_dataset
from cnnlab.models.spec import build_spec
from cnnlab.transfer_learning.api import _Session
from cnnlab.transfer_learning.auto import Candidate, select, validation_splits
from cnnlab.transfer_learning.backbone import Backbone, weights_digest


@pytest.mark.parametrize("per_class", [2, 5, 10, 34])
def test_cross_validation_folds_are_stratified_disjoint_and_cover_train(per_class):
    labels = torch.arange(10).repeat_interleave(per_class)[torch.randperm(10 * per_class, generator=torch.Generator().manual_seed(1))]
    text, splits = validation_splits(labels, seed=3)
    k = min(3, per_class)
    assert len(splits) == k and f"{k}-fold" in text
    held_all = torch.cat([h for _, h in splits])
    assert sorted(held_all.tolist()) == list(range(len(labels)))  # every image held out exactly once
    for fit_idx, held_idx in splits:
        assert not set(fit_idx.tolist()) & set(held_idx.tolist())
        assert len(fit_idx) + len(held_idx) == len(labels)
        counts = torch.bincount(labels[held_idx], minlength=10)
        # stratified: each class contributes floor or ceil of its count / k
        assert int(counts.min()) >= per_class // k and int(counts.max()) <= -(-per_class // k)
    again = validation_splits(labels, seed=3)[1]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(splits, again, strict=True))  # seeded
    other = validation_splits(labels, seed=4)[1]
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(splits, other, strict=True))


def test_large_training_set_gets_one_stratified_holdout():
    labels = torch.arange(5).repeat_interleave(1000)  # 5,000 images > cv_limit
    text, splits = validation_splits(labels, seed=0)
    assert len(splits) == 1 and "holdout" in text
    fit_idx, held_idx = splits[0]
    assert len(held_idx) == 1000  # min(20%, 2,000 images)
    assert torch.bincount(labels[held_idx]).tolist() == [200] * 5
    assert not set(fit_idx.tolist()) & set(held_idx.tolist()) and len(fit_idx) == 4000


def _scripted(fixed: dict[str, list[float]], held: int, folds: int = 2):
    """Candidates whose fold scores are given, and `folds` splits of `held` held-out images each."""
    splits = [(torch.tensor([0]), torch.arange(held))] * folds
    calls = {k: iter(v) for k, v in fixed.items()}
    return [Candidate(k, "pre_logits", "h", lambda f, h, k=k: next(calls[k])) for k in fixed], splits


def test_select_takes_the_best_when_the_others_are_beyond_its_noise():
    # 2 folds of 500 held-out images: n = 1,000; best mean p = 0.90, se = sqrt(0.9 * 0.1 / 1000) = 0.949 points
    cands, splits = _scripted({"features": [0.91, 0.89], "finetune": [0.88, 0.88], "retrain": [0.89, 0.88]}, 500)
    sel = select(cands, splits, "p", lecture="finetune", lecture_layer="pre_logits")
    assert sel.held_out == 1000 and sel.noise == pytest.approx(math.sqrt(0.9 * 0.1 / 1000))
    # retrain's mean 0.885 is 1.5 points below: outside the noise, so the cheaper, better features win
    assert sel.choice["strategy"] == "features" and not sel.agrees
    assert "disagrees" in sel.verdict() and "validation 88.00%" in sel.verdict()
    assert "1,000 held-out predictions" in sel.rule() and "0.95 points" in sel.rule()


def test_select_gives_a_difference_within_noise_to_the_more_adaptive_strategy():
    # n = 2 x 150 = 300, p = 0.90: se = sqrt(0.09 / 300) = 1.73 points; finetune 0.90, retrain 0.89 (1 point
    # below: within), features 0.87 (3 points below: outside) -> retrain, marked in the table
    cands, splits = _scripted({"features": [0.87, 0.87], "finetune": [0.90, 0.90], "retrain": [0.89, 0.89]}, 150)
    sel = select(cands, splits, "p", lecture="features", lecture_layer="pre_logits")
    assert sel.choice["strategy"] == "retrain"
    assert [r.get("within_noise", False) for r in sel.rows] == [False, True, True]
    assert "within noise of the best" in sel.table()
    # an exact tie of the same strategy at two layers goes to the earlier (cheaper) one
    tie = [Candidate("features", layer, "h", lambda f, h: 0.5) for layer in ("pre_logits", "layer2")]
    sel = select(tie, splits, "p", lecture="features", lecture_layer="pre_logits")
    assert sel.choice["layer"] == "pre_logits" and sel.agrees and "agrees" in sel.verdict()


class _Untouchable:
    """A test split that fails on any use: what `auto` decides from must not read it."""

    def __getattr__(self, name):
        raise AssertionError(f"the test set was read ({name})")

    def __len__(self):
        raise AssertionError("the test set was read (len)")


@pytest.mark.slow  # ~6 s on 2 idle AVX2 cores: 9 short training runs (each Trainer set-up ~0.4 s)
def test_auto_choice_never_reads_the_test_set(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(12) % 3
    images = (torch.rand(12, 1, 12, 12, generator=g) * 80).to(torch.uint8)
    for c in range(3):  # each class a bright bar in its own rows
        images[labels == c, :, 4 * c:4 * c + 3, 2:10] += 150
    ds = in_memory_dataset("toy", ["a", "b", "c"], "test", (images, labels), (images[:3], labels[:3]))
    ds = dataclasses.replace(ds, test=_Untouchable())
    torch.manual_seed(0)
    net = build_spec("conv3x3-8 maxpool2 fc3", (1, 12, 12)).eval()  # 288 features: a small, fast backbone
    bb = Backbone(net, "tiny", "random", (1, 12, 12), None, None, weights_digest(net),
                  fresh=lambda: build_spec("conv3x3-8 maxpool2 fc3", (1, 12, 12)))
    s = _Session(bb, ds, ds.train, image_size=None, cache_dir=tmp_path, device="cpu", precision="fp32", seed=0,
                 steps=1, lr=3e-3, batch_size=8, log=lambda *_: None)
    case, _, sel = s.choose("pre_logits", "logreg", large_per_class=500, steps=1)
    assert case.startswith("case ") and "small data" in case  # the lecture's rule, named and explained
    assert "3-fold" in sel.protocol
    assert [r["strategy"] for r in sel.rows] == ["features", "finetune", "retrain"]
    assert all(len(r["scores"]) == 3 and 0.0 <= r["accuracy"] <= 1.0 for r in sel.rows)
    assert sel.choice["accuracy"] == max(r["accuracy"] for r in sel.rows)
