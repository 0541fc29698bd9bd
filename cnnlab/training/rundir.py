"""`RunWriter`: the callback that writes a training run to its run directory (see `cnnlab.training.run`).

    on_fit_start   choose the folder (`--out`, or runs/<model>-<data>-<time>), refuse one that already holds
                   a run, write config.json; or, resuming, load the newest readable checkpoint
    on_epoch_end   last.safetensors/json (and best.* when the validation accuracy improved, or every epoch
                   when nothing chooses), metrics.jsonl
    on_checkpoint  checkpoints/ckpt-<global step>.pt, the newest `keep_checkpoints` kept
    on_fit_end     best.* again: the chosen weights, their card naming what chose them and their test
                   accuracy; metrics.jsonl with the test figures on the chosen epoch's record;
                   curves.png and confusion.png (with `plots`)

best.* are the run's weights: those the validation split chose (`cnnlab.training.selection`), or the last
ones when nothing chooses (--val-fraction 0); last.* are the weights after the last finished epoch.

Only rank 0 writes under DDP; every rank agrees on the folder. Without this callback the Trainer trains
in memory and writes no file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.core.figures import plot_confusion, plot_curves
from cnnlab.core.run import ModelCard, RunDir, default_run_name, environment
from cnnlab.core.runlock import claim_run_dir
from cnnlab.layers._native import status as native_status
from cnnlab.training import distributed
from cnnlab.training.callbacks import Callback
from cnnlab.training.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from cnnlab.training.evaluate import EvalResult
    from cnnlab.training.loop import Trainer


class RunWriter(Callback):
    """Writes the run directory of a `Trainer` (rank 0 only); `resume` continues the run in that folder."""

    def __init__(self, resume: str | Path | None = None, plots: bool = True):
        self.resume = Path(resume) if resume is not None else None
        self.plots = plots  # curves.png and confusion.png (~1 s of matplotlib; experiments draw their own)
        self.run: RunDir | None = None

    # ---- the folder ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer) -> None:
        cfg, info = trainer.config, trainer.dist
        if self.resume is not None:
            path = self.resume
        elif cfg.out:
            path = Path(cfg.out)
        else:
            name = default_run_name(cfg.model, cfg.data)
            run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
            if info.enabled and run_id != "none":
                # stable across torchrun restarts, so a restarted rank finds the same folder
                name = f"{name.rsplit('-', 2)[0]}-{run_id[:8]}"
            path = Path("runs") / name
        path = Path(distributed.broadcast_object(str(path)))
        self.run = trainer.run = RunDir(path)
        # rank 0 locks the folder for the whole run (the Trainer releases it when fit() ends) and decides how
        # it starts; torchrun restarted us after a failure: continue the run instead of refusing its folder
        claim = claim_run_dir(path, resume=self.resume is not None, restarted=info.restart > 0,
                              has_checkpoint=lambda: bool(list_checkpoints(self.run.checkpoints))) if info.is_main else None
        trainer.run_lock = claim.lock if claim else None
        resuming = distributed.broadcast_object(claim.resuming if claim else None)
        for note in claim.notes if claim else ():
            trainer.log(note)
        distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
        if resuming:
            self._restore(trainer)
        elif info.is_main:
            self.run.write_config(self._config_record(trainer))

    def _restore(self, trainer: Trainer) -> None:
        state, path = load_latest_checkpoint(self.run.checkpoints, log=trainer.log)
        trainer.load_checkpoint_state(state)
        if trainer.dist.is_main:
            self.run.write_metrics(trainer.history)  # drop records written after this checkpoint
        where = (f"epoch {trainer.start_epoch + 1}, step {trainer.start_step}" if trainer.start_step
                 else f"the start of epoch {trainer.start_epoch + 1}")
        trainer.log(f"resuming {self.run.path} from {path.name} ({where})")

    def _config_record(self, trainer: Trainer) -> dict[str, Any]:
        ds, cfg = trainer.dataset, trainer.config
        return {
            "config": cfg.to_dict(),
            "seed": cfg.seed,
            "command": sys.argv,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": str(trainer.precision.device),
            "precision": trainer.precision.name,
            "channels_last": trainer.precision.channels_last,
            "c_kernels": native_status(),
            "world_size": trainer.dist.world_size,
            "dataset": {"name": getattr(ds, "name", cfg.data), "source": getattr(ds, "source", None),
                        "classes": trainer.classes, "input_size": list(trainer.input_size), "mean": list(ds.mean),
                        "std": list(ds.std), "train": len(ds.train), "test": len(ds.test),
                        "val": len(ds.val) if ds.val is not None else 0},
            "model_options": trainer.model_options,
            "selection": trainer.selection.to_dict(),  # which split chooses the weights (cnnlab.training.selection)
            "defaults": trainer.default_notes,  # options whose default followed the data's size, and why
            "whitening": trainer.whitening.describe() if trainer.whitening is not None else None,  # --whiten
            "environment": environment(),
        }

    # ---- what each epoch leaves -----------------------------------------------------------------
    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        if not trainer.dist.is_main:
            return
        held = metrics["val_accuracy"] if trainer.selection.chooses else None
        self.run.save_weights("last", trainer.model, self._card(trainer, epoch + 1, held))
        if trainer.best_epoch == epoch + 1:  # a better validation accuracy, or every epoch when nothing chooses
            self.run.save_weights("best", trainer.model, self._card(trainer, epoch + 1, held))
        self.run.write_metrics(trainer.history)

    def on_checkpoint(self, trainer: Trainer, epoch: int, step: int) -> None:
        if trainer.dist.is_main:
            save_checkpoint(self.run.checkpoints, trainer.checkpoint_state(epoch, step),
                            epoch * trainer.steps_per_epoch + step, trainer.config.keep_checkpoints)

    def on_fit_end(self, trainer: Trainer, last_eval: EvalResult | None) -> None:
        if not (trainer.dist.is_main and trainer.history):
            return
        # the model holds the chosen weights now: best.* again, its card saying what chose them and how they test
        record = next(h for h in trainer.history if h["epoch"] == trainer.best_epoch)
        card = self._card(trainer, trainer.best_epoch, record.get("val_accuracy"))
        card.extra = {"chosen_by": trainer.chosen_by, "val_accuracy": record.get("val_accuracy"),
                      "test_accuracy": record.get("test_accuracy"), "test_loss": record.get("test_loss")}
        self.run.save_weights("best", trainer.model, card)
        self.run.write_metrics(trainer.history)
        if not self.plots:
            return
        cfg = trainer.config
        plot_curves(trainer.history, self.run.path / "curves.png", title=f"{cfg.model} on {cfg.data}")
        if last_eval is not None:
            how = "chosen by validation" if trainer.chosen_by == "val" else "last"
            plot_confusion(last_eval.confusion, trainer.classes, self.run.path / "confusion.png",
                           title=f"test, weights of epoch {trainer.best_epoch} ({how}): {100 * last_eval.accuracy:.2f}%")

    @staticmethod
    def _card(trainer: Trainer, epoch: int, accuracy: float | None) -> ModelCard:
        ds = trainer.dataset
        return ModelCard(trainer.config.model, trainer.model_options, len(trainer.classes), trainer.classes,
                         trainer.input_size, tuple(ds.mean), tuple(ds.std), trainer.config.data, epoch, accuracy)
