"""Per-layer gradient norms: the vanishing/exploding-gradient lab and the training monitor.

The norm of a layer is the L2 norm of its weight gradient, `||dL/dW||_2`, for every module that owns a
weight of rank >= 2 (convolutions, linear and locally-connected layers; batch-norm scales are not
layers of the network's depth). Layers are listed in module order, which for cnnlab's zoo is depth order.

- `gradient_norms(model)`: the norms of the gradients now in `.grad`, as `{layer name: float}`.
- `gradient_warnings(norms)`: what looks wrong: non-finite norms, and layers whose norm is below
  `VANISH_RATIO` (1e-7) of the largest one.
- `gradient_lab(models, data, steps)`: trains each model for `steps` SGD steps on the same batches and
  records the per-layer norms and the loss at every step (`cnnlab gradients`, `cnnlab experiment gradients`).
- `GradientMonitor`: a training callback (`cnnlab train --monitor-gradients`) that writes
  `RUN/gradients.jsonl` and `RUN/gradients.png` and warns while training.

Costs: the norms of all layers are one `_foreach_norm` over the gradients, left on the device; the host
reads them only when a record is made (the monitor: a few times per epoch; the lab: once per model).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError, positive_int

VANISH_RATIO = 1e-7  # a layer whose gradient norm is below this share of the largest one learns nothing
LAB_FORMAT = "cnnlab-gradients-1"


# ---- norms ------------------------------------------------------------------------------------
def weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """`(qualified name, weight)` of every module owning a weight of rank >= 2, in module (depth) order."""
    layers = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2 and weight.requires_grad:
            layers.append((name, weight))
    return layers


def _norms_tensor(weights: Sequence[nn.Parameter]) -> torch.Tensor:
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
    values = _norms_tensor([w for _, w in layers]).tolist()
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
        return _json_safe(d)

    def plot(self, path: str | Path) -> None:
        """Left: log-scale gradient norm against layer depth (solid: init, dashed: end); right: loss curves."""
        plt, save = _pyplot()
        fig, (ax_g, ax_l) = plt.subplots(1, 2, figsize=(12, 4.4))
        for i, m in enumerate(self.models):
            color = f"C{i}"
            depth = range(1, len(m.layers) + 1)
            ax_g.plot(depth, _positive(m.norms_init), "-", color=color, label=f"{m.label}, init")
            ax_g.plot(depth, _positive(m.norms_end), "--", color=color, label=f"{m.label}, step {m.steps_done}")
            ax_l.plot(range(1, len(m.loss) + 1), _smooth(m.loss, max(1, self.steps // 20)), color=color, label=m.label)
        ax_g.set_yscale("log")
        ax_g.set(xlabel="layer (1 = first conv, last = fc)", ylabel="‖dL/dW‖₂ (log scale)",
                 title="gradient norm by depth")
        ax_l.set(xlabel="step", ylabel="training loss (moving average)", title=f"loss, {self.data}, batch {self.batch_size}")
        for ax in (ax_g, ax_l):
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        save(fig, path)

    def write(self, out: str | Path) -> Path:
        """Write OUT/gradients.json, OUT/table.md and OUT/plot.png (each atomically); returns OUT."""
        from cnnlab.train.checkpoint import atomic_write_json, atomic_write_text  # noqa: PLC0415

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "gradients.json", self.to_dict())
        atomic_write_text(out / "table.md", self.table() + "\n")
        self.plot(out / "plot.png")
        return out


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _json_safe(obj: Any) -> Any:
    """Non-finite floats become null: strict JSON has no NaN or Infinity."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _positive(values: Sequence[float]) -> list[float]:
    # a log axis cannot show 0, inf or nan: leave a gap there instead of failing
    return [v if math.isfinite(v) and v > 0 else float("nan") for v in values]


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        acc = acc[-window:]
        out.append(sum(acc) / len(acc))
    return out


def _pyplot():
    from cnnlab.train.plots import pyplot, save_figure  # noqa: PLC0415 - matplotlib is slow to import

    return pyplot(), save_figure


def model_options(name: str, *, init_scale: float = 1.0, batch_norm: bool = True, activation: str = "relu",
                  skip: bool = True) -> tuple[dict[str, Any], str]:
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
    seed: int = 0,
    device: str = "auto",
    data_dir: str | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> GradientLab:
    """Train each model for `steps` steps on the same batches; record per-layer gradient norms and losses.

    Every model starts from `seed` and sees the same sequence of `(N, C, H, W)` training batches, so the
    differences are the architecture's. SGD (momentum 0.9, lr 0.05 unless `lr`; no weight decay, constant
    rate) as He et al. train, or "adam" (lr 1e-3). `progress(label, n)` is called every ~10% of a model's
    steps with the steps done since the last call. Raises `CnnlabError` on bad input before training.
    """
    from cnnlab.data import load_dataset  # noqa: PLC0415
    from cnnlab.models import resolve_model  # noqa: PLC0415
    from cnnlab.train.precision import resolve_precision  # noqa: PLC0415 - bf16 where the CPU runs it natively

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
    knobs = dict(init_scale=init_scale, batch_norm=batch_norm, activation=activation, skip=skip)
    builds = []
    for name in models:  # build every model first: a bad name or option fails before any training
        opts, label = model_options(name, **knobs)
        torch.manual_seed(seed)
        model, _ = resolve_model(name, input_size=size, num_classes=n_classes, options=opts)
        builds.append((name, label, model))
    prec = resolve_precision("auto", device, channels_last=True)
    dev = prec.device
    mean = torch.tensor(ds.mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)

    def batches():
        epoch = 0
        while True:
            yield from ds.train.batches(batch_size, shuffle=True, seed=seed, epoch=epoch, drop_last=True, device=dev)
            epoch += 1

    t_all = time.perf_counter()
    traces = []
    for name, label, model in builds:
        model = model.to(dev, memory_format=torch.channels_last)
        model.train()
        layers = weight_layers(model)
        weights = [w for _, w in layers]
        opt = (torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if optimizer == "sgd"
               else torch.optim.Adam(model.parameters(), lr=lr))
        norms, losses, hits = [], [], []
        tail = max(1, steps // 10)
        report = max(1, steps // 10)
        t0, done, reported = time.perf_counter(), 0, 0
        for step, (images, labels) in zip(range(1, steps + 1), batches(), strict=False):
            x = ((images.float() / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last)
            with prec.autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels)  # (N, K) -> scalar, fp32
            if not torch.isfinite(loss):  # a diverged model: keep what was measured, go on with the next
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(_norms_tensor(weights))  # (L,) stays on the device
            losses.append(loss.detach())
            hits.append((logits.argmax(1) == labels).float().mean())
            opt.step()
            done = step
            if progress and (step % report == 0 or step == steps):
                progress(label, step - reported)
                reported = step
        if progress and reported < steps:
            progress(label, steps - reported)
        if not norms:
            raise CnnlabError(f"{label}: the loss was non-finite at the first step; try a smaller --init-scale or lr")
        table = torch.stack(norms).cpu().double()  # (steps, L): the one host read of this model
        loss_list = torch.stack(losses).cpu().tolist()
        acc = torch.stack(hits).cpu()
        k = min(tail, done)
        end = torch.exp(torch.log(table[-k:].clamp_min(1e-45)).mean(0))  # geometric mean: norms span decades
        end = torch.where(torch.isfinite(table[-k:]).all(0), end, table[-1])
        init_list, end_list = table[0].tolist(), end.tolist()
        names = [n for n, _ in layers]
        traces.append(ModelTrace(
            name=name, label=label, depth=len(layers), params=sum(p.numel() for p in model.parameters()),
            layers=names, norms_init=init_list, norms_end=end_list, loss=loss_list, loss_start=loss_list[0],
            loss_end=sum(loss_list[-k:]) / k, train_accuracy=float(acc[-k:].mean()), steps_done=done,
            seconds=round(time.perf_counter() - t0, 2),
            warnings_init=gradient_warnings(dict(zip(names, init_list, strict=True))),
            warnings_end=gradient_warnings(dict(zip(names, end_list, strict=True)))))
        model.to("cpu")  # free the device for the next model
    return GradientLab(data=str(getattr(ds, "name", data)), steps=steps, batch_size=batch_size, optimizer=optimizer,
                       lr=float(lr), options={k: v for k, v in knobs.items()}, seed=seed, device=str(dev),
                       precision=prec.name, seconds=round(time.perf_counter() - t_all, 2), models=traces)


# ---- the training monitor ---------------------------------------------------------------------
class GradientMonitor:
    """Training callback: per-layer gradient norms a few times per epoch, warnings, gradients.jsonl/png.

    Pass it in `cnnlab.train(callbacks=[GradientMonitor()])` or use `monitor_gradients=True`. It reads
    the gradients in `on_after_backward` (after backward, before clipping and the optimizer step). The
    norms are computed on the device every step (cheap: one fused reduction) so a non-finite gradient
    between two records is not missed; the host reads them only at the `records_per_epoch` record steps.

    RUN/gradients.jsonl holds one object per record: `{"epoch": 1-based, "step": global step (1 = the
    first optimizer step, whose gradients are those at initialisation), "norms": {layer: float}}`,
    layers in depth order; a non-finite norm is written as null. RUN/gradients.png plots the first
    record of each epoch (norm against depth, log scale). Duck-typed to `cnnlab.train.Callback` so that
    this module does not import the training loop.
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
        norms = _norms_tensor([w for _, w in self._layers])
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
        if getattr(trainer.dist, "is_main", True):
            self._write_jsonl(trainer)

    def on_step_end(self, trainer, epoch: int, step: int) -> None: ...

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, Any]) -> None:
        if self._nonfinite is not None and bool(self._nonfinite.any()):
            self._warn(f"epoch {epoch + 1}: non-finite gradients after the last record of the epoch")
        self._nonfinite = None
        if getattr(trainer.dist, "is_main", True) and self.records:
            plot_gradient_records(self.records, trainer.run.path / "gradients.png",
                                  title=f"{trainer.config.model} on {trainer.config.data}")

    # helpers -------------------------------------------------------------------------------
    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        if self.on_warning is not None:
            self.on_warning(msg)
        else:
            print(f"gradient warning: {msg}", file=sys.stderr, flush=True)

    def _load_earlier(self, trainer) -> None:
        """On resume, keep the records written before the checkpoint we continue from."""
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
        from cnnlab.train.checkpoint import atomic_write_text  # noqa: PLC0415

        # rewritten whole (a few records per epoch) so a crash never leaves a half-written line
        text = "".join(json.dumps(_json_safe(r)) + "\n" for r in self.records)
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
    plt, save = _pyplot()
    firsts: dict[int, dict[str, Any]] = {}
    for r in records:
        firsts.setdefault(r["epoch"], r)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    cmap = plt.get_cmap("viridis")
    n = len(firsts)
    for i, (epoch, r) in enumerate(sorted(firsts.items())):
        values = list(r["norms"].values())
        ax.plot(range(1, len(values) + 1), _positive(values), "o-", ms=3, color=cmap(i / max(1, n - 1)),
                label=f"epoch {epoch} (step {r['step']})")
    ax.set_yscale("log")
    ax.set(xlabel="layer (depth order)", ylabel="‖dL/dW‖₂ (log scale)", title=title or "gradient norm by depth")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save(fig, path)
