"""Watching the validation split: early stopping (`--early-stop`) and the plateau schedule (`--schedule plateau`).

Both are callbacks that read one figure of each evaluated epoch's record, `--monitor` (`val_loss`, the
default, or `val_accuracy`), and never the test split: the Trainer refuses them, before anything is
written, when the run has no validation split (`--val-fraction`). Epochs that were not evaluated
(`--eval-every`) do not count.

- `EarlyStopping(patience)` ends training once the figure has not improved for `patience` evaluated epochs
  in a row (Keras' `EarlyStopping` with `min_delta=0`: any strict improvement resets the count). The run's
  output says when and why; `config.json` gets a `"stopped"` record (the last epoch, whether it stopped
  early, why, the best figure and its epoch). `best.safetensors` is chosen as always (held-out accuracy),
  so it is the epoch to use; `last.safetensors` holds the weights of the epoch training stopped at.
- `PlateauSchedule(patience, factor)` multiplies every group's learning rate by `factor` once the figure has
  not improved for more than `patience` evaluated epochs (PyTorch's `ReduceLROnPlateau` with its defaults:
  relative threshold 1e-4, no cooldown, no floor). The schedule functions stay pure functions of the step:
  the callback wraps them, `lr(step) = base(step) * scale`, and only `scale` changes, at an epoch's end.
  `base` is the `plateau` schedule of `cnnlab.training.optim` (linear warm-up, then the peak rate).

Their counters (and the plateau's scale) are saved in every checkpoint, so a resumed run decides as the
uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.training.callbacks import Callback
from cnnlab.training.evaluate import EvalResult

Trainer = Any  # cnnlab.training.loop.Trainer, which imports this module (annotations only)

# what each monitored figure should do: fall (loss) or rise (accuracy)
MONITOR_MODES = {"val_loss": "min", "val_accuracy": "max"}


def refuse_without_validation(callbacks, has_validation: bool) -> None:
    """Raise, in one line, if a callback here watches the validation split and the run has none."""
    watching = [cb.option for cb in callbacks if isinstance(cb, (EarlyStopping, PlateauSchedule))]
    if watching and not has_validation:
        raise CnnlabError(f"{' and '.join(watching)} {'watch' if len(watching) > 1 else 'watches'} the validation "
                          "split and this run has none (the test split is never used to decide); pass --val-fraction 0.1 "
                          "to hold out 10% of train")


def _fmt(monitor: str, value: float) -> str:
    return f"{100 * value:.2f}%" if monitor.endswith("accuracy") else f"{value:.4f}"


class _Watch:
    """The best value of a monitored figure so far and how many evaluated epochs have not beaten it."""

    def __init__(self, monitor: str, rel_threshold: float = 0.0):
        if monitor not in MONITOR_MODES:
            raise CnnlabError(f"unknown monitor '{monitor}'; choose one of: {', '.join(MONITOR_MODES)}")
        self.monitor, self.mode, self.rel_threshold = monitor, MONITOR_MODES[monitor], rel_threshold
        self.best: float | None = None
        self.best_epoch = 0
        self.bad = 0  # evaluated epochs in a row without improvement

    def improved(self, value: float) -> bool:
        if self.best is None:
            return not math.isnan(value)
        if self.mode == "min":  # PyTorch's ReduceLROnPlateau, threshold_mode="rel"
            return value < self.best * (1.0 - self.rel_threshold)
        return value > self.best * (1.0 + self.rel_threshold)

    def update(self, value: float, epoch: int) -> bool:
        """Count one evaluated epoch (1-based `epoch`); True if it improved."""
        if self.improved(value):
            self.best, self.best_epoch, self.bad = value, epoch, 0
            return True
        self.bad += 1
        return False

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": self.bad}

    def load(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad = state["best"], int(state["best_epoch"]), int(state["bad"])

    def best_text(self) -> str:
        return f"best {_fmt(self.monitor, self.best)} at epoch {self.best_epoch}" if self.best is not None else "no value yet"


class EarlyStopping(Callback):
    """Stop once `monitor` has not improved for `patience` evaluated epochs; record when and why in config.json."""

    option = "--early-stop"

    def __init__(self, patience: int, monitor: str = "val_loss"):
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
            raise CnnlabError(f"early-stop patience must be a positive integer (evaluated epochs), got {patience!r}")
        self.patience = patience
        self.watch = _Watch(monitor)
        self.stopped_epoch: int | None = None  # 1-based; None while training goes on
        self.reason = ""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.watch.monitor)
        if value is None or self.watch.update(value, epoch + 1):
            return
        if self.watch.bad >= self.patience and epoch + 1 < trainer.epochs:
            trainer.stop_training = True
            self.stopped_epoch = epoch + 1
            self.reason = (f"{self.watch.monitor} has not improved for {self.watch.bad} evaluated epochs "
                           f"(patience {self.patience}; {self.watch.best_text()})")
            trainer.log(f"early stopping after epoch {epoch + 1} of {trainer.epochs}: {self.reason}")

    def on_fit_end(self, trainer: Trainer, last_eval: EvalResult | None) -> None:
        if trainer.run is None or not trainer.dist.is_main or not trainer.history:
            return
        last = trainer.history[-1]["epoch"]
        early = self.stopped_epoch is not None
        reason = self.reason if early else (f"ran all {trainer.epochs} epochs: {self.watch.monitor} did not stall "
                                            f"for {self.patience} evaluated epochs ({self.watch.best_text()})")
        record = trainer.run.read_config()
        record["stopped"] = {"epoch": last, "early": early, "reason": reason, "monitor": self.watch.monitor,
                             "patience": self.patience, "best": self.watch.best, "best_epoch": self.watch.best_epoch}
        trainer.run.write_config(record)

    def state_dict(self) -> dict[str, Any]:
        return {**self.watch.state(), "stopped_epoch": self.stopped_epoch, "reason": self.reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.watch.load(state)
        self.stopped_epoch, self.reason = state["stopped_epoch"], state["reason"]


class PlateauSchedule(Callback):
    """Scale the learning rates by `factor` once `monitor` has not improved for more than `patience`
    evaluated epochs (PyTorch's `ReduceLROnPlateau`: relative threshold `threshold`, no cooldown)."""

    option = "--schedule plateau"

    def __init__(self, patience: int, factor: float, monitor: str = "val_loss", threshold: float = 1e-4):
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
            raise CnnlabError(f"plateau patience must be an integer >= 0 (evaluated epochs), got {patience!r}")
        if not 0.0 < factor < 1.0:
            raise CnnlabError(f"plateau factor must be in (0, 1), got {factor!r}")
        self.patience, self.factor = patience, factor
        self.watch = _Watch(monitor, rel_threshold=threshold)
        self.scale = 1.0  # the learning rates are the base schedule's times this

    def on_fit_start(self, trainer: Trainer) -> None:
        base = trainer.step.schedules
        if base is None:
            raise CnnlabError("the plateau schedule scales the Trainer's schedules, and this TrainStep has none")
        trainer.step.schedules = [lambda step, f=f: f(step) * self.scale for f in base]

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.watch.monitor)
        if value is None or self.watch.update(value, epoch + 1) or self.watch.bad <= self.patience:
            return
        self.scale *= self.factor
        bad, self.watch.bad = self.watch.bad, 0
        trainer.log(f"plateau: {self.watch.monitor} has not improved for {bad} evaluated epochs "
                    f"({self.watch.best_text()}); learning rate x{self.factor:g}, now x{self.scale:.3g} of the peak")

    def state_dict(self) -> dict[str, Any]:
        return {**self.watch.state(), "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.watch.load(state)
        self.scale = float(state["scale"])
