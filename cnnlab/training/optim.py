"""Optimizers and learning-rate schedules.

Schedules are plain functions of the global step (`lr = schedule(step)`), set on the optimizer before
each step: nothing to pickle, and a resumed run gets exactly the same rates from the step number alone.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from cnnlab.errors import CnnlabError


def _param_groups(params: Iterable[nn.Parameter], weight_decay: float, **options) -> list[dict]:
    """Decay weights of convolutions and linear layers only: decaying biases and batch-norm scales
    shrinks them towards zero for no regularisation benefit (as in timm and nanoGPT). `options` (a
    group's own "lr", "name") go to both halves."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, **options},
            {"params": no_decay, "weight_decay": 0.0, **options}]


def split_groups(model_or_groups: nn.Module | Sequence[dict], weight_decay: float) -> list[dict]:
    """Optimizer groups for a model (all its trainable parameters), or for given groups
    (`{"params": [...], "lr": peak, "name": ...}`, e.g. fine-tuning's per-stage rates), each split in two
    by `_param_groups`; groups left without parameters are dropped."""
    if isinstance(model_or_groups, nn.Module):
        return _param_groups(model_or_groups.parameters(), weight_decay)
    out = []
    for group in model_or_groups:
        options = {k: v for k, v in group.items() if k != "params"}
        out += [g for g in _param_groups(group["params"], weight_decay, **options) if g["params"]]
    if not out:
        raise CnnlabError("no trainable parameters in the given parameter groups")
    return out


def _fast_kwargs(cls: type, device: torch.device) -> dict:
    """`fused=True` where this torch offers it on this device (one kernel for the whole update),
    otherwise `foreach=True` (one call per parameter list instead of per tensor)."""
    params = inspect.signature(cls.__init__).parameters
    if "fused" in params:
        try:
            probe = nn.Parameter(torch.zeros(2, device=device))
            probe.grad = torch.zeros(2, device=device)
            cls([probe], lr=0.1, fused=True).step()
            return {"fused": True}
        except (RuntimeError, ValueError, TypeError):
            pass
    return {"foreach": True} if "foreach" in params else {}


def build_optimizer(
    model: nn.Module | Sequence[dict], name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
    device: torch.device | str = "cpu",
) -> torch.optim.Optimizer:
    """`sgd` (Nesterov momentum), `adam` or `adamw` over the model's trainable parameters, or over given
    parameter groups (`split_groups`); `lr` is the rate of groups that do not bring their own."""
    device = torch.device(device)
    groups = split_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0,
                               **_fast_kwargs(torch.optim.SGD, device))
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(groups, lr=lr, betas=(momentum, 0.999), **_fast_kwargs(cls, device))
    raise CnnlabError(f"unknown optimizer '{name}'; choose one of: sgd, adam, adamw")


def build_schedule(name: str, peak_lr: float, total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """The learning rate (same units as `peak_lr`) at global step 0 .. total_steps-1.

    - onecycle: cosine warm-up from peak/25 to peak, then cosine down to peak/2.5e5 (Smith & Topin 2018;
      the same rates as PyTorch's `OneCycleLR` with `pct_start = warmup_steps / total_steps`).
    - cosine: optional linear warm-up from 0, then cosine from peak to 0 (Loshchilov & Hutter 2017).
    - step: peak, divided by 10 at 50% and 75% of training (the ResNet-on-CIFAR recipe).
    - constant: optional linear warm-up, then peak.
    - plateau: as constant; `cnnlab.training.stopping.PlateauSchedule` scales it when validation stalls.
    """
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, min(int(warmup_steps), total_steps))

    def cosine(progress: float, start: float, end: float) -> float:
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    if name == "onecycle":
        # PyTorch's OneCycleLR (cosine annealing in both phases): up from peak/25 over the warm-up,
        # then down to peak/25/1e4 at the last step.
        start, end = peak_lr / 25.0, peak_lr / 25.0 / 1e4
        up_end = float(max(warmup_steps, 1) - 1)  # the step at which the peak is reached

        def lr(step: int) -> float:
            if step <= up_end:
                return cosine(step / up_end if up_end > 0 else 1.0, start, peak_lr)
            return cosine((step - up_end) / max(total_steps - 1 - up_end, 1), peak_lr, end)
    elif name == "cosine":
        def lr(step: int) -> float:
            if step < warmup_steps:
                return peak_lr * (step + 1) / (warmup_steps + 1)
            return cosine((step - warmup_steps) / max(1, total_steps - warmup_steps), peak_lr, 0.0)
    elif name == "step":
        def lr(step: int) -> float:
            if step < warmup_steps:
                return peak_lr * (step + 1) / (warmup_steps + 1)
            return peak_lr * (0.1 ** ((step >= 0.5 * total_steps) + (step >= 0.75 * total_steps)))
    elif name in ("constant", "plateau"):
        def lr(step: int) -> float:
            return peak_lr * (step + 1) / (warmup_steps + 1) if step < warmup_steps else peak_lr
    else:
        raise CnnlabError(f"unknown schedule '{name}'; choose one of: onecycle, cosine, step, constant, plateau")
    return lr
