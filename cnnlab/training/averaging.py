"""Weight averaging: an exponential moving average during training (`--ema`), and SWA over checkpoints.

`EMA(decay)` is a callback. After every optimizer step (`on_step_end`) it updates a copy of the model,
`ema = d * ema + (1 - d) * weights`, with the operation of PyTorch's EMA update (`get_ema_multi_avg_fn`:
one `torch._foreach_lerp_` over all floating-point tensors); the first step copies the weights.
- Warm-up: after `t` updates `d = min(decay, (1 + t) / (10 + t))`, as TensorFlow's ExponentialMovingAverage
  does with `num_updates`. Without it a short run's average keeps its random start: at decay 0.999, 420
  steps (the fashion-mnist recipe) leave 0.999**419 = 66% of the weight on the first step's weights. From
  t = 8,991 on, d is `decay` itself.
- This computes what `AveragedModel(model, use_buffers=True)` computes with that update as its
  `multi_avg_fn`, bit for bit (tests/test_train_averaging.py), but pairs the tensors once instead of at
  every step: AveragedModel walks both modules, regroups the tensors by dtype and reads its update count
  from the device (a host synchronisation on a GPU) at each call. Measured per update on AVX2 (2 shared
  Zen 3 cores): docs/averaging.md.
- Batch-norm statistics are *averaged* too (as `use_buffers=True`, timm's `ModelEmaV2` and Lightning's
  `EMAWeightAveraging` do): the running means and variances move with the weights they belong to. Integer
  counters (`num_batches_tracked`) are copied, not averaged.
- Evaluation: every evaluated epoch the averaged model is evaluated on the same splits as the raw one
  and the record gains `ema_val_loss`, `ema_val_accuracy`, `ema_test_loss`, `ema_test_accuracy` (None where
  not evaluated). Selection does not change: `best.safetensors`, `--early-stop` and `--schedule plateau`
  follow the raw weights' validation figures; the EMA's are recorded beside them for you to compare.
- Files: `ema.safetensors` / `ema.json` in the run folder after every epoch (the average after that
  epoch; the card's accuracy is the EMA's held-out accuracy); `cnnlab eval RUN --weights ema`.
- Resume: the averaged weights and the update count are in every checkpoint (`state_dict`), so a resumed
  run on CPU ends with bit-identical raw and EMA weights.

`average_checkpoints(run, last=k)` (`cnnlab average RUN --last K`) is stochastic weight averaging after
the fact (Izmailov et al. 2018): the equal-weight mean of the raw weights in the run's `k` newest
checkpoints (`AveragedModel`'s default average), then fresh batch-norm statistics from one pass over the
training split, unaugmented, through `torch.optim.swa_utils.update_bn` (averaged weights need statistics
of their own: the mean of k sets of running statistics belongs to none of them). Written as
`swa.safetensors` / `swa.json`; `cnnlab eval RUN --weights swa`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from cnnlab.core.preprocess import Preprocess
from cnnlab.core.run import ModelCard, open_run
from cnnlab.core.runlock import lock_run_dir
from cnnlab.core.weights import safe_torch_load
from cnnlab.errors import CnnlabError
from cnnlab.layers.fusion import fuse
from cnnlab.training.callbacks import Callback
from cnnlab.training.checkpoint import list_checkpoints
from cnnlab.training.evaluate import EvalResult, evaluate_split
from cnnlab.training.inputs import load_data
from cnnlab.training.precision import resolve_precision
from cnnlab.training.run import build_model
from cnnlab.training.rundir import RunWriter

Trainer = Any  # cnnlab.training.loop.Trainer, which imports this module (annotations only)

EMA_KEYS = ("ema_val_loss", "ema_val_accuracy", "ema_test_loss", "ema_test_accuracy")


class EMA(Callback):
    """An exponential moving average of the model's weights and batch-norm statistics, per optimizer step."""

    def __init__(self, decay: float):
        if not isinstance(decay, (int, float)) or isinstance(decay, bool) or not 0.0 < decay < 1.0:
            raise CnnlabError(f"ema decay must be a number in (0, 1) such as 0.999, got {decay!r}")
        self.decay = float(decay)
        self.updates = 0  # optimizer steps averaged so far
        self._module: nn.Module | None = None
        self._restored: dict[str, Any] | None = None  # from a checkpoint, until the averaged model exists

    def decay_at(self, updates: int) -> float:
        """The decay of the update after `updates` earlier ones (the warm-up above)."""
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @property
    def module(self) -> nn.Module:
        """The averaged model (same class and state-dict keys as the trained one)."""
        if self._module is None:
            raise CnnlabError("the EMA has no weights before training starts")
        return self._module

    def on_fit_start(self, trainer: Trainer) -> None:
        self._module = copy.deepcopy(trainer.model).requires_grad_(False)
        # pairs (average, weight) made once: parameters and buffers keep their tensors for the whole run
        pairs = list(zip([*self._module.parameters(), *self._module.buffers()],
                         [*trainer.model.parameters(), *trainer.model.buffers()], strict=True))
        self._floats = ([a for a, _ in pairs if a.is_floating_point()], [w for a, w in pairs if a.is_floating_point()])
        self._counters = [(a, w) for a, w in pairs if not a.is_floating_point()]  # num_batches_tracked: copied
        if self._restored is not None:
            self.load_state_dict(self._restored)
            self._restored = None

    @torch.no_grad()
    def on_step_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        averages, weights = self._floats
        if self.updates == 0:  # the first average is the weights themselves
            torch._foreach_copy_(averages, weights)
        elif averages:
            # what get_ema_multi_avg_fn(d) runs, without building that function anew at each step of the warm-up
            torch._foreach_lerp_(averages, weights, 1.0 - self.decay_at(self.updates))
        for a, w in self._counters:
            a.copy_(w)
        self.updates += 1

    def on_evaluate(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        for split in ("val", "test"):  # the splits the raw model was evaluated on this epoch
            result = self._evaluate(trainer, split) if record.get(f"{split}_accuracy") is not None else None
            record[f"ema_{split}_loss"] = result.loss if result else None
            record[f"ema_{split}_accuracy"] = result.accuracy if result else None

    def _evaluate(self, trainer: Trainer, split: str) -> EvalResult:
        cfg = trainer.config
        return evaluate_split(self.module, getattr(trainer.dataset, split), trainer.prep, trainer.precision,
                              len(trainer.classes), trainer.classes, cfg.eval_batch_size, cfg.tta)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        held = metrics.get(f"ema_{trainer.held_name}_accuracy")
        parts = [f"{split} loss {metrics[f'ema_{split}_loss']:.4f} acc {100 * metrics[f'ema_{split}_accuracy']:5.2f}%"
                 for split in ("val", "test") if metrics.get(f"ema_{split}_accuracy") is not None]
        if parts:
            trainer.log(f"  ema (decay {self.decay:g}): " + "  ".join(parts))
        if trainer.run is not None and trainer.dist.is_main:
            # the RunWriter's card (model, classes, normalisation), with this epoch and the EMA's own accuracy
            trainer.run.save_weights("ema", self.module, RunWriter._card(trainer, epoch + 1, held))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._module is None:  # resuming: the RunWriter restores the checkpoint before our on_fit_start
            self._restored = state
            return
        self._module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])


# ---- SWA over a run's checkpoints ----------------------------------------------------------------------
@dataclass
class AverageResult:
    """What `average_checkpoints` wrote and measured; accuracies are shares in [0, 1]."""

    path: Path  # RUN/<name>.safetensors
    checkpoints: list[str]  # the averaged checkpoints' file names, oldest first
    bn_images: int  # training images the batch-norm statistics were recomputed on (0: the model has none)
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # {"swa": {"val": .., "test": ..}, "last": ..}

    def summary(self) -> str:
        names = ", ".join(self.checkpoints)
        bn = (f"batch-norm statistics recomputed on {self.bn_images:,} training images" if self.bn_images
              else "no batch norm to recompute")
        lines = [f"averaged {len(self.checkpoints)} checkpoints ({names}); {bn}", f"wrote {self.path}"]
        for which, accs in self.accuracy.items():
            lines.append(f"{which:>5}: " + "  ".join(f"{split} accuracy {100 * a:.2f}%" for split, a in accs.items()))
        return "\n".join(lines)


def average_checkpoints(run: str | Path, last: int = 3, *, name: str = "swa", device: str = "auto",
                        batch_size: int = 256) -> AverageResult:
    """Average the raw weights of the run's `last` newest checkpoints, recompute the batch-norm statistics
    on its training split (`update_bn`), write `RUN/<name>.safetensors` and `.json`, and evaluate them and
    `last` on the run's validation (if it had one) and test splits."""
    if not isinstance(last, int) or isinstance(last, bool) or last < 1:
        raise CnnlabError(f"--last must be a positive number of checkpoints, got {last!r}")
    if name in ("best", "last", "ema", "config") or not name.replace("-", "").replace("_", "").isalnum():
        raise CnnlabError(f"name '{name}' is taken by the run's own files or is no plain file name; choose e.g. swa")
    run_dir = open_run(run)
    with lock_run_dir(run_dir.path):  # no training may write the folder meanwhile
        found = list_checkpoints(run_dir.checkpoints)
        if len(found) < last:
            have = ", ".join(p.name for p in found) or "none"
            raise CnnlabError(f"run '{run_dir.path}' keeps {len(found)} checkpoints ({have}), fewer than --last {last}; "
                              f"train with --keep-checkpoints {last} (or more) to average {last}")
        chosen = list(reversed(found[:last]))  # oldest first
        card = run_dir.card("last")
        cfg = run_dir.read_config().get("config", {})
        prec = resolve_precision("auto", device)
        model = build_model(card.model, card.input_size, card.num_classes, card.model_options)
        if cfg.get("fuse", True):
            model = fuse(model, inplace=True, kernel=prec.device.type == "cpu")  # same values as unfused, faster
        model = model.to(prec.device)
        if prec.channels_last:
            model = model.to(memory_format=torch.channels_last)

        averaged = AveragedModel(model)  # equal weights: after k updates, the mean of the k models
        newest_epoch = card.epoch
        for path in chosen:
            state = safe_torch_load(path)
            if not isinstance(state, dict) or "model" not in state:
                raise CnnlabError(f"checkpoint '{path}' is not a cnnlab checkpoint; remove it or restore it")
            try:
                model.load_state_dict(state["model"])
            except RuntimeError as e:
                raise CnnlabError(f"checkpoint '{path}' does not fit the run's model '{card.model}': "
                                  f"{str(e).splitlines()[0][:160]}") from None
            averaged.update_parameters(model)
            newest_epoch = int(state.get("epoch", newest_epoch))

        # the data exactly as training split it (the same validation images held out), unaugmented
        ds = load_data(card.dataset, data_dir=cfg.get("data_dir"), image_size=cfg.get("image_size"),
                       val_fraction=cfg.get("val_fraction", 0.0), seed=cfg.get("seed", 0))
        prep = Preprocess(card.mean, card.std, prec.device, prec.channels_last)
        swa = averaged.module
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in swa.modules())
        update_bn((prep(images) for images, _ in ds.train.batches(batch_size, shuffle=False, device=prec.device)), swa)
        swa.eval()

        splits = {"val": ds.val, "test": ds.test} if ds.val is not None else {"test": ds.test}
        last_model = build_model(card.model, card.input_size, card.num_classes, card.model_options)
        last_model.load_state_dict(run_dir.load_weights("last")[0])
        last_model = last_model.to(prec.device)
        if prec.channels_last:
            last_model = last_model.to(memory_format=torch.channels_last)
        accuracy: dict[str, dict[str, float]] = {}
        for which, m in ((name, swa), ("last", last_model)):
            accuracy[which] = {split: evaluate_split(m, part, prep, prec, card.num_classes, card.classes, batch_size,
                                                     cfg.get("tta", "none")).accuracy
                               for split, part in splits.items()}
        held = accuracy[name].get("val", accuracy[name]["test"])
        swa_card = ModelCard(card.model, card.model_options, card.num_classes, card.classes, card.input_size, card.mean,
                             card.std, card.dataset, newest_epoch, held,
                             extra={"averaged": [p.name for p in chosen], "bn_images": len(ds.train) if has_bn else 0})
        run_dir.save_weights(name, swa, swa_card)
    return AverageResult(run_dir.path / f"{name}.safetensors", [p.name for p in chosen],
                         len(ds.train) if has_bn else 0, accuracy)
