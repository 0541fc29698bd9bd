"""What training reads: datasets by name and augmentation pipelines by text.

The uint8 -> normalised float step is `cnnlab.core.preprocess.Preprocess`.
"""

from __future__ import annotations

from typing import Any

from cnnlab.augment import parse_pipeline
from cnnlab.data import load_dataset
from cnnlab.data.subsets import with_fold
from cnnlab.errors import CnnlabError


def load_data(data: Any, *, data_dir=None, image_size=None, val_fraction: float = 0.0, seed: int = 0,
              folds: int | None = None, fold: int | None = None):
    """A `cnnlab.data.Dataset` as given, or loaded by name through `cnnlab.data.load_dataset`.

    With `folds`, the validation split is fold `fold` (1-based) of the whole training split instead of a
    `val_fraction` (`cnnlab.data.subsets.with_fold`, stratified and seeded)."""
    if not isinstance(data, str):
        for attr in ("classes", "input_size", "mean", "std", "train", "test"):
            if not hasattr(data, attr):
                raise CnnlabError(f"data must be a dataset name or a cnnlab.data.Dataset; {type(data).__name__} has no '{attr}'")
        return with_fold(data, fold, folds, seed) if folds else data
    if folds:
        return with_fold(load_dataset(data, data_dir=data_dir, image_size=image_size, seed=seed), fold, folds, seed)
    return load_dataset(data, data_dir=data_dir, image_size=image_size, val_fraction=val_fraction, seed=seed)


def parse_augment(text: str | None):
    """`None` for no augmentation, else a `cnnlab.augment` pipeline (errors are the pipeline's own)."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    pipeline = parse_pipeline(str(text))
    return pipeline if len(pipeline) else None
