"""The classics and augmentation experiments: quick runs write valid results, checked against independent counts."""

from __future__ import annotations

import pytest
import torch
from conftest import check_experiment_files, needs_fashion

from cnnlab.experiments import run_experiment
from cnnlab.experiments._common import stratified_indices, subset_dataset
from cnnlab.experiments.augmentation import SIZES as AUG_SIZES
from cnnlab.experiments.augmentation import is_noop
from cnnlab.experiments.classics import CLASSICS


def test_stratified_indices_take_the_same_number_of_every_class():
    labels = torch.randint(0, 7, (2_000,), generator=torch.Generator().manual_seed(1))
    idx = stratified_indices(labels, 20, seed=3)
    assert torch.bincount(labels[idx], minlength=7).tolist() == [20] * 7
    assert len(set(idx.tolist())) == len(idx) == 140  # no image twice
    assert torch.equal(idx, stratified_indices(labels, 20, seed=3))  # seeded
    assert not torch.equal(idx, stratified_indices(labels, 20, seed=4))
    assert torch.equal(stratified_indices(labels, None, seed=0), torch.arange(2_000))


@needs_fashion
def test_augmentation_reduced_sets_are_balanced():
    from cnnlab.data import load_dataset

    full = load_dataset("fashion-mnist")
    assert AUG_SIZES["default"]["train"] == (100, 400)  # 1,000 and 4,000 images
    idx = stratified_indices(full.train.labels, AUG_SIZES["default"]["train"][1], seed=0)
    ds = subset_dataset(full, idx, torch.arange(10))
    assert len(ds.train) == 4_000
    assert torch.bincount(ds.train.labels, minlength=10).tolist() == [400] * 10
    assert torch.equal(ds.train.images, full.train.images[idx])
    # statistics are those of the kept images, computed directly here
    assert ds.mean[0] == pytest.approx(ds.train.images.double().mean().item() / 255, abs=1e-9)


def test_saturation_is_a_noop_on_grey_images_only():
    g = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (16, 1, 12, 12), dtype=torch.uint8, generator=g)
    colour = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=g)
    assert is_noop("saturation:0.3", grey)
    assert not is_noop("saturation:0.3", colour)
    assert not is_noop("exposure:0.3", grey)


def test_classics_parameter_counts_are_the_models_own():
    """The table's parameter column (traced on the meta device) equals sum(p.numel()) of the real model."""
    from cnnlab.experiments.classics import measure_cost
    from cnnlab.models import resolve_model

    for classic in CLASSICS:
        model, _ = resolve_model(classic.model, (1, 28, 28), 10, classic.options)
        params, macs = measure_cost(classic, (1, 28, 28), 10)
        assert params == sum(p.numel() for p in model.parameters()), classic.label
    # LeNet-5 as taught: 156 + 2,416 + 48,120 + 10,164 + 850 parameters; MACs by hand at 28x28 (C1 padded)
    assert measure_cost(CLASSICS[0], (1, 28, 28), 10) == (
        61_706, 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10)


@needs_fashion
@pytest.mark.slow
@pytest.mark.long
def test_classics_quick(tmp_path):
    result = run_experiment("classics", out=tmp_path, quick=True, progress=False)
    saved = check_experiment_files(tmp_path / "classics")
    rows = saved["outcome"]["rows"]
    assert [r["model"] for r in rows] == ["LeNet-5", "AlexNet-style", "VGG-style", "ResNet-20"]
    assert [r["year"] for r in rows] == [1998, 2012, 2014, 2015]
    assert rows[0]["params"] == 61_706
    # ResNet-20: 269,722 parameters on 3-channel CIFAR images (0.27 M in the paper's Table 6); one input
    # channel removes 2 of the first conv's 3 x 16 x 3 x 3 weights per filter
    assert rows[-1]["params"] == 269_722 - 2 * 16 * 3 * 3
    for r in rows:
        assert 0.0 <= r["accuracy"]["mean"] <= 1.0 and r["train_s"]["mean"] > 0 and r["macs"] > 0
        assert r["accuracy"]["n"] == 1 and r["per_seed"] == [r["accuracy"]["mean"]]
    assert saved["verdict"] == "inconclusive"  # one seed decides nothing
    assert "| LeNet-5 | 1998 | 61,706 |" in (tmp_path / "classics" / "table.md").read_text()
    assert result.outcome.rows == rows


@needs_fashion
@pytest.mark.slow
@pytest.mark.long
def test_augmentation_quick(tmp_path):
    run_experiment("augmentation", out=tmp_path, quick=True, progress=False)
    saved = check_experiment_files(tmp_path / "augmentation")
    sizes = sorted({r["train_images"] for r in saved["outcome"]["rows"]})
    assert sizes == [200, 500]  # two training-set sizes
    for n in sizes:
        rows = {r["augmentation"]: r for r in saved["outcome"]["rows"] if r["train_images"] == n}
        assert list(rows) == ["none", "reflection", "random crop", "random scaling", "exposure", "saturation",
                              "contrast (grey stand-in for saturation)", "all five (lecture preset)"]
        assert rows["saturation"]["test"] is None  # grayscale: not trained, and the table says why
        assert "no-op" in rows["saturation"]["pipeline"]
        assert rows["all five (lecture preset)"]["pipeline"] == "lecture"
        for name, r in rows.items():
            if name in ("saturation", "none"):
                continue
            assert 0.0 <= r["test"]["mean"] <= 1.0
            assert r["delta"]["mean"] == pytest.approx(r["test"]["mean"] - rows["none"]["test"]["mean"])
            assert r["effect"].startswith("unclear")  # one seed
    assert saved["verdict"] == "inconclusive"
    assert any("grayscale" in n for n in saved["outcome"]["notes"])


def test_own_budget_climbs_the_ladder_while_validation_improves():
    # a run climbs the ladder of budgets while the longer run validates better (accuracy, then lower loss)
    # and keeps the best run: a scripted validation table stands in for training
    from types import SimpleNamespace

    from cnnlab.experiments._common import own_budget

    table = {6: (0.80, 0.60), 12: (0.83, 0.55), 24: (0.83, 0.50), 48: (0.83, 0.52)}
    trained = []

    def fake_run(epochs):
        trained.append(epochs)
        val, loss = table[epochs]
        return {"val": val, "val_loss": loss, "test": 0.0}

    progress = SimpleNamespace(total=4, step=lambda *a, **k: None)
    ctx = SimpleNamespace(progress=progress)
    best = own_budget(ctx, [6, 12, 24, 48], fake_run, "none")
    assert best["epochs"] == 24  # 12 beat 6 on accuracy, 24 tied 12 on accuracy with a lower loss, 48 did not
    assert trained == [6, 12, 24, 48] and progress.total == 4
    table[12] = (0.79, 0.40)  # worse accuracy at 12 epochs: stop there, keep 6, skip the rest
    trained.clear()
    assert own_budget(ctx, [6, 12, 24, 48], fake_run, "none")["epochs"] == 6
    assert trained == [6, 12] and progress.total == 2  # the two budgets not needed leave the progress total
