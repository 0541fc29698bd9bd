"""Per-layer gradient norms while training: the norms, what looks wrong in them, and `GradientMonitor`.

The norm of a layer is the L2 norm of its weight gradient, `||dL/dW||_2`, for every module that owns a
weight of rank >= 2 (convolutions, linear and locally-connected layers; batch-norm scales are not
layers of the network's depth). Layers are listed in module order, which for cnnlab's zoo is depth order.

- `gradient_norms(model)`: the norms of the gradients now in `.grad`, as `{layer name: float}`.
- `gradient_warnings(norms)`: what looks wrong: non-finite norms, and layers whose norm is below
  `VANISH_RATIO` (1e-7) of the largest one.
- `GradientMonitor`: a training callback (`cnnlab train --monitor-gradients`) that writes
  `RUN/gradients.jsonl` and `RUN/gradients.png` and warns while training (in memory: records only).

The gradient lab that compares whole architectures (`cnnlab gradients`) builds on these in
`cnnlab.inspect.gradients`. Costs: the norms of all layers are one `_foreach_norm` over the gradients,
left on the device; the host reads them only when a record is made (a few times per epoch).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.core.figures import colormap, save_figure, subplots
from cnnlab.core.files import atomic_write_text
from cnnlab.errors import CnnlabError, positive_int
from cnnlab.training.callbacks import Callback

VANISH_RATIO = 1e-7  # a layer whose gradient norm is below this share of the largest one learns nothing


# ---- norms ------------------------------------------------------------------------------------
def weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """`(qualified name, weight)` of every module owning a weight of rank >= 2, in module (depth) order."""
    layers = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2 and weight.requires_grad:
            layers.append((name, weight))
    return layers


def norms_tensor(weights: Sequence[nn.Parameter]) -> torch.Tensor:
    """`(L,)` float32 L2 norms of the weights' gradients, on their device, without a host sync.

    A layer without a gradient (unused in the forward pass) gets 0: it receives no learning signal.
    """
    grads = [w.grad for w in weights if w.grad is not None]
    if not grads:
        return torch.zeros(len(weights))
    norms = torch._foreach_norm(grads)  # one fused pass, as clip_grad_norm_ does
    out, it = [], iter(norms)
    for w in weights:
        out.append(next(it).float() if w.grad is not None else torch.zeros((), device=grads[0].device))
    return torch.stack(out)


def gradient_norms(model: nn.Module) -> dict[str, float]:
    """`{layer name: ||dL/dW||_2}` of the gradients now in `.grad`, layers in depth order (see module doc)."""
    layers = weight_layers(model)
    values = norms_tensor([w for _, w in layers]).tolist()
    return {name: float(v) for (name, _), v in zip(layers, values, strict=True)}


def gradient_warnings(norms: dict[str, float], vanish_ratio: float = VANISH_RATIO) -> list[str]:
    """Human-readable problems in one set of layer norms: non-finite values, vanishing layers.

    A layer vanishes when its norm is below `vanish_ratio` times the largest finite norm (or when every
    norm is zero). Returns at most one message per kind; an empty list means healthy.
    """
    out = []
    bad = [k for k, v in norms.items() if not math.isfinite(v)]
    if bad:
        out.append(f"non-finite gradients in {len(bad)} of {len(norms)} layers (first: {bad[0]} = {norms[bad[0]]})")
    finite = {k: v for k, v in norms.items() if math.isfinite(v)}
    if finite:
        top = max(finite.values())
        limit = vanish_ratio * top
        small = [k for k, v in finite.items() if v < limit or top == 0.0]
        if small:
            worst = min(small, key=lambda k: finite[k])
            ratio = finite[worst] / top if top > 0 else 0.0
            out.append(f"vanishing gradients in {len(small)} of {len(norms)} layers: below {vanish_ratio:g} of the "
                       f"largest ({top:.3g}); smallest {worst} = {finite[worst]:.3g} ({ratio:.2g} of the largest)")
    return out


def json_safe(obj: Any) -> Any:
    """Non-finite floats become null: strict JSON has no NaN or Infinity."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def log_plottable(values: Sequence[float]) -> list[float]:
    # a log axis cannot show 0, inf or nan: leave a gap there instead of failing
    return [v if math.isfinite(v) and v > 0 else float("nan") for v in values]


# ---- the training monitor ---------------------------------------------------------------------
class GradientMonitor(Callback):
    """Training callback: per-layer gradient norms a few times per epoch, warnings, gradients.jsonl/png.

    Pass it in `cnnlab.train(callbacks=[GradientMonitor()])` or use `monitor_gradients=True`. It reads
    the gradients in `on_after_backward` (after backward, before clipping and the optimizer step). The
    norms are computed on the device every step (cheap: one fused reduction) so a non-finite gradient
    between two records is not missed; the host reads them only at the `records_per_epoch` record steps.

    RUN/gradients.jsonl holds one object per record: `{"epoch": 1-based, "step": global step (1 = the
    first optimizer step, whose gradients are those at initialisation), "norms": {layer: float}}`,
    layers in depth order; a non-finite norm is written as null. RUN/gradients.png plots the first
    record of each epoch (norm against depth, log scale). A Trainer without a run directory (in memory)
    keeps the records in `records` and writes nothing.
    """

    def __init__(self, records_per_epoch: int = 4, vanish_ratio: float = VANISH_RATIO,
                 on_warning: Callable[[str], None] | None = None):
        positive_int("records_per_epoch", records_per_epoch)
        self.records_per_epoch = records_per_epoch
        self.vanish_ratio = vanish_ratio
        self.on_warning = on_warning
        self.records: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self._layers: list[tuple[str, nn.Parameter]] | None = None
        self._nonfinite: torch.Tensor | None = None
        self._warned: set[tuple[int, str]] = set()

    # hooks ---------------------------------------------------------------------------------
    def on_epoch_start(self, trainer, epoch: int) -> None:
        if self._layers is None:
            self._layers = weight_layers(trainer.model)
            self._load_earlier(trainer)
        self._interval = -(-trainer.steps_per_epoch // self.records_per_epoch)  # ceil: at most that many records

    def on_after_backward(self, trainer, epoch: int, step: int) -> None:
        if self._layers is None:  # used without on_epoch_start (e.g. a custom loop)
            self._layers = weight_layers(trainer.model)
            self._interval = -(-trainer.steps_per_epoch // self.records_per_epoch)
        norms = norms_tensor([w for _, w in self._layers])
        bad = ~torch.isfinite(norms)
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad  # no host sync
        if (step - 1) % self._interval:
            return
        values = norms.tolist()  # the host sync of a record step
        seen_bad = self._nonfinite.tolist()
        self._nonfinite = None
        names = [n for n, _ in self._layers]
        record = {"epoch": epoch + 1, "step": epoch * trainer.steps_per_epoch + step,
                  "norms": {n: float(v) for n, v in zip(names, values, strict=True)}}
        self.records.append(record)
        missed = [n for n, b, v in zip(names, seen_bad, values, strict=True) if b and math.isfinite(v)]
        problems = gradient_warnings(record["norms"], self.vanish_ratio)
        if missed:
            problems.insert(0, f"non-finite gradients since the last record in {len(missed)} layers (first: {missed[0]})")
        for msg in problems:
            kind = msg.split(" ", 1)[0]
            if (epoch, kind) in self._warned:
                continue  # once per kind and epoch: a persistent problem should not flood the log
            self._warned.add((epoch, kind))
            self._warn(f"epoch {epoch + 1}, step {record['step']}: {msg}")
        if self._writes(trainer):
            self._write_jsonl(trainer)

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, Any]) -> None:
        if self._nonfinite is not None and bool(self._nonfinite.any()):
            self._warn(f"epoch {epoch + 1}: non-finite gradients after the last record of the epoch")
        self._nonfinite = None
        if self._writes(trainer) and self.records:
            plot_gradient_records(self.records, trainer.run.path / "gradients.png",
                                  title=f"{trainer.config.model} on {trainer.config.data}")

    # helpers -------------------------------------------------------------------------------
    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        if self.on_warning is not None:
            self.on_warning(msg)
        else:
            print(f"gradient warning: {msg}", file=sys.stderr, flush=True)

    @staticmethod
    def _writes(trainer) -> bool:
        return getattr(trainer, "run", None) is not None and getattr(trainer.dist, "is_main", True)

    def _load_earlier(self, trainer) -> None:
        """On resume, keep the records written before the checkpoint we continue from."""
        if getattr(trainer, "run", None) is None:
            return
        path = trainer.run.path / "gradients.jsonl"
        if not path.is_file():
            return
        first = trainer.start_epoch * trainer.steps_per_epoch + trainer.start_step
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec["step"] <= first:
                    rec["norms"] = {k: float("nan") if v is None else v for k, v in rec["norms"].items()}
                    self.records.append(rec)

    def _write_jsonl(self, trainer) -> None:

        # rewritten whole (a few records per epoch) so a crash never leaves a half-written line
        text = "".join(json.dumps(json_safe(r)) + "\n" for r in self.records)
        atomic_write_text(trainer.run.path / "gradients.jsonl", text)


def read_gradient_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a RUN/gradients.jsonl (or a run directory); null norms come back as NaN."""
    path = Path(path)
    if path.is_dir():
        path = path / "gradients.jsonl"
    if not path.is_file():
        raise CnnlabError(f"no gradient records at {path}; train with --monitor-gradients")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            # the monitor writes a non-finite norm as null (JSON has no NaN)
            rec["norms"] = {str(k): float("nan") if v is None else float(v) for k, v in rec["norms"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CnnlabError(f"{path} line {n} is not a gradient record "
                              f'({{"epoch", "step", "norms": {{layer: float}}}}): {e}') from None
        out.append(rec)
    return out


def plot_gradient_records(records: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Log-scale gradient norm against layer depth, one line per epoch (its first record)."""
    firsts: dict[int, dict[str, Any]] = {}
    for r in records:
        firsts.setdefault(r["epoch"], r)
    fig, ax = subplots(figsize=(7, 4.2))
    cmap = colormap("viridis")
    n = len(firsts)
    for i, (epoch, r) in enumerate(sorted(firsts.items())):
        values = list(r["norms"].values())
        ax.plot(range(1, len(values) + 1), log_plottable(values), "o-", ms=3, color=cmap(i / max(1, n - 1)),
                label=f"epoch {epoch} (step {r['step']})")
    ax.set_yscale("log")
    ax.set(xlabel="layer (depth order)", ylabel="‖dL/dW‖₂ (log scale)", title=title or "gradient norm by depth")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save_figure(fig, path)
