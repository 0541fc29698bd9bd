"""Training a cut backbone with a new head: fine-tuning (head first, then the body with per-stage rates),
retraining from the backbone's weights, and training the same architecture from scratch.

The network is `Classifier(adapter, body, head)`: the input adapter, the backbone cut at a layer
(`Truncated`), and a fresh `nn.Linear`. Per-stage learning rates (discriminative fine-tuning, Howard &
Ruder 2018): the head gets `lr`, the last stage of the body `lr * body_factor`, each earlier stage
`stage_decay` times less than the one after it; earlier layers are more generic and should move less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.transfer.freeze import freeze, unfreeze


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
    final_loss: float
    rates: dict[str, float]


def fit(model: Classifier, images: torch.Tensor, labels: torch.Tensor, groups: list[dict], *, steps: int,
        batch_size: int = 64, weight_decay: float = 5e-4, seed: int = 0, augment=None) -> FitReport:
    """AdamW over `groups` for `steps` steps with a cosine schedule (each group from its own peak rate).

    Minibatches are drawn from the uint8 images (N, C, H, W) by a seeded permutation per epoch.
    """
    import time  # noqa: PLC0415

    t0 = time.perf_counter()
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    peaks = [g["lr"] for g in opt.param_groups]
    g = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    n = len(images)
    bs = min(batch_size, n)
    order = torch.randperm(n, generator=g)
    pos, loss = 0, torch.tensor(float("nan"))
    for step in range(steps):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + bs]
        pos += bs
        x, y = images[idx], labels[idx]
        if augment is not None:
            x = augment(x, generator=aug_gen)
        scale = 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
        for group, peak in zip(opt.param_groups, peaks, strict=True):
            group["lr"] = peak * scale
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return FitReport(steps, time.perf_counter() - t0, float(loss.detach()), {gr.get("name", "?"): p for gr, p in zip(groups, peaks, strict=True)})


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Share of correct top-1 predictions on uint8 images (N, C, H, W), eval mode."""
    model.eval()
    correct = 0
    for s in range(0, len(images), batch_size):
        correct += int((model(images[s:s + batch_size]).argmax(1) == labels[s:s + batch_size]).sum())
    return correct / max(len(images), 1)


def finetune(model: Classifier, images: torch.Tensor, labels: torch.Tensor, *, lr: float = 1e-3,
             head_steps: int = 100, body_steps: int = 300, body_factor: float = 0.1, stage_decay: float = 0.5,
             batch_size: int = 64, seed: int = 0, augment=None) -> list[FitReport]:
    """Stage 1: the body frozen (BN statistics too), only the head trains, so the random head's large
    early gradients do not wreck the pretrained features. Stage 2: everything trains, per-stage rates."""
    freeze(model.body)
    r1 = fit(model, images, labels, [{"params": list(model.head.parameters()), "lr": lr, "name": "head"}],
             steps=head_steps, batch_size=batch_size, seed=seed, augment=augment)
    unfreeze(model.body)
    groups = stage_param_groups(model.body, model.head, lr, body_factor, stage_decay)
    r2 = fit(model, images, labels, groups, steps=body_steps, batch_size=batch_size, seed=seed + 7, augment=augment)
    return [r1, r2]
