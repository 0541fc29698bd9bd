"""Helpers shared by the experiments: seeded class-balanced subsets, quiet in-memory training, progress, counts,
and `fit_selected`: training whose weights are chosen on a validation split held out of the training images."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnlab.core.preprocess import Preprocess
from cnnlab.core.stats import summarize
from cnnlab.data.dataset import Dataset, in_memory_dataset
from cnnlab.data.memory import stratified_sample as stratified_indices  # the experiments' name for it
from cnnlab.errors import CnnlabError
from cnnlab.experiments._base import ExperimentContext
from cnnlab.training import Callback, TrainConfig, Trainer, TrainResult
from cnnlab.training.evaluate import evaluate_split
from cnnlab.training.precision import resolve_precision


def subset_dataset(ds, train_idx, test_idx):
    """`ds` with only the train images at `train_idx` and test images at `test_idx` (int64 tensors).

    The normalisation statistics are recomputed from the kept training images, as a training run would.
    """
    if not hasattr(ds.train, "images") or not hasattr(ds.test, "images"):
        raise CnnlabError(f"this experiment needs a dataset held in memory; '{ds.name}' is streamed from disk")
    return in_memory_dataset(ds.name, ds.classes, ds.source, (ds.train.images[train_idx], ds.train.labels[train_idx]),
                             (ds.test.images[test_idx], ds.test.labels[test_idx]))


def monitored_subsets(full, size: dict[str, int], seed: int) -> tuple[Dataset, Dataset]:
    """(ds, test): the same class-balanced `size["train"]` training images, with `size["monitor"]` test
    images to watch during training (ds) and a separately drawn `size["test"]` for the final numbers."""
    train_idx = stratified_indices(full.train.labels, size["train"], seed)
    return (subset_dataset(full, train_idx, stratified_indices(full.test.labels, size["monitor"], seed + 1)),
            subset_dataset(full, train_idx, stratified_indices(full.test.labels, size["test"], seed + 2)))


def epoch_progress(ctx: ExperimentContext, label: str):
    """A training callback that advances the experiment's progress line once per epoch."""
    class EpochStep(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            n = len(trainer.dataset.test)
            ctx.progress.step(f"{label} epoch {epoch + 1}: {100 * metrics['test_accuracy']:.1f}% of {n:,} test images")

    return EpochStep()


def final_accuracy(result: TrainResult, ds: Dataset, split: str = "test") -> float:
    """Top-1 accuracy of a run's final model (no selection on the test set) on `ds`'s `split`.

    Training monitors a small test subset each epoch (the trainer evaluates every epoch, and a full
    test set each time would cost a third of the budget); the reported number comes from here, once.
    `ds` must share the run's training split (its normalisation statistics are the run's).
    """
    cfg = result.config
    prec = resolve_precision(cfg.precision, cfg.device, cfg.channels_last)
    prep = Preprocess(ds.mean, ds.std, prec.device, prec.channels_last)
    return evaluate_split(result.model, getattr(ds, split), prep, prec, len(ds.classes), list(ds.classes),
                          cfg.eval_batch_size, cfg.tta).accuracy


def plural(n: int, word: str) -> str:
    """`plural(1, "epoch")` -> "1 epoch", `plural(3, "epoch")` -> "3 epochs"."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def subsample(ds: Dataset, train_per_class: int | None, test_per_class: int | None, seed: int) -> Dataset:
    """A class-balanced, seeded sample of `ds`: at most `train_per_class` train and `test_per_class`
    test images of every class (None: all), labels unchanged, normalisation recomputed."""
    return subset_dataset(ds, stratified_indices(ds.train.labels, train_per_class, seed),
                          stratified_indices(ds.test.labels, test_per_class, seed + 1))


def fit(model: str | nn.Module, data: Dataset, *, device: str = "auto", callbacks: Sequence[Callback] = (),
        **options: Any) -> TrainResult:
    """Train `model` (a spec, a name or a module) on `data` quietly and in memory (no files written);
    returns the `TrainResult`, whose `model` is the trained model.

    `options` are `TrainConfig` fields (epochs, batch_size, lr, seed, augment, ...); `callbacks` are
    training callbacks (e.g. `epoch_progress`).
    """
    # today's experiments train on all of train and watch a test subset every epoch; nothing is chosen on it
    # (the reported figure is `final_accuracy`, on the last weights). Options given still win.
    options.setdefault("val_fraction", 0.0)
    options.setdefault("eval_test_every_epoch", True)
    cfg = TrainConfig(**options, device=device)
    if isinstance(model, str):
        cfg.model, module = model, None
    else:
        module = model
    return Trainer(cfg, model=module, data=data, callbacks=callbacks, save=False, quiet=True).fit()


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- selection on a validation split ----------------------------------------------------------
VAL_FRACTION = 0.1  # share of an experiment's training images held out (stratified, seeded) for selection


def with_validation(ds: Dataset, val_fraction: float, seed: int) -> Dataset:
    """`ds` with a stratified, seeded `val_fraction` of its training images moved to `val` (disjoint from
    the images trained on); normalisation statistics from the images still trained on. Test unchanged."""
    if not 0.0 < val_fraction < 1.0:
        raise CnnlabError(f"val_fraction must be in (0, 1) for selection, got {val_fraction!r}")
    return in_memory_dataset(ds.name, ds.classes, ds.source, (ds.train.images, ds.train.labels),
                             (ds.test.images, ds.test.labels), val_fraction=val_fraction, seed=seed)


class SelectOnValidation(Callback):
    """After every epoch: accuracy on the held-out validation split; keeps a copy of the best weights
    (the earliest epoch on ties) and their validation loss, and, with `patience`, stops once that many epochs
    brought no improvement."""

    def __init__(self, val, patience: int | None = None):
        self.val, self.patience = val, patience
        self.best, self.best_epoch, self.state, self.curve = -1.0, 0, None, []
        self.best_loss = float("inf")

    def on_epoch_end(self, trainer, epoch, metrics):
        cfg = trainer.config
        ev = evaluate_split(trainer.model, self.val, trainer.prep, trainer.precision, len(trainer.classes),
                            list(trainer.classes), cfg.eval_batch_size, cfg.tta)
        acc = ev.accuracy
        self.curve.append(acc)
        if acc > self.best:
            self.best, self.best_epoch, self.best_loss = acc, epoch + 1, ev.loss
            self.state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        elif self.patience and epoch + 1 - self.best_epoch >= self.patience:
            trainer.stop_training = True


@dataclass
class Selected:
    """A run whose weights were chosen on validation: the test set was evaluated once, on those weights."""

    result: TrainResult  # `result.model` holds the chosen weights
    val_accuracy: float  # of the chosen epoch
    test_accuracy: float  # of the chosen weights, measured once
    best_epoch: int  # 1-based
    epochs_run: int
    train_seconds: float  # the training steps of every epoch run (no evaluation)
    val_curve: list[float]
    data: Dataset | None = None  # the training images trained on (train) and the validation split (val)
    val_loss: float = float("inf")  # of the chosen epoch: breaks ties of val_accuracy between runs


def fit_selected(model: str | nn.Module, data: Dataset, *, val_fraction: float = VAL_FRACTION, seed: int,
                 device: str = "auto", patience: int | None = None, callbacks: Sequence[Callback] = (),
                 test: Dataset | None = None, **options: Any) -> Selected:
    """Train on `data`'s training images less a held-out validation split; choose the epoch on validation.

    `data` has train and test splits (no `val`); `val_fraction` of its training images (stratified, seeded
    by `seed`) are held out. Every epoch is evaluated on them only; the best epoch's weights are restored
    and tested once on `data.test` (or `test.test`, which must share `data`'s training images). With
    `patience`, training stops after that many epochs without improvement (early stopping). `options` are
    `TrainConfig` fields; `val_fraction=0.0` goes to the trainer so that it carves no split of its own.
    """
    ds = with_validation(data, val_fraction, seed)
    selector = SelectOnValidation(ds.val, patience)
    cfg = TrainConfig(**options, seed=seed, device=device, val_fraction=0.0)
    module = None if isinstance(model, str) else model
    if isinstance(model, str):
        cfg.model = model
    # the trainer is handed the validation images as its held-out split (and evaluates nothing itself):
    # the test images are not in memory of the run until the chosen weights are tested below
    trainer_data = in_memory_dataset(ds.name, ds.classes, ds.source, (ds.train.images, ds.train.labels),
                                     (ds.val.images, ds.val.labels))
    t0 = time.perf_counter()
    result = Trainer(cfg, model=module, data=trainer_data, callbacks=[selector, *callbacks], save=False,
                     evaluate=False, quiet=True).fit()
    seconds = sum(h.get("train_seconds") or 0.0 for h in result.history) or time.perf_counter() - t0
    if selector.state is not None:
        with torch.no_grad():
            result.model.load_state_dict(selector.state)
    final = test if test is not None else ds
    tested = evaluate_split(result.model, final.test, trainer_prep(result, ds), _precision(result),
                            len(ds.classes), list(ds.classes), result.config.eval_batch_size, result.config.tta)
    return Selected(result, selector.best, tested.accuracy, selector.best_epoch, len(result.history), seconds,
                    selector.curve, ds, selector.best_loss)


def own_budget(ctx: ExperimentContext, budgets: Sequence[int], train_at: Callable[[int], dict[str, Any]],
               label: str) -> dict[str, Any]:
    """A run at its own budget: `train_at(epochs)` for the first of `budgets` (epochs), then for each next
    one while it validates better than the best so far (higher "val" accuracy, or equal and lower
    "val_loss"); returns the best run's dict with "epochs" added. Every run advances `ctx.progress`
    (whose total counts every budget); the budgets not needed are taken off the total."""
    best: dict[str, Any] | None = None
    for i, epochs in enumerate(budgets):
        cand = {**train_at(epochs), "epochs": epochs}
        ctx.progress.step(f"{label}, {epochs} epochs")
        if best is not None and (cand["val"], -cand["val_loss"]) <= (best["val"], -best["val_loss"]):
            ctx.progress.total -= len(budgets) - i - 1
            break
        best = cand
    assert best is not None, "own_budget needs at least one budget"
    return best


def ladder_note(epochs: str, ladder: Sequence[int], who: str) -> str:
    """The budget protocol of `own_budget` in words, for an experiment's notes."""
    return (f"Budgets: E = {epochs}; {who} trains E epochs, then "
            f"{', '.join(f'{k}E' for k in ladder[1:])} while the longer run validates better than the best so far "
            "(accuracy, ties broken by validation loss), and keeps the best; the epochs column gives each seed's "
            "budget. A run stopped at the last budget may still be under-trained. Within each run the epoch is "
            "chosen on validation.")


def _precision(result: TrainResult):
    cfg = result.config
    return resolve_precision(cfg.precision, cfg.device, cfg.channels_last)


def trainer_prep(result: TrainResult, ds: Dataset) -> Preprocess:
    """The preprocessing a run trained with: `ds`'s normalisation (its training images) on the run's device."""
    prec = _precision(result)
    return Preprocess(ds.mean, ds.std, prec.device, prec.channels_last)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """A table cell for values over seeds: mean, std and 95% t-interval (shown as 'mean ± std [low, high]')."""
    return summarize(values).to_dict()


def seeds_note(seeds: Sequence[int]) -> str:
    return (f"Seeds {', '.join(map(str, seeds))}: each seed draws its own training subset, validation split, "
            "initial weights and batch order; the cells of one seed share them, so differences are paired by seed.")
