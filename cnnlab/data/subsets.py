"""Datasets derived from a loaded one: stratified k-fold validation parts and long-tailed (imbalanced) subsets.

    >>> from cnnlab.data import load_dataset
    >>> from cnnlab.data.subsets import long_tailed, with_fold
    >>> ds = long_tailed(load_dataset("digits"), ratio=10, seed=0)   # class 0 keeps all, class 9 a tenth
    >>> fold2 = with_fold(load_dataset("digits"), fold=2, folds=5, seed=0)  # val = fold 2 of train

The folds are scikit-learn's `StratifiedKFold(folds, shuffle=True)`: disjoint validation parts that cover
the training split, each class spread over the folds as evenly as its count allows; the same seed gives
the same folds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from cnnlab.data.dataset import Dataset
from cnnlab.data.memory import channel_stats
from cnnlab.data.sampling import class_counts
from cnnlab.errors import CnnlabError

MAX_FOLDS = 100


def check_folds(folds: int, fold: int | None = None) -> None:
    """`folds` in 2..MAX_FOLDS and `fold` (1-based) in 1..folds; `CnnlabError` saying what would work."""
    if not isinstance(folds, int) or isinstance(folds, bool) or not 2 <= folds <= MAX_FOLDS:
        raise CnnlabError(f"folds must be an integer from 2 to {MAX_FOLDS} (k-fold cross-validation trains one run "
                          f"per fold; 5 is usual), got {folds!r}")
    if fold is not None and (not isinstance(fold, int) or isinstance(fold, bool) or not 1 <= fold <= folds):
        raise CnnlabError(f"fold must be an integer from 1 to folds ({folds}), got {fold!r}")


def stratified_folds(labels: Tensor, folds: int, seed: int) -> list[Tensor]:
    """The validation indices (sorted int64) of each of `folds` stratified folds of `labels` (N,), seeded."""
    from sklearn.model_selection import StratifiedKFold  # noqa: PLC0415 - scikit-learn is slow to import

    check_folds(folds)
    y = torch.as_tensor(labels).numpy()
    if len(y) < folds:
        raise CnnlabError(f"{folds} folds need at least {folds} training images, the split has {len(y)}")
    counts = np.bincount(y)
    if counts.max() < folds:  # scikit-learn refuses this; every class would miss from some fold
        raise CnnlabError(f"{folds} folds need a class with at least {folds} images; the largest has {counts.max()}; "
                          "use fewer folds")
    # StratifiedKFold takes a 32-bit seed; the run's seed may have 63 bits
    kf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(seed) % (1 << 32))
    return [torch.from_numpy(np.sort(val)).to(torch.int64) for _, val in kf.split(np.zeros(len(y)), y)]


def _restat(ds: Dataset, train) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # normalisation from the images trained on; a streamed folder split keeps the statistics of all of train
    return channel_stats(train.images) if hasattr(train, "images") else (tuple(ds.mean), tuple(ds.std))


def with_fold(ds: Dataset, fold: int, folds: int, seed: int) -> Dataset:
    """`ds` with fold `fold` (1-based) of its training split as `val` and the other folds as `train`.

    The dataset's own `val` (if any) is folded back in first, so the folds cover all labelled training images.
    """
    check_folds(folds, fold)
    train = ds.train
    if ds.val is not None:
        if not hasattr(train, "images") or not hasattr(ds.val, "images"):
            raise CnnlabError("k-fold needs the whole training split; load the dataset without a validation split")
        train = type(train)(torch.cat([train.images, ds.val.images]), torch.cat([train.labels, ds.val.labels]))
    val_idx = stratified_folds(train.labels, folds, seed)[fold - 1]
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[val_idx] = False
    train_part, val_part = train.subset(torch.nonzero(keep).flatten()), train.subset(val_idx)
    mean, std = _restat(ds, train_part)
    return dataclasses.replace(ds, train=train_part, val=val_part, mean=mean, std=std)


def long_tailed(ds: Dataset, ratio: float, seed: int = 0) -> Dataset:
    """`ds` with a long-tailed training split: class c keeps `n * ratio ** (-c / (K - 1))` images (rounded,
    at least 1), n being the smallest class's count, so class 0 keeps n and the last class n / ratio: the
    exponential profile of CIFAR-10-LT (Cui et al. 2019). The images kept are a seeded draw; test and val
    stay as they are."""
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 1 <= ratio <= 1e6:
        raise CnnlabError(f"imbalance ratio must be a number from 1 to 1e6 (largest class / smallest), got {ratio!r}")
    labels = ds.train.labels
    k = len(ds.classes)
    counts = class_counts(labels, k)
    n_top = int(counts.min())  # every class has that many to give
    g = torch.Generator().manual_seed(int(seed))
    picked = []
    for c in range(k):
        want = max(1, round(n_top * float(ratio) ** (-c / max(k - 1, 1))))
        idx = torch.nonzero(labels == c).flatten()
        picked.append(idx[torch.randperm(len(idx), generator=g)[:want]])
    train = ds.train.subset(torch.cat(picked).sort().values)
    mean, std = _restat(ds, train)
    return dataclasses.replace(ds, name=f"{ds.name}-lt{ratio:g}", train=train, mean=mean, std=std)


__all__ = ["MAX_FOLDS", "check_folds", "long_tailed", "stratified_folds", "with_fold"]
