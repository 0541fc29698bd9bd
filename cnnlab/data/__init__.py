"""Datasets: found on disk or fetched safely, parsed from the official formats, served fast from memory.

    >>> from cnnlab.data import load_dataset, to_float
    >>> ds = load_dataset("fashion-mnist")            # or "digits", "cifar10", "imagefolder:PATH", ...
    >>> for images, labels in ds.train.batches(128, shuffle=True, seed=0, epoch=0):
    ...     x = to_float(images, ds.mean, ds.std)     # (N, C, H, W) float32, normalised

Modules: `registry` (names, `load_dataset`, `list_datasets`, `fetch_dataset`), `sources` (URLs, checksums),
`locate` (search order), `download` / `extract` (safe fetching and unpacking), `formats` (IDX, CIFAR,
SVHN parsers), `memory` (in-memory splits, batch order, `to_float`), `imagefolder` (folders of images),
`dataset` (the `Dataset` record).
"""

from __future__ import annotations

from cnnlab.data.dataset import Dataset
from cnnlab.data.memory import MemorySplit, Split, channel_stats, epoch_order, to_float
from cnnlab.data.registry import (
    DatasetInfo,
    dataset_names,
    fetch_dataset,
    find_dataset,
    list_datasets,
    load_dataset,
)

__all__ = [
    "Dataset",
    "DatasetInfo",
    "MemorySplit",
    "Split",
    "channel_stats",
    "dataset_names",
    "epoch_order",
    "fetch_dataset",
    "find_dataset",
    "list_datasets",
    "load_dataset",
    "to_float",
]
