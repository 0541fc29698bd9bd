"""Vanishing gradients and skip connections, in the lecture's setting and in the modern one.

A thin layer over `cnnlab.inspect.gradients.gradient_lab` (the same lab as `cnnlab gradients`): plain20/56
and resnet20/56 (He et al. 2016) train for the same steps on the same batches, once per seed, in two
settings side by side:

- the lecture's: no batch norm and a saturating activation (sigmoid), where the gradient reaching the
  first layers of a deep plain net shrinks layer by layer, with pre-activation blocks (He et al. 2016,
  "Identity Mappings") so that the skip path is a pure identity (`cnnlab gradients --no-batch-norm
  --activation sigmoid --preact`). In the original block the sigmoid follows the addition, so the
  shortcut path crosses 27 sigmoids in resnet56 and its gradient vanishes as much as the plain net's: the
  lecture's argument ("the gradient flows back through the skips") is about an identity path;
- the modern one: batch norm and ReLU (the paper's setup), where the plain net's early gradients are not
  small but the deep plain net still trains worse (He et al. call it degradation, sec. 4.1).

Per-layer gradient norms are recorded at initialisation and during training (the last 10% of the
steps); the table compares losses and the first/last layer gradient ratio. Nothing is selected here
(training loss and gradients, no held-out accuracy), so there is no validation split.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cnnlab.core.figures import save_figure, subplots
from cnnlab.core.stats import as_supported, check, combine
from cnnlab.experiments._base import ExperimentContext, Outcome, register_experiment
from cnnlab.experiments._common import spread
from cnnlab.inspect.gradients import gradient_lab, log_plottable

MODELS = ("plain20", "plain56", "resnet20", "resnet56")
VANISHED = 1e-2  # "orders of magnitude smaller": the first layer's norm below 1% of the last layer's
SETTINGS = (  # (key, label, lab options)
    ("lecture", "no batch norm, sigmoid, pre-activation blocks (the lecture's setting)",
     {"batch_norm": False, "activation": "sigmoid", "preact": True}),
    ("modern", "batch norm, ReLU (the modern setting)", {"batch_norm": True, "activation": "relu"}),
)
# (SGD steps, batch size) per model and seed. The default (3 seeds, 2 settings) takes ~3 CPU-minutes (AVX2).
SIZES = {"quick": (3, 8), "default": (30, 32), "large": (100, 64)}


UNDERFLOW = -45.0  # log10 of the smallest positive float32 (~1.4e-45): a gradient that underflowed to 0


def _log10(v: float) -> float:
    """log10 of a gradient ratio; an exact 0 (the first layer's gradient underflowed in float32) counts as
    1e-45, the most extreme vanishing the arithmetic can show; inf and nan stay nan."""
    if v == 0.0:
        return UNDERFLOW
    return math.log10(v) if v > 0 and math.isfinite(v) else float("nan")


def _plot(labs: dict[str, Any], path: Path) -> None:
    fig, axes = subplots(2, 2, figsize=(12, 8))
    for row, (key, label, _) in enumerate(SETTINGS):
        lab = labs[key]
        ax_g, ax_l = axes[row]
        for i, m in enumerate(lab.models):
            depth = range(1, len(m.layers) + 1)
            ax_g.plot(depth, log_plottable(m.norms_init), "-", color=f"C{i}", label=f"{m.name}, init")
            ax_g.plot(depth, log_plottable(m.norms_end), "--", color=f"C{i}", label=f"{m.name}, step {m.steps_done}")
            ax_l.plot(range(1, len(m.loss) + 1), m.loss, color=f"C{i}", label=m.name)
        ax_g.set_yscale("log")
        ax_g.set(xlabel="layer (1 = first conv, last = fc)", ylabel="‖dL/dW‖₂ (log)",
                 title=f"{label}: gradient norm by depth (seed {lab.seed})")
        ax_l.set(xlabel="step", ylabel="training loss (batch)", title=f"{label}: loss")
        for ax in (ax_g, ax_l):
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    save_figure(fig, path)


def _checks(per: dict[str, dict[str, list[float]]], setting: str) -> list:
    p20, p56, r56 = per["plain20"], per["plain56"], per["resnet56"]
    exp = -math.log10(VANISHED)
    return [
        check(f"{setting}: plain56 first/last gradient at init < {VANISHED:g} (log10 margin)",
              [-exp - v for v in p56["log_ratio_init"]], spec="+.2f"),
        check(f"{setting}: resnet56 first/last gradient at init >= {VANISHED:g} (log10 margin)",
              [v + exp for v in r56["log_ratio_init"]], spec="+.2f"),
        check(f"{setting}: loss of plain56 - plain20 > 0 (deep plain trains worse)", p56["loss_end"],
              p20["loss_end"], spec="+.3f"),
        check(f"{setting}: loss of plain56 - resnet56 > 0 (skips cure it)", p56["loss_end"], r56["loss_end"],
              spec="+.3f"),
    ]


@register_experiment(
    "gradients",
    title="Vanishing gradients and skip connections",
    claim="Deep plain nets suffer vanishing gradients and train worse than shallow ones; skip connections cure it.",
    order=60,
    budget="about 2 min",
)
def run(ctx: ExperimentContext) -> Outcome:
    steps, batch = SIZES[ctx.size]
    ctx.progress.total = len(SETTINGS) * len(MODELS) * steps * len(ctx.seeds)
    keys = ("loss_end", "train_accuracy", "log_ratio_init", "log_ratio_end")
    per: dict[str, dict[str, dict[str, list[float]]]] = {
        s: {m: {k: [] for k in keys} for m in MODELS} for s, _, _ in SETTINGS}
    first_labs: dict[str, Any] = {}
    for seed in ctx.seeds:
        for key, _, options in SETTINGS:
            lab = gradient_lab(MODELS, ctx.data, steps=steps, batch_size=batch, seed=seed, device=ctx.device,
                               data_dir=ctx.data_dir, progress=lambda what, n: ctx.progress.step(what, n), **options)
            first_labs.setdefault(key, lab)
            for t in lab.models:
                d = per[key][t.name]
                d["loss_end"].append(t.loss_end)
                d["train_accuracy"].append(t.train_accuracy)
                d["log_ratio_init"].append(_log10(t.ratio_init))
                d["log_ratio_end"].append(_log10(t.ratio_end))
    _plot(first_labs, ctx.path("plot.png"))
    rows = []
    for key, _label, _ in SETTINGS:
        for m in MODELS:
            d = per[key][m]
            rows.append({"setting": key, "model": m, **{k: spread(v) for k, v in d.items()}})
    lecture_checks, modern_checks = _checks(per["lecture"], "lecture"), _checks(per["modern"], "modern (reported, not in the verdict)")
    outcome = combine(lecture_checks)

    def said(checks: list) -> str:
        names = ["vanishing in plain56", "resnet56 not vanishing", "plain56 trains worse than plain20",
                 "resnet56 trains better than plain56"]
        return "; ".join(f"{n}: {c.outcome}" for n, c in zip(names, checks, strict=True))

    g = lambda s, m, k: per[s][m][k]  # noqa: E731
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    verdict = (
        f"Lecture setting (no batch norm, sigmoid, pre-activation blocks) — {said(lecture_checks)}; plain56's first/last gradient ratio at "
        f"init is 10^{mean(g('lecture', 'plain56', 'log_ratio_init')):.1f} (resnet56 "
        f"10^{mean(g('lecture', 'resnet56', 'log_ratio_init')):.1f}). Modern setting (batch norm, ReLU) — "
        f"{said(modern_checks)}; plain56's ratio at init is 10^{mean(g('modern', 'plain56', 'log_ratio_init')):.1f}. "
        "The verdict is the lecture setting's; the modern setting's outcomes show which statements survive "
        "batch norm (there the deep plain net's trouble is degradation, not vanishing gradients, as He et al. "
        "say in sec. 4.1)."
    )
    lab0 = first_labs["lecture"]
    notes = [f"{lab0.data}, {steps} SGD steps (momentum 0.9, lr {lab0.lr:g}, constant) of batch {batch}, the same "
             f"batches for every model of a seed, {lab0.device} {lab0.precision}.",
             "loss after N and train accuracy: over the batches of the last 10% of the steps; gradient ratios: "
             "log10 of the L2 norm of the first conv's weight gradient over the last (fc) layer's, at the first "
             "step (init) and the geometric mean over the last 10% of the steps (end); a ratio of exactly 0 (the "
             "first layer's gradient underflowed in float32) is counted as 10^-45; the plot shows every layer's "
             "norm for the first seed.",
             "lecture setting: pre-activation blocks (bn-act-conv twice, then the sum; He et al. 2016, Identity "
             "Mappings) in all four nets, so resnet56's shortcut path is a pure identity; with the original blocks "
             "the sigmoid after each sum makes the shortcut path vanish too (`cnnlab gradients --models "
             "plain56,resnet56 --no-batch-norm --activation sigmoid` shows it).",
             "the checks in the table are the lecture setting's (they decide the verdict) followed by the modern "
             "setting's (reported, not part of the verdict).",
             f"Seeds {', '.join(map(str, ctx.seeds))}: each seed sets the initial weights and the batches; the "
             "models of one seed share them, so differences are paired by seed.",
             "the same lab with other knobs: `cnnlab gradients --help`"]
    return Outcome(
        columns=["setting", "model", "loss_end", "train_accuracy", "log_ratio_init", "log_ratio_end"], rows=rows,
        supported=as_supported(outcome), verdict=verdict, plot="plot.png", checks=[*lecture_checks, *modern_checks],
        headers={"loss_end": "loss after N", "train_accuracy": "train acc after N",
                 "log_ratio_init": "log10 first/last, init", "log_ratio_end": "log10 first/last, end"},
        fmt={"loss_end": ".3f", "train_accuracy": ".1%", "log_ratio_init": ".2f", "log_ratio_end": ".2f"},
        notes=notes,
    )
