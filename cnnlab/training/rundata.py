"""A finished run's data, split exactly as its training split it.

Commands that act on a trained run with data (`cnnlab calibrate` fits on its validation split,
`cnnlab export --quantize int8` calibrates on its training split and measures its test split) must see
the very images training saw in each split: the dataset named in the model card, with the
`val_fraction`, `seed` and fold that `config.json` records. The training mean/std is recomputed from
the rebuilt training split and compared with the card's, which catches a split that is not the run's
(another `--data-dir`, a changed image folder, an edited config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.core.run import RunDir
from cnnlab.errors import CnnlabError
from cnnlab.training.inputs import load_data


def config_number(cfg: dict, key: str, default, kind) -> Any:
    """`cfg[key]` checked to be a number of `kind` (None or absent: `default`); CnnlabError otherwise."""
    v = cfg.get(key, default)
    if v is None:
        return default
    if not isinstance(v, kind) or isinstance(v, bool):
        raise CnnlabError(f"run config: '{key}' must be a number, got {str(v)[:40]!r}; restore config.json")
    return v


def run_data(run_dir: RunDir, card, *, data_dir: str | Path | None = None) -> Any:
    """The `cnnlab.data.Dataset` `run_dir` trained on (train without its validation images, val, test),
    rebuilt from `config.json`; CnnlabError when the rebuilt data does not match the model card."""
    cfg = run_dir.read_config().get("config", {}) if run_dir.exists() else {}
    val_fraction = config_number(cfg, "val_fraction", 0.0, (int, float))
    seed = config_number(cfg, "seed", 0, int)
    folds = config_number(cfg, "folds", None, int)
    fold = config_number(cfg, "fold", None, int)
    if not 0.0 <= val_fraction < 1.0:
        raise CnnlabError(f"run config: val_fraction must be in [0, 1), got {val_fraction!r}; restore config.json")
    if (folds is None) != (fold is None) or (folds is not None and not 1 <= fold <= folds):
        raise CnnlabError(f"run config: fold {fold!r} of folds {folds!r} is not a fold; restore config.json")
    ds = load_data(card.dataset, data_dir=data_dir or cfg.get("data_dir"), image_size=cfg.get("image_size"),
                   val_fraction=val_fraction, seed=seed, folds=folds, fold=fold)
    if tuple(ds.input_size) != tuple(card.input_size) or list(ds.classes) != list(card.classes):
        raise CnnlabError(f"dataset '{card.dataset}' now gives {tuple(ds.input_size)} images of {len(ds.classes)} "
                          f"classes, but the run was trained on {tuple(card.input_size)} and {card.num_classes}")
    if not np.allclose(ds.mean, card.mean, atol=1e-4) or not np.allclose(ds.std, card.std, atol=1e-4):
        raise CnnlabError(f"the training split rebuilt from config.json (val_fraction {val_fraction}, seed {seed}) "
                          f"has mean {ds.mean}, the model card {card.mean}: it is not the split the run trained "
                          "on, so its validation images may have been trained on; give the run's own --data-dir")
    return ds


def describe_val(run_dir: RunDir) -> str:
    """Where the run's validation images came from, in words, as config.json records it."""
    cfg = run_dir.read_config().get("config", {}) if run_dir.exists() else {}
    if cfg.get("folds"):
        return f"fold {cfg.get('fold')} of {cfg.get('folds')} stratified folds of train, seed {cfg.get('seed', 0)}"
    val_fraction = cfg.get("val_fraction") or 0.0
    return "imagefolder val/ folder" if val_fraction == 0 else f"val_fraction {val_fraction}, seed {cfg.get('seed', 0)}"
