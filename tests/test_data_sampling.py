"""Imbalanced classes and folds in the data layer: inverse-frequency weights against scikit-learn, balanced
epoch orders under simulated DDP ranks (disjoint shards, equal class counts), stratified folds and
long-tailed subsets against set arithmetic and hand-computed counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from cnnlab.data import MemorySplit, load_dataset
from cnnlab.data.sampling import balanced_order, class_weights
from cnnlab.data.subsets import long_tailed, stratified_folds, with_fold
from cnnlab.errors import CnnlabError

K = 5
# a 10:1 imbalance: class c has 100 // (1 + 2c) images (100, 33, 20, 14, 11), shuffled
LABELS = torch.cat([torch.full((100 // (1 + 2 * c),), c) for c in range(K)])[torch.randperm(178, generator=torch.Generator().manual_seed(1))]


def test_class_weights_are_scikit_learns_balanced_weights():
    expected = compute_class_weight("balanced", classes=np.arange(K), y=LABELS.numpy())
    assert np.allclose(class_weights(LABELS, [str(c) for c in range(K)]).numpy(), expected, rtol=1e-6)


def test_class_weights_refuse_an_empty_class():
    with pytest.raises(CnnlabError, match="class 'c5' .*has none"):
        class_weights(LABELS, [f"c{c}" for c in range(K + 1)])


@pytest.mark.parametrize("epoch", [0, 3])
def test_two_ranks_draw_disjoint_shards_with_the_same_class_counts(epoch):
    shards = [balanced_order(LABELS, K, seed=7, epoch=epoch, rank=r, world_size=2) for r in (0, 1)]
    counts = [torch.bincount(LABELS[s], minlength=K) for s in shards]
    assert (counts[0] - counts[1]).abs().max() <= 1  # the same class balance on both ranks
    assert not set(shards[0].tolist()) & set(shards[1].tolist())  # no image on both ranks
    for s, c in zip(shards, counts, strict=True):
        assert len(s) == len(LABELS) // 2  # the length plain sharding gives a rank
        assert c.max() - c.min() <= 1  # every class equally often, 10:1 imbalance or not


def test_balanced_order_is_a_pure_function_of_its_arguments():
    a = balanced_order(LABELS, K, seed=3, epoch=1)
    assert torch.equal(a, balanced_order(LABELS, K, seed=3, epoch=1))
    assert not torch.equal(a, balanced_order(LABELS, K, seed=3, epoch=2))
    assert not torch.equal(a, balanced_order(LABELS, K, seed=4, epoch=1))


def test_balanced_order_repeats_rare_images_evenly_and_draws_common_ones_once():
    order = balanced_order(LABELS, K, seed=0, epoch=0)  # 178 draws: 35 or 36 per class
    uses = torch.bincount(order, minlength=len(LABELS))
    for c in range(K):
        u = uses[LABELS == c]
        assert u.max() - u.min() <= 1  # class 4's 11 images drawn 3 or 4 times each, class 0's 0 or 1


def test_balanced_order_needs_an_image_of_each_class_per_rank():
    labels = torch.tensor([0, 0, 0, 1])
    with pytest.raises(CnnlabError, match="at least 2 images of each class"):
        balanced_order(labels, 2, seed=0, epoch=0, rank=0, world_size=2)


def test_batches_follow_a_given_order():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    split = MemorySplit(images, torch.arange(10))
    order = torch.tensor([3, 3, 9, 0])
    got = torch.cat([y for _, y in split.batches(3, order=order)])
    assert got.tolist() == [3, 3, 9, 0]


def test_stratified_folds_are_disjoint_cover_everything_and_follow_the_seed():
    folds = stratified_folds(LABELS, 5, seed=11)
    every = torch.cat(folds)
    assert sorted(every.tolist()) == list(range(len(LABELS)))  # disjoint and covering
    per_class = torch.stack([torch.bincount(LABELS[f], minlength=K) for f in folds])  # (folds, K)
    assert (per_class.max(0).values - per_class.min(0).values).max() <= 1  # stratified
    assert all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(LABELS, 5, seed=11), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(LABELS, 5, seed=12), strict=True))


def test_with_fold_splits_train_into_the_other_folds_and_this_one():
    ds = load_dataset("digits")
    seen = []
    for k in (1, 2, 3):
        f = with_fold(ds, k, 3, seed=0)
        assert len(f.train) + len(f.val) == len(ds.train)
        seen.append(f.val.images.flatten(1))
        assert torch.equal(f.test.images, ds.test.images)
    # the validation images of the three folds, together, are the training images (as multisets of rows)
    together = torch.cat(seen).numpy()
    assert sorted(map(bytes, together)) == sorted(map(bytes, ds.train.images.flatten(1).numpy()))


def test_folds_refuse_one_fold_and_too_few_images():
    with pytest.raises(CnnlabError, match="folds must be an integer from 2"):
        stratified_folds(LABELS, 1, seed=0)
    with pytest.raises(CnnlabError, match="largest has 2"):
        stratified_folds(torch.tensor([0, 0, 1, 1]), 3, seed=0)


def test_long_tailed_keeps_the_exponential_profile_counts():
    ds = load_dataset("digits")
    lt = long_tailed(ds, 10, seed=0)
    n = int(torch.bincount(ds.train.labels).min())
    expected = [max(1, round(n * 10 ** (-c / 9))) for c in range(10)]  # n, ..., n / 10
    assert torch.bincount(lt.train.labels, minlength=10).tolist() == expected
    assert expected[0] / expected[-1] == pytest.approx(10, rel=0.05)
    assert len(lt.test) == len(ds.test)
    assert torch.equal(long_tailed(ds, 10, seed=0).train.labels, lt.train.labels)  # reproducible
