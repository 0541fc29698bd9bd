"""Imbalanced classes: class counts, inverse-frequency loss weights, and class-balanced epoch orders.

`class_weights(labels, K)` is scikit-learn's "balanced" heuristic, `N / (K * n_c)`: a class with half the
images weighs twice as much in the loss, and a balanced dataset gets weight 1 everywhere.

`balanced_order(labels, K, seed=, epoch=, rank=, world_size=)` replaces `epoch_order` for
`--sampler balanced`. An epoch keeps its usual length (`len(train) // world_size` images per rank) but
every class fills the same share of it. It is built in three seeded steps, so that it stays correct
under DDP (each rank draws from images no other rank sees, with the same class balance):

1. each class's images are shuffled with the (seed, epoch) stream and dealt to the ranks in turn: the
   ranks' pools are disjoint and hold the same number of every class's images, within one;
2. every rank fills the same per-class quotas (`n // K` each, the remainder to classes drawn with the
   shared (seed, epoch) stream), cycling through its own shuffled pool of the class: a rare class
   repeats its images as evenly as possible, a common class is drawn without replacement;
3. the rank's draws are shuffled with its own (seed, epoch, rank) stream.

A pure function of its arguments, like `epoch_order`: resume after a checkpoint sees the same order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from cnnlab.errors import CnnlabError


def class_counts(labels: Tensor, num_classes: int) -> Tensor:
    """Images per class: labels (N,) int64 in 0..K-1 -> (K,) int64."""
    return torch.bincount(torch.as_tensor(labels).to(torch.int64), minlength=num_classes)[:num_classes]


def check_no_empty_class(labels: Tensor, classes: Sequence[str], what: str) -> Tensor:
    """Class counts of `labels`; `CnnlabError` naming the first class without images (`what` needs every one)."""
    counts = class_counts(labels, len(classes))
    empty = [c for c, n in zip(classes, counts.tolist(), strict=True) if n == 0]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise CnnlabError(f"{what} needs images of every class, but class '{empty[0]}'{more} has none in the "
                          f"training split of {int(counts.sum()):,} images; add images of it or leave {what} out")
    return counts


def class_weights(labels: Tensor, classes: Sequence[str]) -> Tensor:
    """Inverse-frequency weights (K,) float32, `N / (K * n_c)` (scikit-learn's "balanced"); refuses empty classes."""
    counts = check_no_empty_class(labels, classes, "--class-weights auto").double()
    return (counts.sum() / (len(counts) * counts)).float()


def _generator(*parts: int) -> torch.Generator:
    digest = hashlib.sha256(("cnnlab-balanced:" + ":".join(str(int(p)) for p in parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def balanced_order(labels: Tensor, num_classes: int, *, seed: int, epoch: int, rank: int = 0,
                   world_size: int = 1) -> Tensor:
    """Indices (int64, CPU) this rank visits in this epoch, every class drawn equally often; see the module."""
    labels = torch.as_tensor(labels).to(torch.int64)
    n_rank = len(labels) // world_size  # the length `epoch_order` gives each rank
    shared = _generator(seed, epoch)  # the same on every rank: pools and quotas agree
    pools = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < world_size:
            raise CnnlabError(f"balanced sampling over {world_size} processes needs at least {world_size} images of "
                              f"each class (every process draws its own); class {c} has {len(idx)}")
        idx = idx[torch.randperm(len(idx), generator=shared)]
        pools.append(idx[rank::world_size])  # dealt in turn: disjoint across ranks, sizes within one
    quotas = torch.full((num_classes,), n_rank // num_classes, dtype=torch.int64)
    quotas[torch.randperm(num_classes, generator=shared)[: n_rank % num_classes]] += 1
    own = _generator(seed, epoch, rank, world_size)
    drawn = []
    for pool, q in zip(pools, quotas.tolist(), strict=True):
        cycles = max(1, -(-q // len(pool)))  # each pass over the pool in a fresh order
        drawn.append(torch.cat([pool[torch.randperm(len(pool), generator=own)] for _ in range(cycles)])[:q])
    order = torch.cat(drawn)
    return order[torch.randperm(len(order), generator=own)]
