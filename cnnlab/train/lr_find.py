"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates", section 3.3; fastai's lr_find).

Train a fresh model for a few hundred steps while the learning rate rises exponentially from `start_lr`
to `end_lr`; record the (exponentially smoothed) loss; stop once it exceeds `diverge` times its minimum.
The suggested rate is where the loss falls fastest per decade of learning rate, before its minimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.core.figures import save_figure, subplots
from cnnlab.core.preprocess import Preprocess
from cnnlab.errors import CnnlabError
from cnnlab.train.config import TrainConfig
from cnnlab.train.inputs import load_data, parse_augment
from cnnlab.train.optim import build_optimizer, set_lr
from cnnlab.train.precision import resolve_precision
from cnnlab.train.run import build_model, check_model_fits


@dataclass
class LrFindResult:
    lrs: list[float]  # learning rate of each step
    losses: list[float]  # smoothed training loss after each step (nats)
    suggestion: float  # steepest descent of the smoothed loss
    min_loss_lr: float  # rate at the lowest smoothed loss (divide by ~10 for a safe peak rate)
    plot: Path | None = None

    def __str__(self) -> str:
        return (f"suggested lr {self.suggestion:.2e} (steepest descent); lowest loss at {self.min_loss_lr:.2e} "
                f"(a tenth of it: {self.min_loss_lr / 10:.2e}); {len(self.lrs)} steps")


def suggest(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """(steepest-descent lr, lowest-loss lr) of a smoothed loss curve."""
    i_min = min(range(len(losses)), key=losses.__getitem__)
    if i_min < 2:
        return lrs[i_min], lrs[i_min]
    logs = [math.log10(x) for x in lrs[: i_min + 1]]
    slopes = [(losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(1, i_min)]
    i_steep = 1 + min(range(len(slopes)), key=slopes.__getitem__)
    return lrs[i_steep], lrs[i_min]


def lr_find(model: str = "simple_cnn", data="fashion-mnist", *, start_lr: float = 1e-7, end_lr: float = 10.0,
            steps: int = 100, batch_size: int = 128, optimizer: str = "adamw", weight_decay: float | None = None,
            momentum: float = 0.9, augment: str = "none", precision: str = "auto", device: str = "auto",
            seed: int = 0, data_dir=None, image_size: int | None = None, extra: dict | None = None,
            diverge: float = 4.0, smoothing: float = 0.98, plot: str | Path | None = "lr_find.png") -> LrFindResult:
    """Run the range test; writes `plot` (a PNG of loss against learning rate) unless it is None."""
    if not (isinstance(start_lr, (int, float)) and isinstance(end_lr, (int, float)) and 0 < start_lr < end_lr):
        raise CnnlabError(f"need 0 < start-lr < end-lr, got start-lr {start_lr!r} and end-lr {end_lr!r}")
    if not isinstance(steps, int) or steps < 5:
        raise CnnlabError(f"steps must be an integer >= 5, got {steps!r}")
    cfg = TrainConfig(model=model if isinstance(model, str) else "custom", batch_size=batch_size, optimizer=optimizer,
                      lr=start_lr, weight_decay=weight_decay, momentum=momentum, augment=augment,
                      precision=precision, device=device, seed=seed).resolved()
    prec = resolve_precision(cfg.precision, cfg.device)
    aug = parse_augment(cfg.augment)
    ds = load_data(data, data_dir=data_dir, image_size=image_size, seed=seed)
    torch.manual_seed(seed)
    net = model if not isinstance(model, str) else build_model(model, tuple(ds.input_size), len(ds.classes), extra)
    check_model_fits(net, tuple(ds.input_size), len(ds.classes), f"'{cfg.model}'")
    net = net.to(prec.device).train()
    if prec.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = build_optimizer(net, cfg.optimizer, start_lr, cfg.momentum, cfg.weight_decay, prec.device)
    prep = Preprocess(ds.mean, ds.std, prec.device, prec.channels_last)
    gen = torch.Generator(device=prec.device).manual_seed(seed)
    factor = (end_lr / start_lr) ** (1.0 / (steps - 1))

    lrs, losses, avg, best = [], [], 0.0, math.inf
    step, epoch = 0, 0
    while step < steps:
        for images, labels in ds.train.batches(cfg.batch_size, shuffle=True, seed=seed, epoch=epoch,
                                               drop_last=True, device=prec.device):
            lr = start_lr * factor**step
            set_lr(opt, lr)
            with prec.autocast():
                logits = net(prep(images, aug, gen))
            loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())  # one float per step: this is a diagnostic, not the training loop
            if not math.isfinite(value):
                break
            avg = smoothing * avg + (1 - smoothing) * value
            smoothed = avg / (1 - smoothing ** (step + 1))  # bias correction, as in Adam
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            step += 1
            if step >= steps or smoothed > diverge * best:
                break
        else:
            epoch += 1
            continue
        break
    if len(lrs) < 3:
        raise CnnlabError(f"the loss diverged after {len(lrs)} steps; lower --start-lr (now {start_lr:g})")
    steep, at_min = suggest(lrs, losses)
    result = LrFindResult(lrs, losses, steep, at_min)
    if plot is not None:
        result.plot = _plot(result, Path(plot), cfg.model)
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
