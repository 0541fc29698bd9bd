"""Classics: LeNet-5 -> AlexNet -> VGG -> ResNet, trained with one recipe on 28x28 images.

The course's "ImageNet over time" table in miniature: four landmark designs, each sized for 28x28
inputs, trained with one recipe on the same data, each for its own number of epochs (a ladder of budgets
climbed while validation improves: `cnnlab.experiments._common.own_budget`; one fixed budget would
measure which net learns fastest, not which is best), with their parameters, MACs (multiply-accumulates
per image, from `cnnlab.inspect.summary`), test accuracy and training time side by side. The claim is
that each one improved on the one before, at a cost in computation.

The AlexNet and VGG of the zoo are the ImageNet networks (61 M and 138 M parameters, inputs of at least
63x63), so the two middle rows are written in the lecture's notation with the papers' structure kept
and the widths scaled down; LeNet-5 and ResNet-20 are the zoo's own models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.core.figures import save_figure, subplots
from cnnlab.core.stats import as_supported, check, combine, exact
from cnnlab.data import load_dataset
from cnnlab.experiments._base import ExperimentContext, Outcome, register_experiment
from cnnlab.experiments._common import (
    VAL_FRACTION,
    fit_selected,
    ladder_note,
    own_budget,
    plural,
    seeds_note,
    spread,
    subsample,
)
from cnnlab.inspect import summary
from cnnlab.models import resolve_model

# Images per class trained on (VAL_FRACTION of them held out for selection) and tested once (None: all),
# E (epochs of the first budget) and the ladder of budgets (multiples of E) each net climbs while its
# validation accuracy improves (`own_budget`): a net that needs more steps gets them, as in the papers,
# where each was trained to convergence; one fixed budget for all measured which net trains fastest.
SIZES: dict[str, dict[str, Any]] = {
    "quick": {"train": 50, "test": 50, "epochs": 1, "ladder": (1,)},
    "default": {"train": 300, "test": 500, "epochs": 3, "ladder": (1, 2, 4, 8)},
    "large": {"train": 2_000, "test": None, "epochs": 4, "ladder": (1, 2, 4)},
}
# One recipe for every net (AdamW with a one-cycle schedule, no augmentation), so the differences in
# the table come from the architectures alone; lr 2e-3 rather than the default 1e-3 because the runs
# are only a few epochs long.
RECIPE: dict[str, Any] = {"optimizer": "adamw", "lr": 2e-3, "schedule": "onecycle", "batch_size": 128}
IMAGE_SIZE = 28  # LeNet-5 takes 28x28 (C1 padded) or 32x32; other datasets are resized to 28x28


@dataclass(frozen=True)
class Classic:
    """One row of the table: a landmark design and how it is built here."""

    label: str
    year: int  # of the paper (ILSVRC year for the ImageNet nets)
    model: str  # a registered name or a spec in the lecture's notation
    options: dict[str, Any] = field(default_factory=dict)  # builder options for a registered name
    top5: float | None = None  # published ILSVRC top-5 test error (ensembles, as in the lecture's table)
    built_as: str = ""


CLASSICS: tuple[Classic, ...] = (
    Classic("LeNet-5", 1998, "lenet5", {"activation": "tanh", "pool": "avg"}, None,
            "zoo lenet5: tanh, average pooling, C1 padded for 28x28"),
    # AlexNet's design at 1/4 width: 5 convs (the first large), 3 overlapping 3x3/2 max-pools, ReLU,
    # two dropout-regularised hidden fc layers holding most of the parameters (torchvision's order).
    Classic("AlexNet-style", 2012,
            "conv5x5-16 maxpool3/s2 conv5x5-48 maxpool3/s2 conv3x3-96 conv3x3-64 conv3x3-64 maxpool3/s2 "
            "flatten dropout0.5 fc1024 dropout0.5 fc1024 fc10", {}, 0.153,
            "AlexNet's layout at 1/4 width (64-192-384-256-256 -> 16-48-96-64-64, fc 4096 -> 1024)"),
    # VGG's design: stacks of 3x3 convs, channels doubling at each 2x2 max-pool, fc-dropout-fc-dropout-fc.
    Classic("VGG-style", 2014, "(conv3x3-32*2 maxpool2)*3/double flatten fc256 dropout0.5 fc256 dropout0.5 fc10",
            {}, 0.073, "VGG's (conv3x3 x2 + maxpool) x3, channels 32-64-128, fc 256"),
    Classic("ResNet-20", 2015, "resnet20", {}, 0.0357, "zoo resnet20: He et al.'s CIFAR ResNet, batch norm, skips"),
)


def measure_cost(classic: Classic, input_size: tuple[int, int, int], num_classes: int) -> tuple[int, int]:
    """(parameters, MACs per image) of a classic for `(C, H, W)` inputs, traced on the meta device."""
    import torch  # noqa: PLC0415

    with torch.device("meta"):  # shapes only: no memory, no compute
        model, size = resolve_model(_model_text(classic, num_classes), input_size, num_classes, classic.options)
    s = summary(model, size)
    return s.total_params, s.total_macs


def _model_text(classic: Classic, num_classes: int) -> str:
    """The name, or the spec with its last token (the classifier, `fc10`) sized for `num_classes`."""
    if " " not in classic.model:
        return classic.model
    return f"{classic.model.rsplit(' ', 1)[0]} fc{num_classes}"


def _fit(classic: Classic, ds, num_classes: int, epochs: int, seed: int, device: str) -> dict[str, Any]:
    """One net trained `epochs` epochs with the shared recipe; weights chosen on validation, tested once."""
    run_ = fit_selected(_model_text(classic, num_classes), ds, val_fraction=VAL_FRACTION, seed=seed, device=device,
                        epochs=epochs, **RECIPE, extra=dict(classic.options))
    return {"val": run_.val_accuracy, "val_loss": run_.val_loss, "test": run_.test_accuracy,
            "seconds": run_.train_seconds, "epochs_run": run_.epochs_run}


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    fig, (ax_year, ax_cost) = subplots(1, 2, figsize=(10, 3.8))
    acc = [100 * r["accuracy"]["mean"] for r in rows]
    err = [[a - 100 * (r["accuracy"]["low"] if r["accuracy"]["low"] is not None else r["accuracy"]["mean"])
            for a, r in zip(acc, rows, strict=True)],
           [100 * (r["accuracy"]["high"] if r["accuracy"]["high"] is not None else r["accuracy"]["mean"]) - a
            for a, r in zip(acc, rows, strict=True)]]
    # chronological order at even spacing: 1998 -> 2012 would otherwise squeeze the last three together
    ax_year.errorbar(range(len(rows)), acc, yerr=err, fmt="o-", capsize=4)
    for i, r in enumerate(rows):
        ax_year.scatter([i] * len(r["per_seed"]), [100 * v for v in r["per_seed"]], s=10, alpha=0.5, color="black")
    ax_year.set_xticks(range(len(rows)), [f"{r['model']}\n{r['year']}" for r in rows], fontsize=8)
    ax_year.set(ylabel="test accuracy (%)", title="accuracy by publication (mean, 95% interval, seeds)")
    ax_cost.scatter([r["macs"] for r in rows], acc, s=[30 + 300 * r["params"] / max(x["params"] for x in rows)
                                                        for r in rows], alpha=0.7)
    for r, a in zip(rows, acc, strict=True):
        ax_cost.annotate(r["model"], (r["macs"], a), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax_cost.set_xscale("log")
    ax_cost.set(xlabel="MACs per image (log)", ylabel="mean test accuracy (%)",
                title="accuracy vs computation (area: params)")
    for ax in (ax_year, ax_cost):
        ax.grid(alpha=0.3)
    fig.suptitle(title, y=1.03)
    save_figure(fig, path)


@register_experiment(
    "classics", order=30, title="The classic architectures",
    claim="Each classic architecture improved on the one before (accuracy rises from LeNet-5 through AlexNet "
          "and VGG to ResNet), at a cost in computation.",
    budget="about 14 CPU-min")
def run(ctx: ExperimentContext) -> Outcome:
    """Train LeNet-5, an AlexNet-style, a VGG-style net and ResNet-20 with one recipe per seed; cost and accuracy."""
    size = SIZES[ctx.size]
    full = load_dataset(ctx.data, data_dir=ctx.data_dir, image_size=IMAGE_SIZE)
    k = len(full.classes)
    costs = [measure_cost(c, full.input_size, k) for c in CLASSICS]  # before training: bad input fails fast
    budgets = [m * size["epochs"] for m in size["ladder"]]
    ctx.progress.total = len(CLASSICS) * len(ctx.seeds) * len(budgets)  # at most
    runs: list[list[dict[str, Any]]] = [[] for _ in CLASSICS]
    for seed in ctx.seeds:
        ds = subsample(full, size["train"], size["test"], seed)
        for i, classic in enumerate(CLASSICS):
            train_at = lambda epochs, c=classic: _fit(c, ds, k, epochs, seed, ctx.device)  # noqa: B023, E731
            runs[i].append(own_budget(ctx, budgets, train_at, f"{classic.label} seed {seed}"))
    n_train, n_test = len(ds.train), len(ds.test)
    n_fit = n_train - round(VAL_FRACTION * n_train)
    acc = [[r["test"] for r in arm] for arm in runs]
    rows: list[dict[str, Any]] = []
    capped = [c.label for c, arm in zip(CLASSICS, runs, strict=True)
              if len(budgets) > 1 and all(r["epochs"] == budgets[-1] for r in arm)]
    for i, (classic, (params, macs)) in enumerate(zip(CLASSICS, costs, strict=True)):
        secs = [r["seconds"] for r in runs[i]]
        rows.append({"model": classic.label, "year": classic.year, "params": params, "macs": macs,
                     "epochs": "/".join(str(r["epochs"]) for r in runs[i]),
                     "val": spread([r["val"] for r in runs[i]]), "accuracy": spread(acc[i]), "per_seed": acc[i],
                     "train_s": spread(secs), "img_s": n_fit * sum(r["epochs_run"] for r in runs[i]) / sum(secs),
                     "top5": classic.top5})

    checks = [check(f"{b['model']} - {a['model']} > 0", acc[i + 1], acc[i])
              for i, (a, b) in enumerate(zip(rows[:-1], rows[1:], strict=True))]
    costlier = all(r["macs"] > rows[0]["macs"] for r in rows[1:])
    checks.append(exact("every later net costs more MACs than LeNet-5", costlier))
    outcome = combine(checks)
    steps = ", ".join(f"{r['model']} {100 * r['accuracy']['mean']:.2f}%" for r in rows)
    mac_text = ", ".join(f"{r['macs'] / 1e6:.2f} M" for r in rows)
    verdict = f"Mean test accuracy: {steps}; MACs per image: {mac_text}."
    budget_text = (plural(size["epochs"], "epoch") if len(budgets) == 1
                   else f"each net at its own budget ({'/'.join(map(str, budgets))} epochs)")
    _plot(rows, ctx.path("plot.png"), f"{full.name}: {n_train:,} training images, {budget_text}, one recipe")
    notes = [
        f"Data: {full.name} at {IMAGE_SIZE}x{IMAGE_SIZE}, a stratified seeded subset of {n_train:,} training images "
        f"({100 * VAL_FRACTION:.0f}% held out as the validation split that picks each run's epoch), tested once on "
        f"{n_test:,} test images with the chosen weights; every net trained with one recipe: "
        f"{RECIPE['optimizer']} lr {RECIPE['lr']:g}, {RECIPE['schedule']} schedule, batch {RECIPE['batch_size']}, "
        "no augmentation.",
        ladder_note(plural(size["epochs"], "epoch"), size["ladder"], "every net")
        + (f" Stopped at the last budget on every seed: {', '.join(capped)}." if capped else "")
        if len(budgets) > 1 else f"Budget: {plural(size['epochs'], 'epoch')} for every net (no ladder at this size).",
        seeds_note(ctx.seeds),
        *[f"{c.label}: {c.built_as}" + (f" (`{c.model}`)" if " " in c.model else "") for c in CLASSICS],
        "ILSVRC top-5: the published ImageNet test error of each paper's competition entry (AlexNet 2012, "
        "VGG 2014, ResNet 2015), for context; LeNet-5 predates ImageNet.",
        "Training time: wall seconds of the training steps (evaluation excluded) of the kept run, at its own budget, "
        "on a machine that may be shared; images/s compares the rows, not the absolute numbers.",
        "MACs in ImageNet's versions do not rise monotonically either: VGG-16 needs 15.5 G, ResNet-50 4.1 G.",
    ]
    return Outcome(
        columns=["model", "year", "params", "macs", "epochs", "val", "accuracy", "train_s", "img_s", "top5"],
        rows=rows, supported=as_supported(outcome), verdict=verdict, checks=checks,
        headers={"params": "parameters", "macs": "MACs / image", "val": "validation accuracy",
                 "accuracy": "test accuracy", "train_s": "training (s)", "img_s": "images/s",
                 "epochs": "epochs (per seed)", "top5": "ILSVRC top-5 error"},
        fmt={"params": ",d", "macs": ",d", "val": ".2%", "accuracy": ".2%", "train_s": ".1f", "img_s": ",.0f",
             "top5": ".2%"},
        notes=notes,
    )
