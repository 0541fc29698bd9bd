"""One training step, the only one in cnnlab: every loop that trains runs it.

The Trainer calls it once per batch, and through the Trainer so do the learning-rate range test
(`lr_find`), the gradient lab (`cnnlab gradients`), fine-tuning and retraining in `cnnlab.transfer_learning`;
the torch heads of `cnnlab.transfer_learning.heads` call it directly on their feature vectors.

In order (`TrainStep.__call__`):
1. the learning rate of each parameter group, from its schedule and the global step;
2. the forward pass under autocast (`Precision.autocast`: bf16/fp16 where chosen, else fp32);
3. the loss in fp32: cross-entropy with label smoothing and optional class weights (log-softmax over bf16
   logits would lose the small differences that matter late in training); against class indices, or against
   soft targets (class probabilities, e.g. MixUp / CutMix's), smoothed the same way: (1 - ε) target + ε / K;
4. `check(loss)`: by default, refuse a non-finite loss; this runs before anything changes, so a NaN
   never reaches the weights or the optimizer's state;
5. backward (scaled under fp16, so small gradients do not underflow);
6. `after_backward()`: the gradients, unscaled, are in `.grad` (a gradient monitor reads them here);
7. optional clipping of the global gradient norm;
8. the optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.training.precision import Precision


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; raised before the optimizer step, the weights untouched."""


Schedule = Callable[[int], float]  # global step (0-based) -> learning rate


@dataclass
class StepOutput:
    """What one step computed, detached: `loss` fp32 scalar (with the step's label smoothing), `logits`
    (N, K) as the forward pass returned them, and the batch's `labels` (N,): with soft targets, the
    dominant class of each (the largest probability; the lower index on a tie)."""

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor


def refuse_non_finite(loss: torch.Tensor) -> None:
    """The default check: raise `NonFiniteLossError` on a NaN or infinite loss (reads one float)."""
    if not bool(torch.isfinite(loss)):
        raise NonFiniteLossError(f"non-finite loss ({float(loss.detach()):.4g}); stopped before the optimizer step")


class TrainStep:
    """One optimizer step of `net` on a batch: `step(x, labels, global_step) -> StepOutput`.

    Args:
        net: the module to call (possibly DDP- or compile-wrapped); `x` must already be what it reads.
        optimizer: the optimizer over the trainable parameters.
        precision: device and autocast dtype of the forward pass.
        label_smoothing: share of the target probability spread over the other classes (0: none).
        grad_clip: clip the global L2 norm of `clip_params`' gradients to this value (None: no clipping).
        clip_params: the parameters to clip (default: those of `optimizer`).
        scaler: a `torch.amp.GradScaler` for fp16, else None.
        schedules: one learning-rate schedule per parameter group of `optimizer` (or one for all);
            None leaves the rates as they are.
        check: called with the loss before anything changes; raises to stop (default `refuse_non_finite`).
        class_weights: (K,) float weights of the classes in the loss, on the logits' device (the batch's
            loss is then the weighted mean, as `F.cross_entropy(weight=)` takes it); None: all 1.
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision, *,
                 label_smoothing: float = 0.0, grad_clip: float | None = None,
                 clip_params: Iterable[nn.Parameter] | None = None, scaler: torch.amp.GradScaler | None = None,
                 schedules: Schedule | Sequence[Schedule] | None = None,
                 check: Callable[[torch.Tensor], None] = refuse_non_finite,
                 class_weights: torch.Tensor | None = None):
        self.net, self.optimizer, self.precision = net, optimizer, precision
        self.label_smoothing, self.grad_clip, self.scaler, self.check = label_smoothing, grad_clip, scaler, check
        self.clip_params = list(clip_params) if clip_params is not None else [
            p for g in optimizer.param_groups for p in g["params"]]
        if schedules is not None and callable(schedules):
            schedules = [schedules] * len(optimizer.param_groups)
        if schedules is not None and len(schedules) != len(optimizer.param_groups):
            raise ValueError(f"{len(schedules)} schedules for {len(optimizer.param_groups)} parameter groups")
        self.schedules = schedules
        self.class_weights = class_weights

    def set_lr(self, global_step: int) -> None:
        if self.schedules is not None:
            for group, schedule in zip(self.optimizer.param_groups, self.schedules, strict=True):
                group["lr"] = schedule(global_step)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, global_step: int, *,
                 after_backward: Callable[[], None] | None = None) -> StepOutput:
        """Train on one batch: x (N, ...) as `net` reads it, labels int64 (N,) or soft targets: float class
        probabilities (N, K), e.g. from `cnnlab.augment.mixing`."""
        self.set_lr(global_step)
        with self.precision.autocast():
            logits = self.net(x)  # (N, K)
        if self.class_weights is not None and labels.is_floating_point():
            # soft targets: the weighted mean over the samples' target weights (q . w), as torch takes it for
            # class indices (sum of w[y]); torch's own soft-target mean would divide by N instead
            per = F.cross_entropy(logits.float(), labels, weight=self.class_weights,
                                  label_smoothing=self.label_smoothing, reduction="none")
            loss = per.sum() / (labels.float() @ self.class_weights).sum()
        else:
            loss = F.cross_entropy(logits.float(), labels, weight=self.class_weights,
                                   label_smoothing=self.label_smoothing)  # fp32 scalar
        self.check(loss)
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip or after_backward is not None:  # clipping and hooks need the true (unscaled) gradients
                self.scaler.unscale_(self.optimizer)
            if after_backward is not None:
                after_backward()
            if clip:
                nn.utils.clip_grad_norm_(self.clip_params, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if after_backward is not None:
                after_backward()
            if clip:
                nn.utils.clip_grad_norm_(self.clip_params, clip, foreach=True)
            self.optimizer.step()
        return StepOutput(loss.detach(), logits.detach(), labels if labels.dim() == 1 else labels.argmax(1))
