"""The training loop: `Trainer(config).fit()` -> `TrainResult`.

Per batch: uint8 images -> augmented, normalised, channels_last float (`Preprocess`) -> one
`TrainStep` (`cnnlab.training.step`: forward under autocast, fp32 loss with label smoothing, finite check
before the optimizer step, backward, optional clipping, step, the learning rate from the schedule).
Losses and hit counts are summed on the device; the host reads them only when the progress bar redraws
and once per epoch.

Where the results go is a callback's business: `save=True` (the default) adds a `RunWriter`, which
writes the run directory (config.json, metrics.jsonl, weights, checkpoints, plots); with `save=False`
the Trainer trains in memory and writes no file (`TrainResult.model` holds the trained model).

Model selection (`cnnlab.training.selection`): a validation split held out of train chooses the epoch whose
weights the run keeps; the test split is evaluated once, on those weights, after training.

Reproducibility: the seed fixes the initial weights; the data order is a pure function of
(seed, epoch); augmentation and dropout RNGs are re-seeded from (seed, epoch, rank) at each epoch start
and saved in every checkpoint, so a resumed run on CPU ends with bit-identical weights.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.augment.mixing import parse_mix
from cnnlab.core.preprocess import Preprocess
from cnnlab.core.run import RunDir
from cnnlab.core.runlock import RunLock
from cnnlab.data.audit import cross_split_warning
from cnnlab.data.sampling import balanced_order, check_no_empty_class, class_weights
from cnnlab.errors import CnnlabError
from cnnlab.layers.fusion import fuse
from cnnlab.models.downsampling import downsampling_warning
from cnnlab.training import distributed
from cnnlab.training.averaging import EMA
from cnnlab.training.callbacks import Callback
from cnnlab.training.checkpoint import list_checkpoints, rng_state, set_rng_state
from cnnlab.training.config import TrainConfig
from cnnlab.training.defaults import size_defaults
from cnnlab.training.evaluate import EvalResult, evaluate_split
from cnnlab.training.inputs import parse_augment
from cnnlab.training.logging_callbacks import loggers
from cnnlab.training.monitor import GradientMonitor
from cnnlab.training.optim import build_optimizer, build_schedule
from cnnlab.training.precision import resolve_precision
from cnnlab.training.progress import ProgressBar, format_seconds
from cnnlab.training.run import build_model, check_model_fits
from cnnlab.training.rundir import RunWriter
from cnnlab.training.selection import Selection, better, load_for_training, snapshot
from cnnlab.training.step import NonFiniteLossError, StepOutput, TrainStep
from cnnlab.training.stopping import EarlyStopping, PlateauSchedule, refuse_without_validation
from cnnlab.training.whitening import whiten_first_conv

CHECKPOINT_FORMAT = 1

__all__ = ["Callback", "NonFiniteLossError", "Trainer", "TrainingInterrupted", "TrainResult"]


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was written first. `signum` says which signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclass
class TrainResult:
    """What `train()` returns. Epochs are 1-based in `history`; accuracies are shares in [0, 1].

    The run's result is `test_accuracy`: the test split evaluated once, on the chosen weights (`model`).
    `chosen_by` says what chose them: "val" (the epoch of best validation accuracy, `val_accuracy`) or
    "last" (no validation split: the last weights).
    """

    path: Path | None  # the run directory; None when trained in memory
    config: TrainConfig  # resolved options
    history: list[dict[str, Any]]  # one record per epoch, as in metrics.jsonl
    # the accuracy the weights were chosen by: validation accuracy of the chosen epoch; with nothing to choose
    # on (chosen_by "last"), the test accuracy of the last weights
    best_accuracy: float
    best_epoch: int  # the chosen epoch (1-based): best validation accuracy, or the last epoch
    model: nn.Module  # the chosen weights, on the training device
    last_eval: EvalResult | None = field(default=None, repr=False)  # test evaluation of the chosen weights (rank 0)
    test_accuracy: float | None = None  # test split, evaluated once on the chosen weights; None: not evaluated
    test_loss: float | None = None
    chosen_by: str = "val"  # "val" or "last"

    @property
    def chosen_epoch(self) -> int:
        return self.best_epoch

    @property
    def val_accuracy(self) -> float | None:
        """Validation accuracy of the chosen epoch (None without a validation split)."""
        rec = next((h for h in self.history if h["epoch"] == self.best_epoch), None)
        return rec.get("val_accuracy") if rec else None


def _derived_seed(*parts: int) -> int:
    # SeedSequence mixes (seed, epoch, rank) into well-separated streams; Python's hash() is not stable.
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class Trainer:
    """Trains one model on one dataset as `config` says.

    `model` and `data` may be given as objects (an `nn.Module`, a `cnnlab.data.Dataset`) instead of the
    names in `config`; a run trained from an arbitrary module cannot be rebuilt by `cnnlab eval`.

    Args:
        param_groups: optimizer groups (`{"params": [...], "lr": peak, "name": ...}`) instead of every
            trainable parameter at `config.lr`: fine-tuning's per-stage rates. Each group follows the
            config's schedule from its own peak rate; weight decay applies to its weights, not biases.
        schedule: the learning rate as a function of the global step, instead of the config's schedule.
        save: write the run directory (`RunWriter`); False trains in memory and writes no file.
        evaluate: evaluate the held-out split (every `eval_every` epochs and after the last); False
            trains only (the records carry no test figures).
        resume: a run directory to continue from its newest readable checkpoint (needs `save`).
        callbacks: `Callback` objects (see `cnnlab.training.callbacks` for the hooks and their order).
        quiet: print nothing. `progress`: draw the progress bar (on a terminal); `verbose=False` is the
            older spelling of `quiet=True`.
        plots: with `save`, draw curves.png and confusion.png.
    """

    def __init__(self, config: TrainConfig, *, model: nn.Module | None = None, data=None,
                 param_groups: Sequence[dict] | None = None, schedule: Callable[[int], float] | None = None,
                 save: bool = True, evaluate: bool = True, resume: str | Path | None = None,
                 callbacks: Sequence[Callback] = (), quiet: bool = False, progress: bool = True,
                 verbose: bool = True, plots: bool = True):
        self.module = model
        self.data = data
        self.param_groups = list(param_groups) if param_groups is not None else None
        self.schedule_override = schedule
        self.evaluate = evaluate
        self.quiet = quiet or not verbose
        self.progress = progress and not self.quiet
        if resume is not None and not save:
            raise CnnlabError("resume continues a run directory; it needs save=True")
        self.callbacks: list[Callback] = list(callbacks)
        if save:  # first, so the weights and metrics are on disk before other callbacks see the epoch end
            self.callbacks.insert(0, RunWriter(resume, plots=plots))
        if model is not None:
            config = dataclasses.replace(config, model=f"<module {type(model).__name__}>")
        if data is not None and not isinstance(data, str):
            config = dataclasses.replace(config, data=str(getattr(data, "name", type(data).__name__)))
        self.given = config  # as given: the defaults that depend on the data's size are filled in by _setup
        self.config = config.resolved()  # refuses bad options before anything else happens
        self.selection: Selection | None = None  # how the weights are chosen (set by _setup)
        self.chosen_by = "last"  # what chose the weights in the end: "val", or "last" (set by _final_test)
        self.default_notes: dict[str, str] = {}  # option -> why it got its size-dependent default
        if self.config.monitor_gradients and not any(isinstance(cb, GradientMonitor) for cb in self.callbacks):
            self.callbacks.append(GradientMonitor())  # writes RUN/gradients.jsonl and gradients.png
        self.callbacks += loggers(self.config.log)  # --log csv,tensorboard: after the RunWriter, which makes RUN
        if self.config.ema is not None:  # --ema: evaluates its average beside the raw weights, writes ema.safetensors
            self.callbacks.append(EMA(self.config.ema))
        if self.config.early_stop is not None:  # --early-stop: watches --monitor on the validation split
            self.callbacks.append(EarlyStopping(self.config.early_stop, self.config.monitor))
        if self.config.schedule == "plateau" and schedule is None:  # scales the schedules at epochs' ends
            self.callbacks.append(PlateauSchedule(self.config.plateau_patience, self.config.plateau_factor,
                                                  self.config.monitor))
        for cb in self.callbacks:  # monitors with no handler of their own: around the progress bar
            if getattr(cb, "on_warning", False) is None:
                cb.on_warning = lambda msg: self.warn(f"gradient warning: {msg}")
        self.run: RunDir | None = None  # set by the RunWriter
        self.bar: ProgressBar | None = None  # the current epoch's, while it trains
        self.stop_training = False  # a callback sets it to end training (see cnnlab.training.callbacks)
        self.last_step: StepOutput | None = None  # loss and logits of the latest step
        self._stop_signal: int | None = None
        self._stop_now = False  # a stop signal seen by every rank at this step (set by `_check`)
        self.run_lock: RunLock | None = None  # held by rank 0 from setup to the end of fit()

    # ---- output -------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if not self.quiet and self.dist.is_main:
            print(message, flush=True)

    def warn(self, message: str) -> None:
        """A warning on stderr, on its own line even while the progress bar is drawn."""
        if self.bar is not None:
            self.bar.message(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)  # duck-typed callbacks may lack the newer hooks
            if fn is not None:
                fn(self, *args)

    # ---- setup --------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        prec = resolve_precision(cfg.precision, cfg.device, cfg.channels_last)
        self.augment = parse_augment(cfg.augment)
        self.mix = parse_mix(cfg.mix)  # MixUp / CutMix: mixed images and soft targets, train only
        self.dist = distributed.init(prec.device)
        self.precision = dataclasses.replace(prec, device=distributed.device_for(self.dist, prec.device))
        world = self.dist.world_size

        ds, self.selection = load_for_training(self.data if self.data is not None else cfg.data, data_dir=cfg.data_dir,
                                               image_size=cfg.image_size, val_fraction=cfg.val_fraction, seed=cfg.seed,
                                               folds=cfg.folds, fold=cfg.fold)
        given = dataclasses.replace(self.given, val_fraction=self.selection.fraction)
        given, self.default_notes = size_defaults(given, len(ds.train))
        self.config = cfg = given.resolved()
        if cfg.batch_size % world:
            raise CnnlabError(f"batch-size {cfg.batch_size} must be divisible by the {world} processes (it is the global batch)")
        self.rank_batch = cfg.batch_size // world
        self.dataset = ds
        self.input_size = tuple(ds.input_size)
        self.classes = list(ds.classes)
        if self.augment is not None and tuple(self.augment.output_size(self.input_size)) != self.input_size:
            raise CnnlabError(
                f"augmentation '{self.augment}' changes the image size {self.input_size} -> "
                f"{tuple(self.augment.output_size(self.input_size))}; test images would not match; use size-preserving ops"
            )
        self.held_name = self.selection.chosen_by if self.selection.chooses else "test"  # older name
        # imbalanced classes (cnnlab.data.sampling): both refuse a class without training images, before any file
        weights = class_weights(ds.train.labels, self.classes) if cfg.class_weights == "auto" else None
        if cfg.sampler == "balanced":
            check_no_empty_class(ds.train.labels, self.classes, "--sampler balanced")
            balanced_order(ds.train.labels, len(self.classes), seed=cfg.seed, epoch=0, rank=self.dist.rank,
                           world_size=self.dist.world_size)  # refuses too few images per process, before any file
        refuse_without_validation(self.callbacks, self.held_name == "val")  # before anything is written
        if note := cross_split_warning(ds):  # identical images in two splits inflate the held-out accuracy
            self.warn(f"warning: {note}")

        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed alone
        options = dict(cfg.extra)
        if cfg.dropout is not None:
            options["dropout"] = cfg.dropout
        if self.module is not None:
            model = self.module
        else:
            model = build_model(cfg.model, self.input_size, len(self.classes), options)
        check_model_fits(model, self.input_size, len(self.classes), f"'{cfg.model}'")
        if self.module is None and (note := downsampling_warning(cfg.model, self.input_size, len(self.classes), options)):
            self.warn(f"warning: {note}")
        self.model_options = options
        self.whitening = None
        if cfg.whiten:  # airbench's first layer, fitted on the training split only (a resumed run then loads its weights)
            self.whitening = whiten_first_conv(model, ds.train, Preprocess(ds.mean, ds.std, "cpu", channels_last=False),
                                               self.input_size, seed=cfg.seed)
        model = fuse(model, inplace=True, kernel=self.precision.device.type == "cpu") if cfg.fuse else model  # same values, faster

        device = self.precision.device
        model = model.to(device)
        if self.precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        net: nn.Module = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

            net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            net = torch.compile(net)
        self.net = net

        self.optimizer = build_optimizer(self.param_groups if self.param_groups is not None else model, cfg.optimizer,
                                         cfg.lr, cfg.momentum, cfg.weight_decay, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision.grad_scaling else None
        n_rank = len(ds.train) // world
        self.drop_last = n_rank >= self.rank_batch
        self.steps_per_epoch = n_rank // self.rank_batch if self.drop_last else 1
        # --max-steps: exactly that many steps (the last epoch may end early); the schedule spans them
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        warmup_steps = round(cfg.warmup * self.steps_per_epoch)
        # one schedule for every group (lr-find's sweep), or each group's from its own peak rate
        schedules = self.schedule_override or [build_schedule(cfg.schedule, g["lr"], self.total_steps, warmup_steps)
                                               for g in self.optimizer.param_groups]
        self.step = TrainStep(net, self.optimizer, self.precision, label_smoothing=cfg.label_smoothing,
                              grad_clip=cfg.grad_clip, clip_params=list(model.parameters()), scaler=self.scaler,
                              schedules=schedules, check=self._check,
                              class_weights=weights.to(device) if weights is not None else None)
        self.prep = Preprocess(ds.mean, ds.std, device, self.precision.channels_last)
        self.generator = torch.Generator(device=device)

        self.history: list[dict[str, Any]] = []
        self.best_accuracy, self.best_epoch = -1.0, 0
        self._best_state: dict[str, torch.Tensor] | None = None  # the chosen epoch's weights (CPU), when choosing
        self._last_test: tuple[int, EvalResult] | None = None  # (epoch, test evaluation) of the latest one
        self.start_epoch, self.start_step = 0, 0
        self.partial: dict[str, Any] | None = None
        self._resume_rng: dict[str, Any] | None = None
        self._call("on_fit_start")  # the RunWriter prepares its folder here, or restores a checkpoint

    # ---- checkpoint state (what a callback saves, and restores on resume) ---------------------
    def checkpoint_state(self, epoch: int, step: int) -> dict[str, Any]:
        """Everything needed to continue at `step` (batches done) of 0-based `epoch`, bit for bit."""
        partial = None
        if step:  # mid-epoch: the running sums of the unfinished epoch
            partial = {"loss_sum": self._loss_sum.cpu(), "correct": self._correct.cpu(), "count": self._count,
                       "seconds": self._seconds_before + time.perf_counter() - self._t0}
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,  # 0-based epoch to continue in
            "step": step,  # batches of that epoch already done
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": rng_state(self.generator),
            "history": self.history,
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            # the chosen epoch's weights, unless they are the model's own (the end of that epoch)
            "best_model": None if step == 0 and self.best_epoch == epoch else self._best_state,
            "partial": partial,
            "callbacks": {cb.state_key: s for cb in self.callbacks  # their own state (EMA weights, stopping counters)
                          if isinstance(cb, Callback) and (s := cb.state_dict()) is not None},
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Continue from a `checkpoint_state` (called by the RunWriter on resume, before the first epoch)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.history = list(state["history"])
        self.best_accuracy, self.best_epoch = state["best_accuracy"], state["best_epoch"]
        self.start_epoch, self.start_step = state["epoch"], state["step"]
        self._best_state = state.get("best_model")
        if self._best_state is None and self.selection.chooses and self.best_epoch and self.best_epoch == self.start_epoch \
                and not self.start_step:
            self._best_state = snapshot(self.model)
        self.partial = state.get("partial")
        self._resume_rng = state["rng"]
        saved = state.get("callbacks") or {}
        for cb in self.callbacks:  # before their on_fit_start when they come after the RunWriter
            if isinstance(cb, Callback) and cb.state_key in saved:
                cb.load_state_dict(saved[cb.state_key])

    # ---- signals ------------------------------------------------------------------------------
    def _install_signals(self):
        # In memory there is nothing to save: Ctrl-C keeps its default (KeyboardInterrupt).
        if self.run is None or threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self._stop_signal is not None:  # a second Ctrl-C: stop now, without a checkpoint
                raise KeyboardInterrupt
            self._stop_signal = signum
            if self.dist.is_main:
                print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping", file=sys.stderr)

        # Under DDP, SIGTERM usually comes from torchrun after another rank died: the collectives a
        # checkpoint needs cannot complete then, so the default (exit now) lets the restart proceed from
        # the last checkpoint. SIGINT (Ctrl-C reaches every rank at once) is still handled gracefully.
        signals = (signal.SIGINT,) if self.dist.enabled else (signal.SIGINT, signal.SIGTERM)
        old = {}
        for sig in signals:
            old[sig] = signal.signal(sig, handler)
        return old

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        try:
            return self._fit()
        finally:
            if self.run_lock is not None:
                self.run_lock.release()  # the run folder is free for a --resume or a reader from here on

    def _fit(self) -> TrainResult:
        self._setup()
        cfg = self.config
        old_handlers = self._install_signals()
        try:
            self._announce()
            for epoch in range(self.start_epoch, self.epochs):
                self._run_epoch(epoch)
                if self.stop_training:
                    break
            final = self._final_test()
            self._call("on_fit_end", final)
            distributed.barrier()  # no rank leaves (and tears down its connections) while rank 0 writes
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
        chosen = next((h for h in self.history if h["epoch"] == self.best_epoch), None)
        if chosen is not None and self.evaluate:
            self.log(self._final_summary(chosen))
        return TrainResult(self.run.path if self.run is not None else None, cfg, self.history, self.best_accuracy,
                           self.best_epoch, self.model, final, chosen.get("test_accuracy") if chosen else None,
                           chosen.get("test_loss") if chosen else None, self.chosen_by)

    def _final_test(self) -> EvalResult | None:
        """Load the chosen weights into the model and evaluate the test split on them, once; the figures go
        into the chosen epoch's record (marked `"chosen": true`)."""
        if not self.history:
            return None
        self.chosen_by = "val" if self.selection.chooses and self._best_state is not None else "last"
        if self.chosen_by == "val":
            self.model.load_state_dict(self._best_state)
        else:
            self.best_epoch = self.history[-1]["epoch"]  # nothing chose (no validation, or none evaluated): the last
        record = next(h for h in self.history if h["epoch"] == self.best_epoch)
        test, figures = None, None
        if self.evaluate and self.dist.is_main:
            if self._last_test is not None and self._last_test[0] == self.best_epoch and self.best_epoch == self.history[-1]["epoch"]:
                test = self._last_test[1]  # measured after that epoch already (--eval-test-every-epoch), same weights
            else:
                cfg = self.config
                test = evaluate_split(self.model, self.dataset.test, self.prep, self.precision, len(self.classes),
                                      self.classes, cfg.eval_batch_size, cfg.tta)
            figures = (test.loss, test.accuracy)
        figures = distributed.broadcast_object(figures)
        if figures is not None:
            record["test_loss"], record["test_accuracy"] = figures
            if self.chosen_by == "last":
                self.best_accuracy = figures[1]
        record["chosen"] = True
        return test

    def _final_summary(self, r: dict[str, Any]) -> str:
        sel, total = self.selection, self.history[-1]["epoch"]
        if self.chosen_by == "val":
            how = (f"chosen weights: epoch {r['epoch']} of {total}, best validation accuracy "
                   f"{100 * r['val_accuracy']:.2f}% ({sel.val_images:,} images: {sel.source})")
        else:
            how = f"kept the last weights (epoch {r['epoch']}; {sel.source}: trained on all {sel.train_images:,} training images, nothing chosen)"
        test = "" if r.get("test_accuracy") is None else (
            f"\ntest accuracy {100 * r['test_accuracy']:.2f}% (loss {r['test_loss']:.4f}) on {len(self.dataset.test):,} "
            f"images, evaluated once on the {'chosen' if self.chosen_by == 'val' else 'last'} weights")
        where = f"; run directory: {self.run.path}" if self.run is not None else ""
        return how + test + where

    def _announce(self) -> None:
        n_params = sum(p.numel() for p in self.model.parameters())
        ds = self.dataset
        world = f", {self.dist.world_size} processes" if self.dist.enabled else ""
        self.log(f"training {self.config.model} ({n_params:,} parameters) on {self.config.data} "
                 f"({len(ds.train):,} train / {self.selection.val_images:,} validation / {len(ds.test):,} test images, "
                 f"{getattr(ds, 'source', '')}) "
                 f"on {self.precision.device} in {self.precision.name}"
                 f"{' channels_last' if self.precision.channels_last else ''}{world}")
        self.log(self.selection.describe() if self.evaluate else "not evaluated: the last weights are kept")
        for option, why in self.default_notes.items():
            self.log(f"default {option.replace('_', '-')}: {why}")
        if self.whitening is not None:
            self.log(self.whitening.describe())
        self.log(f"run directory: {self.run.path}" if self.run is not None else "training in memory: no run directory")

    def _run_epoch(self, epoch: int) -> EvalResult | None:
        cfg, device = self.config, self.precision.device
        skip = self.start_step if epoch == self.start_epoch else 0
        if skip:  # mid-epoch: continue the exact random streams the checkpoint saved
            set_rng_state(self._resume_rng, self.generator)
        else:
            self.generator.manual_seed(_derived_seed(cfg.seed, epoch, self.dist.rank, 1))
            torch.manual_seed(_derived_seed(cfg.seed, epoch, self.dist.rank, 2))
        self._call("on_epoch_start", epoch)

        partial = self.partial if skip else None
        self._loss_sum = loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._correct = correct = torch.zeros((), dtype=torch.int64, device=device)
        self._count, self._seconds_before = 0, 0.0
        if partial:
            loss_sum += partial["loss_sum"].to(device)
            correct += partial["correct"].to(device)
            self._count, self._seconds_before = int(partial["count"]), float(partial["seconds"])
        self.net.train()
        last_step = min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)  # < with --max-steps
        bar = self.bar = ProgressBar(last_step, f"epoch {epoch + 1}/{self.epochs}",
                                     enabled=self.progress and self.dist.is_main)
        self._t0 = time.perf_counter()
        order = None  # epoch_order's shuffle; --sampler balanced: every class equally often, disjoint per rank
        if cfg.sampler == "balanced":
            order = balanced_order(self.dataset.train.labels, len(self.classes), seed=cfg.seed, epoch=epoch,
                                   rank=self.dist.rank, world_size=self.dist.world_size)
        batches = self.dataset.train.batches(self.rank_batch, shuffle=True, seed=cfg.seed, epoch=epoch,
                                             drop_last=self.drop_last, device=device,
                                             rank=self.dist.rank, world_size=self.dist.world_size, order=order)
        step = 0
        for step, (images, labels) in enumerate(batches, start=1):
            if step <= skip:
                continue  # already trained before the checkpoint we resumed from
            global_step = epoch * self.steps_per_epoch + step - 1
            x = self.prep(images, self.augment, self.generator)
            targets = labels
            if self.mix is not None:  # accuracy below is against each mixed target's dominant class
                x, targets = self.mix(x, labels, self.generator, len(self.classes))
            self._where = (epoch, step)
            out = self.last_step = self.step(x, targets, global_step,
                                             after_backward=lambda e=epoch, s=step: self._call("on_after_backward", e, s))
            with torch.no_grad():
                loss_sum += out.loss.double() * labels.shape[0]
                correct += (out.logits.argmax(1) == out.labels).sum()
            self._count += labels.shape[0]
            self._call("on_step_end", epoch, step)
            stop = self._stop_now
            if not self.dist.enabled and self._stop_signal is not None:
                stop = True  # a signal that arrived during this step stops after it
            if stop or (cfg.checkpoint_every and (global_step + 1) % cfg.checkpoint_every == 0):
                self._call("on_checkpoint", epoch, step)
            if stop:
                bar.close()
                name = signal.Signals(self._stop_signal or signal.SIGTERM).name
                saved = (f"checkpoint saved, continue with `cnnlab train --resume {self.run.path}`" if self.run is not None
                         else "nothing saved (training in memory)")
                raise TrainingInterrupted(f"stopped by {name} in epoch {epoch + 1} at step {step}; {saved}",
                                          self._stop_signal or signal.SIGTERM)
            n = self._count
            bar.update(step, n, lambda ls=loss_sum, k=correct, n=n: (float(ls) / max(n, 1), float(k) / max(n, 1)))
            if self.stop_training:  # a callback ended training: this epoch is not recorded
                bar.close()
                self.bar = None
                return None
            if step >= last_step:
                break
        self._shared_note = bar.epoch_note()  # '' on a quiet machine
        bar.close()
        self.bar = None
        if step == 0:
            raise CnnlabError("the training split yielded no batches; check the dataset")
        train_seconds = self._seconds_before + time.perf_counter() - self._t0
        return self._end_epoch(epoch, loss_sum, correct, self._count, train_seconds)

    def _check(self, loss: torch.Tensor) -> None:
        """Raise on a non-finite loss; note whether a stop signal arrived. Ranks agree under DDP."""
        epoch, step = self._where
        if self.dist.enabled:
            # one tiny all-reduce so that every rank stops at the same step (otherwise DDP deadlocks)
            flags = torch.stack([(~torch.isfinite(loss.detach())).float(),
                                 torch.tensor(float(self._stop_signal is not None), device=loss.device)])
            distributed.all_reduce_sum(flags)
            bad, stop = bool(flags[0] > 0), bool(flags[1] > 0)
            if stop and self._stop_signal is None:
                self._stop_signal = signal.SIGTERM
        else:
            # On a CPU reading one float is not a costly synchronisation: the step has already run.
            bad, stop = not bool(torch.isfinite(loss)), self._stop_signal is not None
        self._stop_now = stop
        if bad:
            last = list_checkpoints(self.run.checkpoints) if self.run is not None else []
            kept = f"; last good checkpoint kept: {last[0]}" if last else ""
            raise NonFiniteLossError(
                f"non-finite loss ({float(loss.detach()):.4g}) in epoch {epoch + 1} at step {step}; stopped before the optimizer "
                f"step{kept}; try a lower --lr (now {self.config.lr:g}) or --grad-clip 1.0"
            )

    def _end_epoch(self, epoch, loss_sum, correct, count, train_seconds) -> EvalResult | None:
        cfg = self.config
        totals = torch.stack([loss_sum.double().cpu(), correct.double().cpu(), torch.tensor(float(count), dtype=torch.float64)])
        distributed.all_reduce_sum(totals)
        t_eval = time.perf_counter()
        record, test, val = None, None, None
        # --eval-every: skipped epochs record None; the last epoch is always evaluated. The test split only
        # with --eval-test-every-epoch: otherwise it is evaluated once, on the chosen weights (_final_test)
        evaluated = self.evaluate and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == self.epochs)
        if self.dist.is_main:  # other ranks wait: evaluating on every rank would only compete for cores
            ds, k = self.dataset, len(self.classes)
            if evaluated and cfg.eval_test_every_epoch:
                test = evaluate_split(self.model, ds.test, self.prep, self.precision, k, self.classes,
                                      cfg.eval_batch_size, cfg.tta)
                self._last_test = (epoch + 1, test)
            if evaluated and self.selection.chooses:
                val = evaluate_split(self.model, ds.val, self.prep, self.precision, k, self.classes,
                                     cfg.eval_batch_size, cfg.tta)
            n = float(totals[2])
            record = {
                "epoch": epoch + 1,
                "train_loss": float(totals[0]) / n,
                "train_accuracy": float(totals[1]) / n,
                "test_loss": test.loss if test else None,
                "test_accuracy": test.accuracy if test else None,
                "val_loss": val.loss if val else None,
                "val_accuracy": val.accuracy if val else None,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_seconds": round(train_seconds, 3),
                "seconds": round(train_seconds + time.perf_counter() - t_eval, 3),
                "images_per_second": round(n / train_seconds, 1),
            }
            self._call("on_evaluate", epoch, record)  # callbacks may add figures (the EMA's) before it is logged
        record = distributed.broadcast_object(record)
        self.history.append(record)
        if not self.selection.chooses:
            self.best_epoch = epoch + 1  # nothing chooses: the last weights are the run's
        elif better(record, next((h for h in self.history if h["epoch"] == self.best_epoch), None)):
            self.best_accuracy, self.best_epoch = record["val_accuracy"], epoch + 1
            self._best_state = snapshot(self.model)  # every rank: each restores it at the end
        self.log(self._summary(record))
        self._call("on_epoch_end", epoch, record)  # the RunWriter saves weights and metrics first
        self._call("on_checkpoint", epoch + 1, 0)
        return test

    def _summary(self, r: dict[str, Any]) -> str:
        val = f"  val loss {r['val_loss']:.4f} acc {100 * r['val_accuracy']:5.2f}%" if r.get("val_accuracy") is not None else ""
        test = f"  test loss {r['test_loss']:.4f} acc {100 * r['test_accuracy']:5.2f}%" if r["test_accuracy"] is not None else ""
        held = self.selection.chooses or self.config.eval_test_every_epoch
        note = ("" if val or test else f"  (evaluated every {self.config.eval_every} epochs)" if self.evaluate and held
                else "" if self.evaluate else "  (not evaluated)")
        return (f"epoch {r['epoch']:>{len(str(self.epochs))}}/{self.epochs}  "
                f"train loss {r['train_loss']:.4f} acc {100 * r['train_accuracy']:5.2f}%{val}{test}{note}  "
                f"lr {r['lr']:.2e}  "
                f"{format_seconds(r['seconds'])} ({r['seconds']:.1f} s)  {r['images_per_second']:,.0f} img/s"
                + (f"  ({shared})" if (shared := getattr(self, "_shared_note", "")) else ""))
