"""Helpers shared by the experiments: seeded class-balanced subsets, quiet in-memory training, progress, counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from cnnlab.core.preprocess import Preprocess
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
