"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates", section 3.3; fastai's lr_find).

Train a fresh model for a few hundred steps while the learning rate rises exponentially from `start_lr`
to `end_lr`; record the (exponentially smoothed) loss; stop once it exceeds `diverge` times its minimum.
The suggested rate is where the loss falls fastest per decade of learning rate, before its minimum.

It is a short Trainer run in memory (the same training step as every run: autocast, channels_last,
augmentation) with the rising rate as its schedule and `LrSweep`, a callback that records the loss and
ends training when it diverges. With `out`, the curve goes to OUT/lr_find.png and OUT/lr_find.json.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from cnnlab.core.figures import save_figure, subplots
from cnnlab.core.files import atomic_write_json
from cnnlab.core.run import default_run_name
from cnnlab.errors import CnnlabError
from cnnlab.training.callbacks import Callback
from cnnlab.training.config import TrainConfig
from cnnlab.training.loop import Trainer
from cnnlab.training.step import NonFiniteLossError


@dataclass
class LrFindResult:
    lrs: list[float]  # learning rate of each step
    losses: list[float]  # smoothed training loss after each step (nats)
    suggestion: float  # steepest descent of the smoothed loss
    min_loss_lr: float  # rate at the lowest smoothed loss (divide by ~10 for a safe peak rate)
    path: Path | None = None  # the folder lr_find.png and lr_find.json were written to
    plot: Path | None = None
    train_options: dict[str, Any] = field(default_factory=dict)  # `cnnlab train` flags that go with the rate

    def __str__(self) -> str:
        return (f"suggested lr {self.suggestion:.2e} (steepest descent); lowest loss at {self.min_loss_lr:.2e} "
                f"(a tenth of it: {self.min_loss_lr / 10:.2e}); {len(self.lrs)} steps")

    def command(self) -> str:
        """The `cnnlab train` command line that trains with the suggested rate (same model, data, optimizer, batch)."""
        words = ["cnnlab", "train"]
        for flag, value in self.train_options.items():
            words += [f"--{flag}", str(value)]
        return shlex.join(words + ["--lr", f"{self.suggestion:.3g}"])


class LrSweep(Callback):
    """Records each step's learning rate and bias-corrected, exponentially smoothed loss; sets
    `trainer.stop_training` once the smoothed loss exceeds `diverge` times its minimum."""

    def __init__(self, smoothing: float = 0.98, diverge: float = 4.0):
        self.smoothing, self.diverge = smoothing, diverge
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self._avg, self._best = 0.0, math.inf

    def on_step_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        value = float(trainer.last_step.loss)  # one float per step: this is a diagnostic, not a training run
        self._avg = self.smoothing * self._avg + (1 - self.smoothing) * value
        smoothed = self._avg / (1 - self.smoothing ** (len(self.losses) + 1))  # bias correction, as in Adam
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])
        self.losses.append(smoothed)
        self._best = min(self._best, smoothed)
        if smoothed > self.diverge * self._best:
            trainer.stop_training = True


def suggest(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """(steepest-descent lr, lowest-loss lr) of a smoothed loss curve."""
    i_min = min(range(len(losses)), key=losses.__getitem__)
    if i_min < 2:
        return lrs[i_min], lrs[i_min]
    logs = [math.log10(x) for x in lrs[: i_min + 1]]
    slopes = [(losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(1, i_min)]
    i_steep = 1 + min(range(len(slopes)), key=slopes.__getitem__)
    return lrs[i_steep], lrs[i_min]


def default_out(model: str, data: str) -> Path:
    """Where `cnnlab lr-find` writes without --out: runs/lr-find-<model>-<data>-<time>, like a run folder."""
    return Path("runs") / default_run_name(f"lr-find-{model}", str(data))


def lr_find(model: str | nn.Module = "simple_cnn", data: Any = "fashion-mnist", *, start_lr: float = 1e-7,
            end_lr: float = 10.0, steps: int = 100, batch_size: int = 128, optimizer: str = "adamw",
            weight_decay: float | None = None, momentum: float = 0.9, augment: str = "none", precision: str = "auto",
            device: str = "auto", seed: int = 0, data_dir=None, image_size: int | None = None,
            extra: dict | None = None, diverge: float = 4.0, smoothing: float = 0.98,
            out: str | Path | None = None) -> LrFindResult:
    """Run the range test; with `out`, write OUT/lr_find.png (loss against learning rate) and OUT/lr_find.json."""
    if not (isinstance(start_lr, (int, float)) and isinstance(end_lr, (int, float)) and 0 < start_lr < end_lr):
        raise CnnlabError(f"need 0 < start-lr < end-lr, got start-lr {start_lr!r} and end-lr {end_lr!r}")
    if not isinstance(steps, int) or steps < 5:
        raise CnnlabError(f"steps must be an integer >= 5, got {steps!r}")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise CnnlabError(f"--out '{out}' is a file; give a folder for lr_find.png and lr_find.json")
    cfg = TrainConfig(model=model if isinstance(model, str) else "custom", data=data if isinstance(data, str) else "custom",
                      data_dir=data_dir, image_size=image_size, batch_size=batch_size, optimizer=optimizer, lr=start_lr,
                      weight_decay=weight_decay, momentum=momentum, augment=augment, precision=precision, device=device,
                      seed=seed, schedule="constant", warmup=0.0, max_steps=steps, extra=dict(extra or {}))
    factor = (end_lr / start_lr) ** (1.0 / (steps - 1))
    sweep = LrSweep(smoothing, diverge)
    trainer = Trainer(cfg, model=None if isinstance(model, str) else model, data=None if isinstance(data, str) else data,
                      schedule=lambda step: start_lr * factor**step, save=False, evaluate=False, quiet=True,
                      callbacks=[sweep])
    try:
        trainer.fit()
    except NonFiniteLossError:
        pass  # the rate is past divergence: the curve so far is the answer
    if len(sweep.lrs) < 3:
        raise CnnlabError(f"the loss diverged after {len(sweep.lrs)} steps; lower --start-lr (now {start_lr:g})")
    steep, at_min = suggest(sweep.lrs, sweep.losses)
    options = {"model": trainer.config.model, "data": trainer.config.data}
    if data_dir:
        options["data-dir"] = data_dir
    options.update({"optimizer": trainer.config.optimizer, "batch-size": batch_size})
    if trainer.augment is not None:
        options["augment"] = augment
    result = LrFindResult(sweep.lrs, sweep.losses, steep, at_min, train_options=options)
    if out is not None:
        result.path = Path(out)
        result.plot = _plot(result, result.path / "lr_find.png", trainer.config.model)
        atomic_write_json(result.path / "lr_find.json", {
            "suggestion": steep, "min_loss_lr": at_min, "command": result.command(), "lrs": result.lrs,
            "smoothed_losses": result.losses, "settings": {"start_lr": start_lr, "end_lr": end_lr, "steps": steps,
                                                           "diverge": diverge, "smoothing": smoothing,
                                                           "config": trainer.config.to_dict()}})
    return result


def _plot(r: LrFindResult, path: Path, title: str) -> Path:
    fig, ax = subplots(figsize=(6, 4))
    ax.plot(r.lrs, r.losses)
    ax.set_xscale("log")
    ax.axvline(r.suggestion, color="tab:red", ls="--", label=f"suggested {r.suggestion:.1e}")
    ax.axvline(r.min_loss_lr, color="gray", ls=":", label=f"lowest loss {r.min_loss_lr:.1e}")
    top = min(max(r.losses), 2.0 * r.losses[0])
    ax.set_ylim(min(r.losses) * 0.95, top * 1.05)
    ax.set(xlabel="learning rate", ylabel="smoothed training loss", title=f"lr range test: {title}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return save_figure(fig, path)
