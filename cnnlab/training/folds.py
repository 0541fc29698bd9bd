"""k-fold cross-validation: `train_folds(K, ...)` (`cnnlab train --folds K`) trains K runs on stratified folds.

    >>> from cnnlab.training.folds import train_folds
    >>> result = train_folds(5, model="simple_cnn", data="digits", epochs=3, out="runs/digits-5fold")
    >>> result.summary["mean"]["val_accuracy"], result.summary["std"]["val_accuracy"]

    RUN/
      fold-1/ ... fold-K/   ordinary run directories (`cnnlab eval`, `report`, `compare`, `--resume` work on each)
      folds.json            per fold: the last epoch's val and test figures and the best val accuracy;
                            mean and std (sample standard deviation, n - 1) of each over the folds

Fold k validates on the k-th of K stratified folds of the whole training split
(`cnnlab.data.subsets.stratified_folds`, scikit-learn's `StratifiedKFold` with the run's seed) and trains on the
others; its config.json records `folds` and `fold`, so it can be resumed or rebuilt alone. The test split is
never trained or validated on. The same seed gives the same folds; every fold starts from the same initial
weights (the seed's) and sees the same data order rule.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from cnnlab.core.files import atomic_write_text
from cnnlab.core.run import default_run_name
from cnnlab.data.subsets import check_folds
from cnnlab.errors import CnnlabError
from cnnlab.training import distributed
from cnnlab.training.api import resolve_config, train
from cnnlab.training.callbacks import Callback
from cnnlab.training.loop import TrainResult

# the figures folds.json averages, from each fold's last epoch (the test ones from its last evaluation)
FIGURES = ("val_accuracy", "val_loss", "best_val_accuracy", "test_accuracy", "test_loss", "test_balanced_accuracy",
           "test_macro_f1")


@dataclass
class FoldsResult:
    """What `train_folds` returns: the parent folder, each fold's `TrainResult`, and folds.json's content."""

    path: Path | None
    runs: list[TrainResult]
    summary: dict[str, Any]

    def describe(self) -> str:
        """The mean ± std lines that `cnnlab train --folds` prints."""
        k = len(self.runs)
        lines = [f"{k} folds" + (f" in {self.path}" if self.path else "") + " (mean ± sample std over the folds):"]
        for name in FIGURES:
            m, s = self.summary["mean"].get(name), self.summary["std"].get(name)
            if m is not None:
                shown = f"{m:.4f} ± {s:.4f}" if "loss" in name else f"{100 * m:.2f}% ± {100 * s:.2f}"
                lines.append(f"  {name:<24} {shown}")
        return "\n".join(lines)


def _figures(result: TrainResult) -> dict[str, float | None]:
    last = result.history[-1] if result.history else {}
    ev = result.last_eval
    return {"val_accuracy": last.get("val_accuracy"), "val_loss": last.get("val_loss"),
            "best_val_accuracy": result.best_accuracy if result.history else None,
            "test_accuracy": last.get("test_accuracy"), "test_loss": last.get("test_loss"),
            "test_balanced_accuracy": ev.balanced_accuracy if ev is not None else None,
            "test_macro_f1": ev.macro_f1 if ev is not None else None}


def summarise(per_fold: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and sample std (n - 1) of each figure over the folds that have it (None where none has)."""
    mean, std = {}, {}
    for name in FIGURES:
        values = [f[name] for f in per_fold if isinstance(f.get(name), (int, float)) and math.isfinite(f[name])]
        mean[name] = statistics.fmean(values) if values else None
        std[name] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
    return {"mean": mean, "std": std}


def train_folds(folds: int, model: str | nn.Module | None = None, data: Any = None, *, recipe: str | None = None,
                config: str | Path | None = None, callbacks: Sequence[Callback] = (), quiet: bool = False,
                progress: bool = True, plots: bool = True, **options: Any) -> FoldsResult:
    """Train one run per stratified fold under one folder and write folds.json; see the module docstring.

    Arguments as `cnnlab.training.train` takes them (`out` names the parent folder, default
    runs/<model>-<data>-<time>); `val_fraction` is replaced by the folds. A module given as `model` is
    copied for each fold, so every fold starts from its initial weights; `callbacks` see every fold.
    """
    check_folds(folds)
    for name in ("resume", "fold", "folds"):
        if options.get(name) is not None:
            raise CnnlabError(f"k-fold sets {name} itself for its sub-runs; leave it out "
                              "(to continue one fold, resume its folder: --resume RUN/fold-3)")
    module = model if isinstance(model, nn.Module) else None
    given = {k: v for k, v in options.items() if v is not None}
    if model is not None and module is None:
        given["model"] = model
    if isinstance(data, str):
        given["data"] = data
    given["val_fraction"] = 0.0  # the folds are the validation parts
    cfg = resolve_config(given, recipe=recipe, config_file=config)
    if module is not None:
        cfg = dataclasses.replace(cfg, model=f"<module {type(module).__name__}>")
    if data is not None and not isinstance(data, str):
        cfg = dataclasses.replace(cfg, data=str(getattr(data, "name", type(data).__name__)))
    dataclasses.replace(cfg, folds=folds, fold=1).resolved()  # refuse bad options before any folder exists
    parent = Path(cfg.out) if cfg.out else Path("runs") / default_run_name(cfg.model, cfg.data)
    if (parent / "folds.json").exists() or (parent / "config.json").exists() or any(parent.glob("fold-*")):
        raise CnnlabError(f"'{parent}' already holds a run or folds; choose a new --out (or resume one fold: "
                          f"--resume {parent}/fold-1)")
    main = distributed.env_info().is_main
    runs, per_fold = [], []
    for k in range(1, folds + 1):
        if not quiet and main:
            print(f"fold {k}/{folds}", flush=True)
        fold_cfg = dataclasses.replace(cfg, out=str(parent / f"fold-{k}"), folds=folds, fold=k)
        result = train(copy.deepcopy(module) if module is not None else None, data, config=fold_cfg,
                       callbacks=callbacks, quiet=quiet, progress=progress, plots=plots)
        runs.append(result)
        per_fold.append({"fold": k, "path": f"fold-{k}", **_figures(result)})
    summary = {"folds": folds, "seed": cfg.seed, "model": cfg.model, "data": cfg.data, "epochs": cfg.epochs,
               "std_is": "sample standard deviation (n - 1) over the folds", "runs": per_fold, **summarise(per_fold)}
    if main:
        atomic_write_text(parent / "folds.json", json.dumps(summary, indent=2) + "\n")
    out = FoldsResult(parent, runs, summary)
    if not quiet and main:
        print(out.describe(), flush=True)
    return out
