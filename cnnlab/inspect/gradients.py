"""Per-layer gradient norms: the vanishing/exploding-gradient lab, on top of the training monitor.

The norms, their warnings and the training callback `GradientMonitor` live in `cnnlab.training.monitor`
(the Trainer uses them for `--monitor-gradients`) and are re-exported here:

- `gradient_norms(model)`, `gradient_warnings(norms)`, `GradientMonitor`, `read_gradient_records`,
  `plot_gradient_records` (see `cnnlab.training.monitor`).
- `gradient_lab(models, data, steps)`: trains each model for `steps` steps on the same batches (the
  Trainer, in memory, with a per-step gradient-monitor callback) and records the per-layer norms and
  the loss at every step (`cnnlab gradients`, `cnnlab experiment gradients`). The host reads the
  norms once per model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.core.figures import save_figure, subplots
from cnnlab.core.files import atomic_write_json, atomic_write_text
from cnnlab.data import load_dataset
from cnnlab.errors import CnnlabError, positive_int
from cnnlab.models import resolve_model
from cnnlab.training.callbacks import Callback
from cnnlab.training.config import TrainConfig
from cnnlab.training.loop import Trainer
from cnnlab.training.monitor import (  # noqa: F401 - re-exported: the inspect-side names of the monitor
    VANISH_RATIO,
    GradientMonitor,
    gradient_norms,
    gradient_warnings,
    json_safe,
    log_plottable,
    norms_tensor,
    plot_gradient_records,
    read_gradient_records,
    weight_layers,
)
from cnnlab.training.step import NonFiniteLossError

LAB_FORMAT = "cnnlab-gradients-1"


# ---- the lab ----------------------------------------------------------------------------------
@dataclass
class ModelTrace:
    """What the lab measured for one model. Norms are per layer, in depth order; losses per step."""

    name: str  # the registered name
    label: str  # name plus the options that differ from the default, e.g. "plain56 (no BN)"
    depth: int  # layers with weights (6n+2 for the CIFAR nets)
    params: int
    layers: list[str]
    norms_init: list[float]  # ||dL/dW|| of the first step, before any update
    norms_end: list[float]  # geometric mean over the last 10% of the steps (one batch is noisy)
    loss: list[float]  # training loss of each step's batch (before that step's update)
    loss_start: float  # loss of the first batch, at initialisation
    loss_end: float  # mean batch loss over the last 10% of the steps
    train_accuracy: float  # share of correct predictions on the batches of the last 10% of the steps
    steps_done: int  # < steps when the loss became non-finite and training of this model stopped
    seconds: float
    warnings_init: list[str] = field(default_factory=list)
    warnings_end: list[str] = field(default_factory=list)

    @property
    def ratio_init(self) -> float:
        """First layer's gradient norm over the last layer's, at initialisation."""
        return _ratio(self.norms_init)

    @property
    def ratio_end(self) -> float:
        return _ratio(self.norms_end)


def _ratio(norms: list[float]) -> float:
    return norms[0] / norms[-1] if norms and norms[-1] > 0 else float("nan")


@dataclass
class GradientLab:
    """The result of `gradient_lab`: one `ModelTrace` per model plus the settings that produced it."""

    data: str
    steps: int
    batch_size: int
    optimizer: str
    lr: float
    options: dict[str, Any]
    seed: int
    device: str
    precision: str
    seconds: float
    models: list[ModelTrace]

    COLUMNS = ("model", "depth", "params", "loss_start", "loss_end", "train_accuracy", "first_init", "last_init",
               "ratio_init", "first_end", "last_end", "ratio_end")
    HEADERS = {"model": "model", "depth": "depth", "params": "params", "loss_start": "loss at start",
               "loss_end": "loss after N", "train_accuracy": "train acc after N", "first_init": "‖g‖ first, init",
               "last_init": "‖g‖ last, init", "ratio_init": "first/last, init", "first_end": "‖g‖ first, end",
               "last_end": "‖g‖ last, end", "ratio_end": "first/last, end"}
    FORMATS = {"params": ",d", "loss_start": ".3f", "loss_end": ".3f", "train_accuracy": ".1%", "first_init": ".2e",
               "last_init": ".2e", "ratio_init": ".2e", "first_end": ".2e", "last_end": ".2e", "ratio_end": ".2e"}

    def rows(self) -> list[dict[str, Any]]:
        """One dict per model, keyed by `COLUMNS` (the table of `cnnlab gradients`)."""
        out = []
        for m in self.models:
            out.append({"model": m.label if m.steps_done == self.steps else f"{m.label} (stopped at {m.steps_done})",
                        "depth": m.depth, "params": m.params, "loss_start": m.loss_start, "loss_end": m.loss_end,
                        "train_accuracy": m.train_accuracy, "first_init": m.norms_init[0],
                        "last_init": m.norms_init[-1], "ratio_init": m.ratio_init, "first_end": m.norms_end[0],
                        "last_end": m.norms_end[-1], "ratio_end": m.ratio_end})
        return out

    def table(self) -> str:
        """A Markdown table of `rows()`."""
        heads = [self.HEADERS[c] for c in self.COLUMNS]
        lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" if c == "model" else "---:"
                                                                for c in self.COLUMNS) + "|"]
        for row in self.rows():
            cells = []
            for c in self.COLUMNS:
                v, spec = row[c], self.FORMATS.get(c)
                cells.append("–" if isinstance(v, float) and not math.isfinite(v) else format(v, spec) if spec else str(v))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = LAB_FORMAT
        for m, traced in zip(d["models"], self.models, strict=True):
            m["ratio_init"], m["ratio_end"] = _finite_or_none(traced.ratio_init), _finite_or_none(traced.ratio_end)
        return json_safe(d)

    def plot(self, path: str | Path) -> None:
        """Left: log-scale gradient norm against layer depth (solid: init, dashed: end); right: loss curves."""
        fig, (ax_g, ax_l) = subplots(1, 2, figsize=(12, 4.4))
        for i, m in enumerate(self.models):
            color = f"C{i}"
            depth = range(1, len(m.layers) + 1)
            ax_g.plot(depth, log_plottable(m.norms_init), "-", color=color, label=f"{m.label}, init")
            ax_g.plot(depth, log_plottable(m.norms_end), "--", color=color, label=f"{m.label}, step {m.steps_done}")
            ax_l.plot(range(1, len(m.loss) + 1), _smooth(m.loss, max(1, self.steps // 20)), color=color, label=m.label)
        ax_g.set_yscale("log")
        ax_g.set(xlabel="layer (1 = first conv, last = fc)", ylabel="‖dL/dW‖₂ (log scale)",
                 title="gradient norm by depth")
        ax_l.set(xlabel="step", ylabel="training loss (moving average)", title=f"loss, {self.data}, batch {self.batch_size}")
        for ax in (ax_g, ax_l):
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        save_figure(fig, path)

    def write(self, out: str | Path) -> Path:
        """Write OUT/gradients.json, OUT/table.md and OUT/plot.png (each atomically); returns OUT."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "gradients.json", self.to_dict())
        atomic_write_text(out / "table.md", self.table() + "\n")
        self.plot(out / "plot.png")
        return out


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None



def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        acc = acc[-window:]
        out.append(sum(acc) / len(acc))
    return out


def model_options(name: str, *, init_scale: float = 1.0, batch_norm: bool = True, activation: str = "relu",
                  skip: bool = True, preact: bool = False) -> tuple[dict[str, Any], str]:
    """Builder options for the knobs that differ from the default, and a label such as 'resnet56 (no skip)'.

    Only non-default knobs are passed on, so models without them (simple_cnn, vgg_like) still work when
    every knob is left alone. `skip=False` turns a `resnet<d>` into its plain twin; `plain<d>` has none.
    """
    opts: dict[str, Any] = {}
    words = []
    if not skip and not name.startswith("plain"):
        opts["skip"] = False
        words.append("no skip")
    if not batch_norm:
        opts["batch_norm"] = False
        words.append("no BN")
    if activation != "relu":
        opts["activation"] = activation
        words.append(activation)
    if init_scale != 1.0:
        opts["init_scale"] = init_scale
        words.append(f"init×{init_scale:g}")
    if preact:
        opts["preact"] = True
        words.append("pre-act")
    return opts, name + (f" ({', '.join(words)})" if words else "")


def gradient_lab(
    models: Sequence[str] = ("plain20", "plain56", "resnet20", "resnet56"),
    data: Any = "fashion-mnist",
    *,
    steps: int = 40,
    batch_size: int = 64,
    optimizer: str = "sgd",
    lr: float | None = None,
    init_scale: float = 1.0,
    batch_norm: bool = True,
    activation: str = "relu",
    skip: bool = True,
    preact: bool = False,
    seed: int = 0,
    device: str = "auto",
    data_dir: str | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> GradientLab:
    """Train each model for `steps` steps on the same batches; record per-layer gradient norms and losses.

    Every model starts from `seed` and sees the same sequence of `(N, C, H, W)` training batches, so the
    differences are the architecture's. Each model trains through the Trainer (in memory, `max_steps`
    steps, the same step as every training run, bf16 autocast where the machine runs it natively) with
    a gradient-monitor callback: SGD (Nesterov momentum 0.9, lr 0.05 unless `lr`; no weight decay,
    constant rate), or "adam" (lr 1e-3). `progress(label, n)` is called every ~10% of a model's
    steps with the steps done since the last call. Raises `CnnlabError` on bad input before training.
    """
    models = [m.strip() for m in models if m.strip()]
    if not models:
        raise CnnlabError("no models given; pass names such as plain20,plain56,resnet20,resnet56")
    positive_int("steps", steps)
    positive_int("batch-size", batch_size)
    optimizer = str(optimizer).lower()
    if optimizer not in ("sgd", "adam"):
        raise CnnlabError(f"optimizer must be sgd or adam, got {optimizer!r}")
    lr = {"sgd": 0.05, "adam": 1e-3}[optimizer] if lr is None else lr
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise CnnlabError(f"lr must be a positive number, got {lr!r}")
    if not isinstance(init_scale, (int, float)) or not math.isfinite(init_scale) or init_scale <= 0:
        raise CnnlabError(f"init-scale must be a positive number (1 = Kaiming init), got {init_scale!r}")
    ds = data if not isinstance(data, str) else load_dataset(data, data_dir=data_dir)
    n_classes, size = len(ds.classes), tuple(ds.input_size)
    if len(ds.train) < batch_size:
        raise CnnlabError(f"batch-size {batch_size} is larger than the {len(ds.train)} training images of {ds.name}")
    knobs = dict(init_scale=init_scale, batch_norm=batch_norm, activation=activation, skip=skip, preact=preact)
    builds = []
    for name in models:  # build every model first: a bad name or option fails before any training
        opts, label = model_options(name, **knobs)
        torch.manual_seed(seed)
        model, _ = resolve_model(name, input_size=size, num_classes=n_classes, options=opts)
        builds.append((name, label, model))
    cfg = TrainConfig(batch_size=batch_size, optimizer=optimizer, lr=float(lr), momentum=0.9, weight_decay=0.0,
                      schedule="constant", warmup=0.0, max_steps=steps, seed=seed, device=device,
                      val_fraction=0.0)  # a diagnostic on every training image: nothing is chosen
    t_all = time.perf_counter()
    traces, trainer = [], None
    for name, label, model in builds:
        trace = _StepTrace(label, steps, progress)
        trainer = Trainer(cfg, model=model, data=ds, save=False, evaluate=False, quiet=True, callbacks=[trace])
        t0 = time.perf_counter()
        try:
            trainer.fit()
        except NonFiniteLossError:
            pass  # a diverged model: keep what was measured (the step refused the update), go on with the next
        trace.report_rest()
        if not trace.norms:
            raise CnnlabError(f"{label}: the loss was non-finite at the first step; try a smaller --init-scale or lr")
        traces.append(trace.result(name, model, time.perf_counter() - t0))
        model.to("cpu")  # free the device for the next model
    return GradientLab(data=str(getattr(ds, "name", data)), steps=steps, batch_size=batch_size, optimizer=optimizer,
                       lr=float(lr), options={k: v for k, v in knobs.items()}, seed=seed,
                       device=str(trainer.precision.device), precision=trainer.precision.name,
                       seconds=round(time.perf_counter() - t_all, 2), models=traces)


class _StepTrace(Callback):
    """The lab's gradient monitor: at every step the layer norms (after backward, before the update), the
    batch loss and the batch accuracy, kept on the device until `result()` reads them once."""

    def __init__(self, label: str, steps: int, progress: Callable[[str, int], None] | None):
        self.label, self.steps, self.progress = label, steps, progress
        self.every = max(1, steps // 10)  # progress calls
        self.norms: list[torch.Tensor] = []
        self.losses: list[torch.Tensor] = []
        self.hits: list[torch.Tensor] = []
        self.reported = 0

    def on_fit_start(self, trainer) -> None:
        self.layers = weight_layers(trainer.model)

    def on_after_backward(self, trainer, epoch: int, step: int) -> None:
        self.norms.append(norms_tensor([w for _, w in self.layers]))  # (L,) stays on the device

    def on_step_end(self, trainer, epoch: int, step: int) -> None:
        out = trainer.last_step
        self.losses.append(out.loss)
        self.hits.append((out.logits.argmax(1) == out.labels).float().mean())
        done = len(self.losses)
        if self.progress and (done % self.every == 0 or done == self.steps):
            self.progress(self.label, done - self.reported)
            self.reported = done

    def report_rest(self) -> None:
        if self.progress and self.reported < self.steps:
            self.progress(self.label, self.steps - self.reported)

    def result(self, name: str, model: nn.Module, seconds: float) -> ModelTrace:
        done = len(self.losses)
        table = torch.stack(self.norms[:done]).cpu().double()  # (steps, L): the one host read of this model
        loss_list = torch.stack(self.losses).cpu().tolist()
        acc = torch.stack(self.hits).cpu()
        k = min(max(1, self.steps // 10), done)  # the last 10% of the steps
        end = torch.exp(torch.log(table[-k:].clamp_min(1e-45)).mean(0))  # geometric mean: norms span decades
        end = torch.where(torch.isfinite(table[-k:]).all(0), end, table[-1])
        init_list, end_list = table[0].tolist(), end.tolist()
        names = [n for n, _ in self.layers]
        return ModelTrace(
            name=name, label=self.label, depth=len(names), params=sum(p.numel() for p in model.parameters()),
            layers=names, norms_init=init_list, norms_end=end_list, loss=loss_list, loss_start=loss_list[0],
            loss_end=sum(loss_list[-k:]) / k, train_accuracy=float(acc[-k:].mean()), steps_done=done,
            seconds=round(seconds, 2),
            warnings_init=gradient_warnings(dict(zip(names, init_list, strict=True))),
            warnings_end=gradient_warnings(dict(zip(names, end_list, strict=True))))
