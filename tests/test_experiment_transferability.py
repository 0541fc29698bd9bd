"""The transferability experiment: the class split, the copying and freezing of layers, a quick run."""

from __future__ import annotations

import pytest
import torch
from conftest import check_experiment_files, needs_fashion

from cnnlab.data.dataset import in_memory_dataset
from cnnlab.experiments import run_experiment
from cnnlab.experiments._common import fit
from cnnlab.experiments.transferability import (
    TREATMENTS,
    build_net,
    split_classes,
    task_dataset,
    transfer_net,
    weight_layers,
)

SIZE = (1, 28, 28)


def _toy(num_classes: int = 4, per_class: int = 16, seed: int = 0):
    """Random 28x28 images whose class is the value of pixel (0, 0), so provenance can be checked."""
    gen = torch.Generator().manual_seed(seed)
    n = num_classes * per_class
    labels = torch.arange(n) % num_classes
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    images[:, 0, 0, 0] = labels.to(torch.uint8)
    return in_memory_dataset("toy", [f"c{i}" for i in range(num_classes)], "test", (images, labels),
                             (images.clone(), labels.clone()))


def test_split_classes_is_a_seeded_partition():
    a, b = split_classes(10, seed=0)
    assert len(a) == len(b) == 5 and sorted(a + b) == list(range(10))
    assert split_classes(10, seed=0) == (a, b)
    assert any(split_classes(10, seed=s) != (a, b) for s in range(1, 5))


def test_task_dataset_relabels_and_keeps_only_its_classes():
    ds = _toy(num_classes=4, per_class=16)
    task = task_dataset(ds, [1, 3], per_class=5, test_per_class=3, seed=0, name="toy-B")
    assert task.classes == ["c1", "c3"]
    assert torch.bincount(task.train.labels).tolist() == [5, 5]
    assert torch.bincount(task.test.labels).tolist() == [3, 3]
    original = task.train.images[:, 0, 0, 0].long()  # the original class each image came from
    assert torch.equal(original, torch.tensor([1, 3])[task.train.labels])


@pytest.mark.parametrize("n", [1, 2, 4])
def test_transfer_net_copies_exactly_the_first_n_layers(n):
    base = build_net(5, SIZE, seed=0)
    net = transfer_net(base, n, frozen=False, num_classes=5, input_size=SIZE, seed=123)
    src, dst = weight_layers(base), weight_layers(net)
    assert len(src) == len(dst) == 5
    for i, (s, d) in enumerate(zip(src, dst, strict=True)):
        same = torch.equal(s.weight, d.weight) and torch.equal(s.bias, d.bias)
        assert same == (i < n), f"layer {i}: copied={same}, expected {i < n}"
        assert d.weight.data_ptr() != s.weight.data_ptr()  # a copy, not the same tensor
    with pytest.raises(ValueError, match="classifier"):
        transfer_net(base, 5, frozen=False, num_classes=5, input_size=SIZE, seed=0)


@pytest.mark.slow
def test_frozen_layers_stay_unchanged_and_fine_tuned_ones_move():
    data = task_dataset(_toy(num_classes=4, per_class=16), [0, 1, 2, 3], 16, 4, seed=0, name="toy")
    base = build_net(4, SIZE, seed=0)
    before = [m.weight.detach().clone() for m in weight_layers(base)]
    frozen = transfer_net(base, 2, frozen=True, num_classes=4, input_size=SIZE, seed=7)
    tuned = transfer_net(base, 2, frozen=False, num_classes=4, input_size=SIZE, seed=7)
    initial_top = weight_layers(frozen)[2].weight.detach().clone()
    for net in (frozen, tuned):
        fit(net, data, epochs=1, batch_size=16, lr=1e-2, optimizer="adamw", seed=0, device="cpu")
    for i in range(2):
        w = weight_layers(frozen)[i].weight.detach().float().cpu()
        assert torch.equal(w, before[i]), f"frozen layer {i} changed"
        assert not torch.equal(weight_layers(tuned)[i].weight.detach().float().cpu(), before[i])
    assert not torch.equal(weight_layers(frozen)[2].weight.detach().float().cpu(), initial_top)


@needs_fashion
@pytest.mark.slow
def test_transferability_quick(tmp_path):
    run_experiment("transferability", out=tmp_path, quick=True, progress=False)
    folder = tmp_path / "transferability"
    saved = check_experiment_files(folder)
    rows = saved["outcome"]["rows"]
    assert [r["n"] for r in rows] == [1, 2, 3, 4]
    assert saved["outcome"]["columns"] == ["n", *TREATMENTS, "baseB"]
    assert all(0.0 <= r[t]["mean"] <= 1.0 for r in rows for t in (*TREATMENTS, "baseB"))
    assert len({r["baseB"]["mean"] for r in rows}) == 1  # one reference net per seed
    assert "| n (layers copied) |" in (folder / "table.md").read_text()
