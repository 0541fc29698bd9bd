"""Training a cut backbone with a new head: fine-tuning (head first, then the body with per-stage rates),
retraining from the backbone's weights, and training the same architecture from scratch.

The network is `Classifier(adapter, body, head)`: the input adapter, the backbone cut at a layer
(`Truncated`), and a fresh `nn.Linear`. Per-stage learning rates (discriminative fine-tuning, Howard &
Ruder 2018): the head gets `lr`, the last stage of the body `lr * body_factor`, each earlier stage
`stage_decay` times less than the one after it; earlier layers are more generic and should move less.
Training runs through the Trainer (`fit`), so precision, channels_last, augmentation and label
smoothing apply as in `cnnlab train`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnlab.data.dataset import Dataset
from cnnlab.training.config import TrainConfig
from cnnlab.training.loop import Trainer
from cnnlab.transfer_learning.freeze import freeze, unfreeze


class Classifier(nn.Module):
    """uint8 (N, C, H, W) -> adapter -> body (N, D) -> head -> (N, num_classes) logits."""

    def __init__(self, adapter: nn.Module, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.adapter, self.body, self.head = adapter, body, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.adapter(images)))


def stage_param_groups(body: nn.Module, head: nn.Module, lr: float, body_factor: float = 0.1,
                       stage_decay: float = 0.5) -> list[dict]:
    """Optimizer groups: head at `lr`; the body's stages (from `feature_info`) from last to first at
    `lr * body_factor * stage_decay**k`; parameters before the first stage (the stem) share the first
    stage's rate and those after the last (fc6/fc7) the last stage's. Frozen parameters are left out."""
    model = getattr(body, "model", body)
    stage_names = [s["name"] for s in getattr(model, "feature_info", []) or []]
    n = max(len(stage_names), 1)
    # A stage name marks a module (a container like ResNet's `layer2`, or a point like VGG's pool
    # `features.9`); modules inside it belong to it, modules after it to the next stage, the stem to
    # the first, and anything after the last stage (fc6/fc7) to the last.
    groups: dict[int, list] = {}
    next_stage = 0
    for name, module in model.named_modules():  # pre-order = registration order ~ forward order
        inside = [i for i, s in enumerate(stage_names) if name == s or name.startswith(s + ".")]
        if inside:
            stage, next_stage = inside[0], inside[0] + 1
        else:
            stage = min(next_stage, n - 1)
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                groups.setdefault(stage, []).append(p)
    out = [{"params": [p for p in head.parameters() if p.requires_grad], "lr": lr, "name": "head"}]
    for i, params in sorted(groups.items()):
        out.append({"params": params, "lr": lr * body_factor * stage_decay ** (n - 1 - i),
                    "name": stage_names[i] if stage_names else "body"})
    return [g for g in out if g["params"]]


@dataclass
class FitReport:
    steps: int
    seconds: float
    final_loss: float  # mean training loss (nats) of the last epoch's batches
    rates: dict[str, float]  # peak learning rate of each group, by name
    test_accuracy: float | None = None  # on the data's test split after the last step, when evaluated


def fit(model: Classifier, data: Dataset, groups: list[dict], *, steps: int, batch_size: int = 64,
        weight_decay: float = 5e-4, seed: int = 0, augment: str = "none", label_smoothing: float = 0.0,
        precision: str = "auto", device: str = "cpu", channels_last: bool = True, evaluate: bool = True) -> FitReport:
    """AdamW over `groups` for `steps` steps with a cosine schedule (each group from its own peak rate),
    then the test split's accuracy (unless `evaluate=False`); the model is left in eval mode.

    It trains through the Trainer, in memory: the same step as `cnnlab train` (autocast in `precision`,
    channels_last, the `augment` pipeline, label smoothing; weight decay on weights, not biases), batches
    of the uint8 images (N, C, H, W) of `data.train` in a seeded order per epoch. The Trainer only scales
    them to [0, 1]: the model's adapter normalises with the backbone's statistics.
    """
    t0 = time.perf_counter()
    c = data.input_size[0]
    unit = dataclasses.replace(data, mean=(0.0,) * c, std=(1.0,) * c)  # (x - 0) / 1: the adapter normalises
    cfg = TrainConfig(batch_size=batch_size, optimizer="adamw", lr=max(g["lr"] for g in groups), momentum=0.9,
                      weight_decay=weight_decay, schedule="cosine", warmup=0.0, max_steps=steps, seed=seed,
                      augment=augment, label_smoothing=label_smoothing, precision=precision, device=device,
                      channels_last=channels_last, val_fraction=0.0)  # a fixed budget: nothing to choose, last weights
    result = Trainer(cfg, model=model, data=unit, param_groups=groups, save=False, evaluate=evaluate, quiet=True).fit()
    model.eval()
    return FitReport(steps, time.perf_counter() - t0, result.history[-1]["train_loss"],
                     {g.get("name", "?"): g["lr"] for g in groups}, result.test_accuracy)


def finetune(model: Classifier, data: Dataset, *, lr: float = 1e-3, head_steps: int = 100, body_steps: int = 300,
             body_factor: float = 0.1, stage_decay: float = 0.5, batch_size: int = 64, seed: int = 0,
             **options: Any) -> list[FitReport]:
    """Stage 1: the body frozen (BN statistics too), only the head trains, so the random head's large
    early gradients do not wreck the pretrained features. Stage 2: everything trains, per-stage rates;
    the second report carries the test accuracy. `options` go to `fit` (precision, device, augment, ...)."""
    freeze(model.body)
    r1 = fit(model, data, [{"params": list(model.head.parameters()), "lr": lr, "name": "head"}],
             steps=head_steps, batch_size=batch_size, seed=seed, evaluate=False, **options)
    unfreeze(model.body)
    groups = stage_param_groups(model.body, model.head, lr, body_factor, stage_decay)
    r2 = fit(model, data, groups, steps=body_steps, batch_size=batch_size, seed=seed + 7, **options)
    return [r1, r2]
