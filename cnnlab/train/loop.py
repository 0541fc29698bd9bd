"""The training loop: `Trainer(config).fit()` -> `TrainResult`.

One step, in order (see `_train_epoch`): set the step's learning rate; uint8 batch -> augmented,
normalised, channels_last float; forward under autocast; loss in fp32; check the loss is finite
(before the optimizer step, so a NaN never reaches the weights); backward; optional clipping; step.
Losses and hit counts are summed on the device; the host reads them only when the progress bar redraws
and once per epoch.

Reproducibility: the seed fixes the initial weights; the data order is a pure function of
(seed, epoch); augmentation and dropout RNGs are re-seeded from (seed, epoch, rank) at each epoch start
and saved in every checkpoint, so a resumed run on CPU ends with bit-identical weights.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.layers._native import status as native_status
from cnnlab.models.downsampling import downsampling_warning
from cnnlab.runtime import tune_allocator
from cnnlab.train import distributed
from cnnlab.train.checkpoint import (
    list_checkpoints,
    load_latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from cnnlab.train.config import TrainConfig
from cnnlab.train.evaluate import EvalResult, evaluate_split
from cnnlab.train.inputs import Preprocess, load_data, parse_augment
from cnnlab.train.optim import build_optimizer, build_schedule, set_lr
from cnnlab.train.precision import resolve_precision
from cnnlab.train.progress import ProgressBar, format_seconds
from cnnlab.train.run import ModelCard, RunDir, build_model, check_model_fits, default_run_name, environment

CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; raised before the optimizer step, the last checkpoint kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was written first. `signum` says which signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class Callback:
    """Hooks into the loop (Keras style); override the ones you need. `trainer` exposes its state."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_after_backward(self, trainer: Trainer, epoch: int, step: int) -> None:
        """Gradients are in `.grad` here: after backward (unscaled), before clipping and the optimizer step."""

    def on_step_end(self, trainer: Trainer, epoch: int, step: int) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    """What `train()` returns. Epochs are 1-based in `history`; accuracies are shares in [0, 1]."""

    path: Path | None  # the run directory
    config: TrainConfig  # resolved options
    history: list[dict[str, Any]]  # one record per epoch, as in metrics.jsonl
    best_accuracy: float
    best_epoch: int
    model: nn.Module  # the trained model (last epoch), on the training device
    last_eval: EvalResult | None = field(default=None, repr=False)  # test evaluation of the last epoch

    @property
    def test_accuracy(self) -> float:
        return self.history[-1]["test_accuracy"] if self.history else float("nan")


def _derived_seed(*parts: int) -> int:
    # SeedSequence mixes (seed, epoch, rank) into well-separated streams; Python's hash() is not stable.
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class Trainer:
    """Trains one model on one dataset as `config` says, writing a run directory (rank 0 only).

    `model` and `data` may be given as objects (an `nn.Module`, a `cnnlab.data.Dataset`) instead of the
    names in `config`; a run trained from an arbitrary module cannot be rebuilt by `cnnlab eval`.
    """

    def __init__(self, config: TrainConfig, *, model: nn.Module | None = None, data=None,
                 resume: str | Path | None = None, callbacks: Sequence[Callback] = (),
                 quiet: bool = False, verbose: bool = True, plots: bool = True):
        self.module = model
        self.data = data
        self.resume = Path(resume) if resume is not None else None
        self.callbacks = list(callbacks)
        self.quiet, self.verbose = quiet, verbose
        self.plots = plots  # curves.png and confusion.png (~1 s of matplotlib; experiments draw their own)
        if model is not None:
            config = dataclasses.replace(config, model=f"<module {type(model).__name__}>")
        if data is not None and not isinstance(data, str):
            config = dataclasses.replace(config, data=str(getattr(data, "name", type(data).__name__)))
        self.config = config.resolved()  # refuses bad options before anything else happens
        if self.config.monitor_gradients:
            from cnnlab.inspect.gradients import GradientMonitor  # noqa: PLC0415

            if not any(isinstance(cb, GradientMonitor) for cb in self.callbacks):
                self.callbacks.append(GradientMonitor())  # writes RUN/gradients.jsonl and gradients.png
        for cb in self.callbacks:  # monitors with no handler of their own: around the progress bar
            if getattr(cb, "on_warning", False) is None:
                cb.on_warning = lambda msg: self.warn(f"gradient warning: {msg}")
        self.bar: ProgressBar | None = None  # the current epoch's, while it trains
        self._stop_signal: int | None = None

    # ---- output -------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.verbose and self.dist.is_main:
            print(message, flush=True)

    def warn(self, message: str) -> None:
        """A warning on stderr, on its own line even while the progress bar is drawn."""
        if self.bar is not None:
            self.bar.message(message)
        else:
            print(message, file=sys.stderr, flush=True)

    # ---- setup --------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        prec = resolve_precision(cfg.precision, cfg.device, cfg.channels_last)
        if prec.device.type == "cpu":
            tune_allocator()  # activations are re-allocated every step: keep them off the page-fault path
        self.augment = parse_augment(cfg.augment)
        self.dist = distributed.init(prec.device)
        self.precision = dataclasses.replace(prec, device=distributed.device_for(self.dist, prec.device))
        world = self.dist.world_size
        if cfg.batch_size % world:
            raise CnnlabError(f"batch-size {cfg.batch_size} must be divisible by the {world} processes (it is the global batch)")
        self.rank_batch = cfg.batch_size // world

        ds = load_data(self.data if self.data is not None else cfg.data, data_dir=cfg.data_dir,
                       image_size=cfg.image_size, val_fraction=cfg.val_fraction, seed=cfg.seed)
        self.dataset = ds
        self.input_size = tuple(ds.input_size)
        self.classes = list(ds.classes)
        if self.augment is not None and tuple(self.augment.output_size(self.input_size)) != self.input_size:
            raise CnnlabError(
                f"augmentation '{self.augment}' changes the image size {self.input_size} -> "
                f"{tuple(self.augment.output_size(self.input_size))}; test images would not match; use size-preserving ops"
            )
        self.held_name = "val" if ds.val is not None and cfg.val_fraction > 0 else "test"

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

        self._setup_run_dir()

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

        self.optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision.grad_scaling else None
        n_rank = len(ds.train) // world
        self.drop_last = n_rank >= self.rank_batch
        self.steps_per_epoch = n_rank // self.rank_batch if self.drop_last else 1
        self.total_steps = self.steps_per_epoch * cfg.epochs
        warmup_steps = round(cfg.warmup * self.steps_per_epoch)
        self.schedule = build_schedule(cfg.schedule, cfg.lr, self.total_steps, warmup_steps)
        self.prep = Preprocess(ds.mean, ds.std, device, self.precision.channels_last)
        self.generator = torch.Generator(device=device)

        self.history: list[dict[str, Any]] = []
        self.best_accuracy, self.best_epoch = -1.0, 0
        self.start_epoch, self.start_step = 0, 0
        self.partial: dict[str, Any] | None = None
        if self.resuming:
            self._restore()

    def _setup_run_dir(self) -> None:
        cfg, info = self.config, self.dist
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
        self.run = RunDir(path)
        has_ckpt = bool(list_checkpoints(self.run.checkpoints))
        # torchrun restarted us after a failure: continue the run instead of refusing its folder
        self.resuming = self.resume is not None or (info.restart > 0 and has_ckpt)
        if self.resume is not None and not has_ckpt:
            raise CnnlabError(f"cannot resume '{path}': no checkpoints in {self.run.checkpoints}")
        if not self.resuming and self.run.exists():
            raise CnnlabError(f"run directory '{path}' already holds a run; continue it with --resume {path} or choose another --out")
        distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
        if info.is_main and not self.resuming:
            self.run.write_config(self._config_record())

    def _config_record(self) -> dict[str, Any]:
        ds = self.dataset
        return {
            "config": self.config.to_dict(),
            "seed": self.config.seed,
            "command": sys.argv,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": str(self.precision.device),
            "precision": self.precision.name,
            "channels_last": self.precision.channels_last,
            "c_kernels": native_status(),
            "world_size": self.dist.world_size,
            "dataset": {"name": getattr(ds, "name", self.config.data), "source": getattr(ds, "source", None),
                        "classes": self.classes, "input_size": list(self.input_size), "mean": list(ds.mean),
                        "std": list(ds.std), "train": len(ds.train), "test": len(ds.test),
                        "val": len(ds.val) if ds.val is not None else 0},
            "model_options": self.model_options,
            "environment": environment(),
        }

    # ---- checkpoints --------------------------------------------------------------------------
    def _checkpoint(self, epoch: int, step: int, partial: dict[str, Any] | None) -> None:
        if not self.dist.is_main:
            return
        state = {
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
            "partial": partial,
        }
        save_checkpoint(self.run.checkpoints, state, epoch * self.steps_per_epoch + step, self.config.keep_checkpoints)

    def _restore(self) -> None:
        state, path = load_latest_checkpoint(self.run.checkpoints, log=self.log)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.history = list(state["history"])
        self.best_accuracy, self.best_epoch = state["best_accuracy"], state["best_epoch"]
        self.start_epoch, self.start_step = state["epoch"], state["step"]
        self.partial = state.get("partial")
        self._resume_rng = state["rng"]
        if self.dist.is_main:
            self.run.write_metrics(self.history)  # drop records written after this checkpoint
        where = f"epoch {self.start_epoch + 1}, step {self.start_step}" if self.start_step else f"the start of epoch {self.start_epoch + 1}"
        self.log(f"resuming {self.run.path} from {path.name} ({where})")

    # ---- signals ------------------------------------------------------------------------------
    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
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
        self._setup()
        cfg = self.config
        old_handlers = self._install_signals()
        try:
            self._announce()
            last_eval = None
            for epoch in range(self.start_epoch, cfg.epochs):
                last_eval = self._run_epoch(epoch)
            if self.dist.is_main and self.history and self.plots:
                self._plots(last_eval)
            distributed.barrier()  # no rank leaves (and tears down its connections) while rank 0 writes
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
        if self.history:
            self.log(f"best {self.held_name} accuracy {100 * self.best_accuracy:.2f}% (epoch {self.best_epoch}); "
                     f"run directory: {self.run.path}")
        return TrainResult(self.run.path, cfg, self.history, self.best_accuracy, self.best_epoch, self.model, last_eval)

    def _announce(self) -> None:
        n_params = sum(p.numel() for p in self.model.parameters())
        ds = self.dataset
        world = f", {self.dist.world_size} processes" if self.dist.enabled else ""
        self.log(f"training {self.config.model} ({n_params:,} parameters) on {self.config.data} "
                 f"({len(ds.train):,} train / {len(ds.test):,} test images, {getattr(ds, 'source', '')}) "
                 f"on {self.precision.device} in {self.precision.name}"
                 f"{' channels_last' if self.precision.channels_last else ''}{world}")
        self.log(f"run directory: {self.run.path}")

    def _run_epoch(self, epoch: int) -> EvalResult:
        cfg, device = self.config, self.precision.device
        skip = self.start_step if epoch == self.start_epoch else 0
        if skip:  # mid-epoch: continue the exact random streams the checkpoint saved
            set_rng_state(self._resume_rng, self.generator)
        else:
            self.generator.manual_seed(_derived_seed(cfg.seed, epoch, self.dist.rank, 1))
            torch.manual_seed(_derived_seed(cfg.seed, epoch, self.dist.rank, 2))
        for cb in self.callbacks:
            cb.on_epoch_start(self, epoch)

        partial = self.partial if skip else None
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        count, seconds_before = 0, 0.0
        if partial:
            loss_sum += partial["loss_sum"].to(device)
            correct += partial["correct"].to(device)
            count, seconds_before = int(partial["count"]), float(partial["seconds"])
        self.net.train()
        bar = self.bar = ProgressBar(self.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}",
                                     enabled=self.verbose and not self.quiet and self.dist.is_main)
        t0 = time.perf_counter()
        batches = self.dataset.train.batches(self.rank_batch, shuffle=True, seed=cfg.seed, epoch=epoch,
                                             drop_last=self.drop_last, device=device,
                                             rank=self.dist.rank, world_size=self.dist.world_size)
        step = 0
        for step, (images, labels) in enumerate(batches, start=1):
            if step <= skip:
                continue  # already trained before the checkpoint we resumed from
            global_step = epoch * self.steps_per_epoch + step - 1
            set_lr(self.optimizer, self.schedule(global_step))
            x = self.prep(images, self.augment, self.generator)
            with self.precision.autocast():
                logits = self.net(x)
            # fp32 loss: log-softmax over bf16 logits would lose the small differences that matter late on
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
            stop = self._check(loss, epoch, step)
            self.optimizer.zero_grad(set_to_none=True)
            self._backward_step(loss, epoch, step)
            with torch.no_grad():
                loss_sum += loss.detach().double() * labels.shape[0]
                correct += (logits.argmax(1) == labels).sum()
            count += labels.shape[0]
            for cb in self.callbacks:
                cb.on_step_end(self, epoch, step)
            if not self.dist.enabled and self._stop_signal is not None:
                stop = True  # a signal that arrived during this step stops after it
            if stop or (cfg.checkpoint_every and (global_step + 1) % cfg.checkpoint_every == 0):
                self._checkpoint(epoch, step, {"loss_sum": loss_sum.cpu(), "correct": correct.cpu(), "count": count,
                                               "seconds": seconds_before + time.perf_counter() - t0})
            if stop:
                bar.close()
                name = signal.Signals(self._stop_signal or signal.SIGTERM).name
                raise TrainingInterrupted(
                    f"stopped by {name} in epoch {epoch + 1} at step {step}; checkpoint saved, continue with "
                    f"`cnnlab train --resume {self.run.path}`", self._stop_signal or signal.SIGTERM)
            bar.update(step, count, lambda ls=loss_sum, k=correct, n=count: (float(ls) / max(n, 1), float(k) / max(n, 1)))
        bar.close()
        self.bar = None
        if step == 0:
            raise CnnlabError("the training split yielded no batches; check the dataset")
        train_seconds = seconds_before + time.perf_counter() - t0
        return self._end_epoch(epoch, loss_sum, correct, count, train_seconds)

    def _check(self, loss: torch.Tensor, epoch: int, step: int) -> bool:
        """Raise on a non-finite loss; return whether a stop signal arrived. Ranks agree under DDP."""
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
        if bad:
            last = list_checkpoints(self.run.checkpoints)
            kept = f"; last good checkpoint kept: {last[0]}" if last else ""
            raise NonFiniteLossError(
                f"non-finite loss ({float(loss.detach()):.4g}) in epoch {epoch + 1} at step {step}; stopped before the optimizer "
                f"step{kept}; try a lower --lr (now {self.config.lr:g}) or --grad-clip 1.0"
            )
        return stop

    def _backward_step(self, loss: torch.Tensor, epoch: int = 0, step: int = 0) -> None:
        clip = self.config.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip or self.callbacks:  # callbacks read the true (unscaled) gradients
                self.scaler.unscale_(self.optimizer)
            self._after_backward(epoch, step)
            if clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return
        loss.backward()
        self._after_backward(epoch, step)
        if clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), clip, foreach=True)
        self.optimizer.step()

    def _after_backward(self, epoch: int, step: int) -> None:
        for cb in self.callbacks:
            hook = getattr(cb, "on_after_backward", None)  # callbacks written before this hook lack it
            if hook is not None:
                hook(self, epoch, step)

    def _end_epoch(self, epoch, loss_sum, correct, count, train_seconds) -> EvalResult | None:
        cfg = self.config
        totals = torch.stack([loss_sum.double().cpu(), correct.double().cpu(), torch.tensor(float(count), dtype=torch.float64)])
        distributed.all_reduce_sum(totals)
        t_eval = time.perf_counter()
        record, test, val = None, None, None
        # --eval-every: skipped epochs record None; the last epoch is always evaluated
        evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        if self.dist.is_main:  # other ranks wait: evaluating on every rank would only compete for cores
            ds, k = self.dataset, len(self.classes)
            if evaluated:
                test = evaluate_split(self.model, ds.test, self.prep, self.precision, k, self.classes,
                                      cfg.eval_batch_size, cfg.tta)
                if self.held_name == "val":
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
        record = distributed.broadcast_object(record)
        self.history.append(record)
        held = record[f"{self.held_name}_accuracy"]
        improved = held is not None and held > self.best_accuracy
        if improved:
            self.best_accuracy, self.best_epoch = held, epoch + 1
        if self.dist.is_main:
            self.run.save_weights("last", self.model, self._card(epoch + 1, held))
            if improved:
                self.run.save_weights("best", self.model, self._card(epoch + 1, held))
            self._checkpoint(epoch + 1, 0, None)
            self.run.write_metrics(self.history)
        self.log(self._summary(record))
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch, record)
        return test

    def _card(self, epoch: int, accuracy: float) -> ModelCard:
        ds = self.dataset
        return ModelCard(self.config.model, self.model_options, len(self.classes), self.classes, self.input_size,
                         tuple(ds.mean), tuple(ds.std), self.config.data, epoch, accuracy)

    def _summary(self, r: dict[str, Any]) -> str:
        val = f"  val loss {r['val_loss']:.4f} acc {100 * r['val_accuracy']:5.2f}%" if r.get("val_accuracy") is not None else ""
        test = (f"test loss {r['test_loss']:.4f} acc {100 * r['test_accuracy']:5.2f}%" if r["test_accuracy"] is not None
                else f"(evaluated every {self.config.eval_every} epochs)")
        return (f"epoch {r['epoch']:>{len(str(self.config.epochs))}}/{self.config.epochs}  "
                f"train loss {r['train_loss']:.4f} acc {100 * r['train_accuracy']:5.2f}%{val}  "
                f"{test}  lr {r['lr']:.2e}  "
                f"{format_seconds(r['seconds'])} ({r['seconds']:.1f} s)  {r['images_per_second']:,.0f} img/s")

    def _plots(self, last_eval: EvalResult | None) -> None:
        from cnnlab.train.plots import plot_confusion, plot_curves  # noqa: PLC0415 - matplotlib is slow to import

        plot_curves(self.history, self.run.path / "curves.png", title=f"{self.config.model} on {self.config.data}")
        if last_eval is not None:
            plot_confusion(last_eval.confusion, self.classes, self.run.path / "confusion.png",
                           title=f"test, epoch {self.history[-1]['epoch']}: {100 * last_eval.accuracy:.2f}%")


