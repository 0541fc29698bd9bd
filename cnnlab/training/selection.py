"""Model selection off the test set: which data chooses the epoch whose weights a run keeps.

The protocol (as Keras' `validation_split`, fastai's validation set and scikit-learn's model selection):

- a validation split is held out of the training set: the dataset's own where it has one (an imagefolder
  with train/, val/ and test/ folders, or a `Dataset` with `val`), else `DEFAULT_VAL_FRACTION` of every
  class of train, drawn with the run's seed (`cnnlab.data.memory.stratified_holdout`); the model never
  trains on it, and the normalisation statistics come from the images it does train on;
- after each evaluated epoch the validation split is measured; the epoch with the best validation accuracy
  (among ties the lowest validation loss, then the earliest) is chosen, and its weights are the run's weights (RUN/best.*, `TrainResult.model`);
  whatever else chooses (early stopping, a plateau schedule) reads the validation figures too;
- the test split is evaluated once, on the chosen weights, and that figure is the run's result. Per-epoch
  test figures exist only with `eval_test_every_epoch`: recorded and plotted as such, never read by a choice;
- `val_fraction=0`: nothing is held out and nothing is chosen; the model trains on all of train and the run
  keeps its last weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnlab.data.imagefolder import has_val_folder
from cnnlab.data.memory import channel_stats, stratified_holdout
from cnnlab.errors import CnnlabError
from cnnlab.training.inputs import load_data

DEFAULT_VAL_FRACTION = 0.1  # Keras' and many a course's habit; 6,000 Fashion-MNIST images, 144 of digits


@dataclass(frozen=True)
class Selection:
    """How a run chooses its weights: on `split` ("val"), or not at all (None: the last weights)."""

    split: str | None
    source: str  # how the validation split came about, in words
    fraction: float | None  # share of train held out; None with the dataset's own split or no split
    val_images: int
    train_images: int

    @property
    def chooses(self) -> bool:
        return self.split is not None

    @property
    def chosen_by(self) -> str:
        """What chose the run's weights: "val" or "last" (no choice)."""
        return self.split or "last"

    def describe(self) -> str:
        if not self.chooses:
            return f"no validation split ({self.source}): trained on all {self.train_images:,} training images, kept the last weights"
        return (f"weights chosen by validation accuracy on {self.val_images:,} images ({self.source}); "
                f"trained on the other {self.train_images:,}; the test set is evaluated once, on the chosen weights")

    def to_dict(self) -> dict[str, Any]:
        return {"chosen_by": self.chosen_by, "validation": self.source, "val_fraction": self.fraction,
                "val_images": self.val_images, "train_images": self.train_images,
                "test": "evaluated once, on the chosen weights"}


def own_validation(data: Any) -> bool:
    """Whether `data` (a dataset name or object) brings its own validation split."""
    if isinstance(data, str):
        return data.startswith("imagefolder:") and has_val_folder(data.split(":", 1)[1])
    return getattr(data, "val", None) is not None


def load_for_training(data: Any, *, val_fraction: float | None, seed: int, data_dir=None,
                      image_size: int | None = None, folds: int | None = None,
                      fold: int | None = None) -> tuple[Any, Selection]:
    """The dataset a run trains on, with its validation split, and how the run will choose its weights.

    `val_fraction` None: the dataset's own validation split, else `DEFAULT_VAL_FRACTION`; 0: none.
    `folds`: the validation split is fold `fold` of `folds` stratified folds of train (`--folds`), instead.
    """
    if folds:
        ds = load_data(data, data_dir=data_dir, image_size=image_size, seed=seed, folds=folds, fold=fold)
        return ds, Selection("val", f"fold {fold} of {folds} stratified folds of train, seed {seed}", None,
                             len(ds.val), len(ds.train))
    own = own_validation(data)
    if own and val_fraction:
        raise CnnlabError(f"the dataset has its own validation split, so val_fraction must be left unset (or 0 to train "
                          f"without choosing), got {val_fraction}")
    fraction = (0.0 if own else DEFAULT_VAL_FRACTION) if val_fraction is None else float(val_fraction)
    ds = load_data(data, data_dir=data_dir, image_size=image_size, val_fraction=fraction, seed=seed)
    if not isinstance(data, str) and fraction > 0:  # a Dataset object: held out here, as the data module would
        ds = holdout(ds, fraction, seed)
    val = getattr(ds, "val", None)
    if val_fraction == 0 or val is None:
        why = "--val-fraction 0" if val_fraction == 0 else "the dataset has none"
        return ds, Selection(None, why, 0.0, 0, len(ds.train))
    if own:
        source = "the dataset's own validation split"
    else:
        source = f"{100 * fraction:g}% of each class of train, stratified, seed {seed}"
    return ds, Selection("val", source, None if own else fraction, len(val), len(ds.train))


def holdout(ds: Any, fraction: float, seed: int) -> Any:
    """A copy of `ds` with `fraction` of each class of its train split moved to `val` (`stratified_holdout`),
    normalisation statistics recomputed from the rest where the images are in memory."""
    if getattr(ds, "val", None) is not None:
        return ds
    keep, hold = stratified_holdout(ds.train.labels, fraction, seed)
    if len(keep) == 0 or len(hold) == 0:
        raise CnnlabError(f"val_fraction {fraction:g} of {len(ds.train)} training images leaves "
                          f"{len(keep)} to train on and {len(hold)} to validate on; use more data or --val-fraction 0")
    out = copy.copy(ds)
    out.train, out.val = ds.train.subset(keep), ds.train.subset(hold)
    if hasattr(out.train, "images"):
        out.mean, out.std = channel_stats(out.train.images)
    return out


def better(record: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Whether an epoch's record beats the chosen one's: a higher validation accuracy, or the same with a lower
    validation loss (a small validation split often ties on accuracy). Records without validation never do."""
    acc = record.get("val_accuracy")
    if acc is None:
        return False
    if best is None or best.get("val_accuracy") is None:
        return True
    return acc > best["val_accuracy"] or (acc == best["val_accuracy"] and record["val_loss"] < best["val_loss"])


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights on the CPU (the chosen epoch's, kept while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
