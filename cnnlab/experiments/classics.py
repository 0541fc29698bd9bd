"""Classics: LeNet-5 -> AlexNet -> VGG -> ResNet, trained with one recipe on 28x28 images.

The course's "ImageNet over time" table in miniature: four landmark designs, each sized for 28x28
inputs, trained the same way on the same data, with their parameters, MACs (multiply-accumulates per
image, from `cnnlab.inspect.summary`), test accuracy and training time side by side. The claim is that
each one improved on the one before, at a cost in computation.

The AlexNet and VGG of the zoo are the ImageNet networks (61 M and 138 M parameters, inputs of at least
63x63), so the two middle rows are written in the lecture's notation with the papers' structure kept
and the widths scaled down; LeNet-5 and ResNet-20 are the zoo's own models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.core.figures import save_figure, subplots
from cnnlab.data import load_dataset
from cnnlab.experiments._base import ExperimentContext, Outcome, register_experiment
from cnnlab.experiments._common import (
    epoch_progress,
    final_accuracy,
    fit,
    monitored_subsets,
    plural,
)
from cnnlab.inspect import summary
from cnnlab.models import resolve_model

# Images per class: trained on, monitored each epoch, tested once at the end (None: the whole test set).
# The default took 119 s on 2 quiet CPU cores (Zen 5, bf16) for all four nets; ResNet-20 (31 M MACs
# per image, ~1,100 training images/s) takes half of it.
SIZES: dict[str, dict[str, Any]] = {
    "default": {"train": 2_000, "monitor": 100, "test": None, "epochs": 3},
    "quick": {"train": 50, "monitor": 10, "test": 50, "epochs": 1},
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


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    fig, (ax_year, ax_cost) = subplots(1, 2, figsize=(10, 3.8))
    acc = [100 * r["accuracy"] for r in rows]
    # chronological order at even spacing: 1998 -> 2012 would otherwise squeeze the last three together
    ax_year.plot(range(len(rows)), acc, "o-")
    ax_year.set_xticks(range(len(rows)), [f"{r['model']}\n{r['year']}" for r in rows], fontsize=8)
    ax_year.set(ylabel="test accuracy (%)", title="accuracy, in order of publication")
    ax_cost.scatter([r["macs"] for r in rows], acc, s=[30 + 300 * r["params"] / max(x["params"] for x in rows)
                                                        for r in rows], alpha=0.7)
    for r, a in zip(rows, acc, strict=True):
        ax_cost.annotate(r["model"], (r["macs"], a), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax_cost.set_xscale("log")
    ax_cost.set(xlabel="MACs per image (log)", ylabel="test accuracy (%)", title="accuracy vs computation (area: params)")
    for ax in (ax_year, ax_cost):
        ax.grid(alpha=0.3)
    fig.suptitle(title, y=1.03)
    save_figure(fig, path)


@register_experiment(
    "classics", order=30, title="The classic architectures",
    claim="Each classic architecture improved on the one before (accuracy rises from LeNet-5 through AlexNet "
          "and VGG to ResNet), at a cost in computation.",
    budget="about 2 min")
def run(ctx: ExperimentContext) -> Outcome:
    """Train LeNet-5, an AlexNet-style, a VGG-style net and ResNet-20 with one recipe; compare cost and accuracy."""
    size = SIZES["quick" if ctx.quick else "default"]
    full = load_dataset(ctx.data, data_dir=ctx.data_dir, image_size=IMAGE_SIZE)
    ds, test = monitored_subsets(full, size, ctx.seed)
    k = len(ds.classes)
    costs = [measure_cost(c, ds.input_size, k) for c in CLASSICS]  # before training: bad input fails fast
    ctx.progress.total = len(CLASSICS) * size["epochs"]

    rows: list[dict[str, Any]] = []
    for classic, (params, macs) in zip(CLASSICS, costs, strict=True):
        result = fit(_model_text(classic, k), ds, device=ctx.device, epochs=size["epochs"], **RECIPE,
                     extra=dict(classic.options), seed=ctx.seed, callbacks=[epoch_progress(ctx, classic.label)])
        seconds = sum(h["train_seconds"] for h in result.history)
        rows.append({"model": classic.label, "year": classic.year, "params": params, "macs": macs,
                     "accuracy": final_accuracy(result, test), "train_s": seconds,
                     "img_s": len(ds.train) * size["epochs"] / seconds, "top5": classic.top5})

    acc = [r["accuracy"] for r in rows]
    rises = [b > a for a, b in zip(acc[:-1], acc[1:], strict=True)]
    costlier = [r["macs"] > rows[0]["macs"] for r in rows[1:]]
    steps = ", ".join(f"{r['model']} {100 * r['accuracy']:.2f}%" for r in rows)
    mac_text = ", ".join(f"{r['macs'] / 1e6:.2f} M" for r in rows)
    if all(rises) and all(costlier):
        supported = True
        verdict = (f"Test accuracy rose at every step ({steps}) while MACs per image went from {mac_text}: "
                   "each classic improved on the one before, at a cost in computation.")
    else:
        supported = False
        fell = [f"{rows[i]['model']} -> {rows[i + 1]['model']}" for i, ok in enumerate(rises) if not ok]
        verdict = (f"Test accuracy did not rise at every step ({steps}; no gain at {', '.join(fell) or 'none'}); "
                   f"MACs per image: {mac_text}.")
        if all(rises):
            verdict = f"Accuracy rose at every step ({steps}) but not every later net cost more than LeNet-5 ({mac_text})."

    n_train, n_test = len(ds.train), len(test.test)
    _plot(rows, ctx.path("plot.png"), f"{ds.name}: {n_train:,} training images, {plural(size['epochs'], 'epoch')}, one recipe")
    notes = [
        f"Data: {ds.name} at {IMAGE_SIZE}x{IMAGE_SIZE}, a stratified seeded subset of {n_train:,} training images, "
        f"tested once at the end on {n_test:,} test images; every net trained {plural(size['epochs'], 'epoch')} with one recipe: "
        f"{RECIPE['optimizer']} lr {RECIPE['lr']:g}, {RECIPE['schedule']} schedule, batch {RECIPE['batch_size']}, "
        "no augmentation, seed fixed. Accuracy is the last epoch's (no selection on the test set).",
        *[f"{c.label}: {c.built_as}" + (f" (`{c.model}`)" if " " in c.model else "") for c in CLASSICS],
        "ILSVRC top-5: the published ImageNet test error of each paper's competition entry (AlexNet 2012, "
        "VGG 2014, ResNet 2015), for context; LeNet-5 predates ImageNet.",
        "Training time: wall seconds of the training steps (evaluation excluded), on a machine that may be shared; "
        "compare the rows, not the absolute numbers.",
        "MACs in ImageNet's versions do not rise monotonically either: VGG-16 needs 15.5 G, ResNet-50 4.1 G.",
    ]
    return Outcome(
        columns=["model", "year", "params", "macs", "accuracy", "train_s", "img_s", "top5"],
        rows=rows, supported=supported, verdict=verdict,
        headers={"params": "parameters", "macs": "MACs / image", "accuracy": "test accuracy",
                 "train_s": "training (s)", "img_s": "images/s", "top5": "ILSVRC top-5 error"},
        fmt={"params": ",d", "macs": ",d", "accuracy": ".2%", "train_s": ".1f", "img_s": ",.0f", "top5": ".2%"},
        notes=notes,
    )
