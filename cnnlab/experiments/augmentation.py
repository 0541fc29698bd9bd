"""Augmentation at each arm's own budget, on two training-set sizes: each of the course's operations alone,
all five together, and where it helps.

Two class-balanced, seeded subsets of Fashion-MNIST's training set (1,000 and 4,000 images at the default
size), 10% of each held out as the validation split, train one small CNN (the why-conv conv net) with
one recipe: once without augmentation and once per augmentation: the course's five operations
(reflection, random crops, random scaling, exposure, saturation) alone, and all five together (the
`lecture` preset). Budgets are fair: every arm, `none` included, is trained until its validation accuracy
stops improving, on a ladder of budgets: E epochs, then 2E, 4E, 8E while the longer run validates better
(accuracy, ties broken by validation loss), keeping the best; within each run the epoch is chosen on
validation too. An augmented model sees a different version of every image each epoch and usually climbs
further up the ladder. Reported per size: test accuracy (measured once, on the chosen weights), the budget
each seed's arm stopped at, the clean training accuracy and the train - test gap (the usual measure of
overfitting), and the paired difference to `none` over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnnlab.augment import parse_pipeline
from cnnlab.core.figures import save_figure, subplots
from cnnlab.core.preprocess import to_unit
from cnnlab.core.stats import as_supported, check, combine, decide, paired
from cnnlab.data import load_dataset
from cnnlab.experiments._base import ExperimentContext, Outcome, register_experiment
from cnnlab.experiments._common import (
    VAL_FRACTION,
    final_accuracy,
    fit_selected,
    ladder_note,
    own_budget,
    seeds_note,
    spread,
    subsample,
)

# Training images per class (VAL_FRACTION held out), with E (epochs of the first budget) for each size, the
# ladder of budgets (multiples of E) an arm climbs while validation improves, and test images per class.
SIZES: dict[str, dict[str, Any]] = {
    "quick": {"train": (20, 50), "epochs": (1, 1), "ladder": (1, 2), "test": 50},
    "default": {"train": (100, 400), "epochs": (6, 3), "ladder": (1, 2, 4, 8), "test": 500},
    "large": {"train": (100, 1000), "epochs": (6, 3), "ladder": (1, 2, 4, 8), "test": None},
}
MODEL = "conv3x3-16 maxpool2 conv3x3-32 maxpool2 fc10"  # the why-conv conv net: cheap enough for 45 runs a seed
RECIPE: dict[str, Any] = {"optimizer": "adamw", "lr": 2e-3, "schedule": "onecycle", "batch_size": 64}

# (label, pipeline): the course's five with the parameters of the `lecture` preset, then all five.
VARIANTS: tuple[tuple[str, str], ...] = (
    ("none", "none"),
    ("reflection", "flip"),
    ("random crop", "crop:4"),
    ("random scaling", "scale:0.8-1.2"),
    ("exposure", "exposure:0.3"),
    ("saturation", "saturation:0.3"),
    ("contrast (grey stand-in for saturation)", "contrast:0.3"),
    ("all five (lecture preset)", "lecture"),
)
GREY_ONLY = "contrast:0.3"  # trained only on grayscale data, where saturation changes nothing
EFFECT = {"supported": "helps", "contradicted": "hurts", "inconclusive": "unclear"}


def is_noop(pipeline: str, images) -> bool:
    """Whether `pipeline` leaves a batch of uint8 images `(N, C, H, W)` exactly unchanged."""
    x = to_unit(images)
    y = parse_pipeline(pipeline)(x.clone(), torch.Generator().manual_seed(0))
    return bool(torch.equal(x, y))


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    sizes = sorted({r["train_images"] for r in rows})
    fig, axes = subplots(1, len(sizes), figsize=(5.5 * len(sizes), 0.45 * len(VARIANTS) + 1.8), sharey=True,
                         squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        trained = [r for r in rows if r["train_images"] == n and r["test"] is not None]
        labels = [r["augmentation"] for r in trained][::-1]
        means = [100 * r["test"]["mean"] for r in trained][::-1]
        lo = [100 * (r["test"]["low"] if r["test"]["low"] is not None else r["test"]["mean"]) for r in trained][::-1]
        hi = [100 * (r["test"]["high"] if r["test"]["high"] is not None else r["test"]["mean"]) for r in trained][::-1]
        colours = ["tab:gray" if lab == "none" else "tab:blue" for lab in labels]
        ax.barh(labels, means, color=colours, alpha=0.6)
        ax.errorbar(means, labels, xerr=[[m - x for m, x in zip(means, lo, strict=True)],
                                         [x - m for m, x in zip(means, hi, strict=True)]], fmt="none", color="k",
                    capsize=3)
        for r, lab in zip(trained[::-1], labels, strict=True):
            ax.scatter([100 * v for v in r["per_seed"]], [lab] * len(r["per_seed"]), s=10, color="black", zorder=3)
        ax.axvline(means[labels.index("none")], color="k", lw=0.8, ls="--")
        ax.set_xlim(min(lo) - 2, max(hi) + 1)
        ax.set(xlabel="test accuracy (%)", title=f"{n:,} training images")
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title, y=1.02)
    save_figure(fig, path)


def _arm(ctx, ds, pipeline, epochs, seed) -> dict[str, float]:
    run_ = fit_selected(MODEL.replace("fc10", f"fc{ds.num_classes}"), ds, val_fraction=VAL_FRACTION, seed=seed,
                        device=ctx.device, epochs=epochs, augment=pipeline, **RECIPE)
    train_acc = final_accuracy(run_.result, run_.data, split="train")
    return {"val": run_.val_accuracy, "val_loss": run_.val_loss, "test": run_.test_accuracy, "train": train_acc,
            "epoch": run_.best_epoch}  # own_budget adds the budget ("epochs")


@register_experiment(
    "augmentation", order=40, title="Data augmentation",
    claim="Augmentation makes a model more robust: on a small training set it gives a higher test accuracy "
          "and a smaller gap between training and test accuracy.",
    budget="about 18 CPU-min")
def run(ctx: ExperimentContext) -> Outcome:
    """Per size and seed: the model without augmentation (E and 2E epochs) and with each augmentation (2E)."""
    size = SIZES[ctx.size]
    full = load_dataset(ctx.data, data_dir=ctx.data_dir)
    grey = full.input_size[0] == 1
    saturation_noop = is_noop("saturation:0.3", full.train.images[:256])
    variants = [(label, p) for label, p in VARIANTS if grey or p != GREY_ONLY]
    to_train = [(label, p) for label, p in variants if not (p.startswith("saturation") and saturation_noop)]
    ctx.progress.total = len(size["train"]) * len(ctx.seeds) * len(to_train) * len(size["ladder"])  # at most

    rows: list[dict[str, Any]] = []
    checks = []
    helps_at: dict[int, list[str]] = {}
    capped: list[str] = []  # arms that stopped at the last budget on every seed
    for per_class, short in zip(size["train"], size["epochs"], strict=True):
        runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in to_train}
        for seed in ctx.seeds:
            ds = subsample(full, per_class, size["test"], seed)
            for label, pipeline in to_train:
                runs[label].append(own_budget(
                    ctx, [k * short for k in size["ladder"]],
                    lambda epochs, p=pipeline: _arm(ctx, ds, p, epochs, seed),  # noqa: B023 (called at once)
                    f"{len(ds.train):,} images, {label}, seed {seed}"))
        n = len(ds.train)
        base = runs["none"]
        helps_at[n] = []
        for label, pipeline in variants:
            if (label, pipeline) not in to_train:
                rows.append({"train_images": n, "augmentation": label,
                             "pipeline": f"{pipeline} (no-op here: not trained)", "epochs": None, "test": None,
                             "gap": None, "delta": None, "effect": None, "per_seed": []})
                continue
            arm = runs[label]
            test = [r["test"] for r in arm]
            gap = [r["train"] - r["test"] for r in arm]
            if all(r["epochs"] == size["ladder"][-1] * short for r in arm) and len(size["ladder"]) > 1:
                capped.append(f"{label} at {n:,} images")
            row = {"train_images": n, "augmentation": label, "pipeline": pipeline,
                   "epochs": "/".join(str(r["epochs"]) for r in arm),
                   "test": spread(test), "gap": spread(gap), "delta": None, "effect": None, "per_seed": test}
            if pipeline != "none":
                d = paired(test, [r["test"] for r in base])
                row["delta"] = d.to_dict()
                row["effect"] = EFFECT[decide(d)] if len(test) > 1 else "unclear (1 seed)"
                if row["effect"] == "helps":
                    helps_at[n].append(label)
            rows.append(row)
            if pipeline == "lecture" and per_class == size["train"][0]:  # the claim: on the small set
                checks.append(check(f"{n:,} images: all five - none > 0 (test accuracy)", test,
                                    [r["test"] for r in base]))
                checks.append(check(f"{n:,} images: gap of none - gap of all five > 0",
                                    [r["train"] - r["test"] for r in base], gap))
    outcome = combine(checks)
    five = [r for r in rows if r["pipeline"] == "lecture"]
    none_rows = [r for r in rows if r["pipeline"] == "none"]
    parts = []
    for f, b in zip(five, none_rows, strict=True):
        parts.append(f"at {f['train_images']:,} training images all five give {f['test']['mean']:.2%} vs "
                     f"{b['test']['mean']:.2%} without ({100 * f['delta']['mean']:+.2f} points; gap "
                     f"{100 * f['gap']['mean']:.2f} vs {100 * b['gap']['mean']:.2f}); single operations that help "
                     f"(interval above zero): {', '.join(helps_at[f['train_images']]) or 'none'}")
    verdict = "Mean over seeds: " + "; ".join(parts) + "."

    _plot(rows, ctx.path("plot.png"), f"{MODEL} on subsets of {full.name}: mean test accuracy, 95% interval, seeds")
    test_text = "all" if size["test"] is None else f"{size['test']} per class of the"
    notes = [
        f"Data: stratified seeded subsets of {full.name}'s training set, {' and '.join(str(p) for p in size['train'])} "
        f"images per class; {100 * VAL_FRACTION:.0f}% of each held out as the validation split; test on "
        f"{test_text} test images, measured once on the "
        "weights chosen on validation.",
        ladder_note(f"{', '.join(str(e) for e in size['epochs'])} epochs for the two sizes", size["ladder"],
                    "every arm, `none` included,"),
        f"Model and recipe: `{MODEL}`, {RECIPE['optimizer']} lr {RECIPE['lr']:g}, {RECIPE['schedule']} schedule, "
        f"batch {RECIPE['batch_size']}.",
        seeds_note(ctx.seeds),
        "Training accuracy is measured on the images trained on, without augmentation, model in eval mode; "
        "gap = training accuracy - test accuracy. 'effect': helps / hurts when the paired 95% interval of "
        "(augmented - none) lies above / below zero, unclear otherwise.",
        "The `lecture` preset is flip,crop:4,scale:0.8-1.2,exposure:0.3,saturation:0.3: the five rows above it "
        "together, with the same parameters. The verdict is decided at the smaller size (the claim's small "
        "training set); the larger size shows where augmentation stops helping or starts.",
    ]
    if capped:
        notes.append(f"Stopped at the last budget on every seed, so possibly still under-trained: {'; '.join(capped)}.")
    if saturation_noop:
        notes.append("Saturation blends each image with its grey version; the images here are grayscale, so it "
                     "changes nothing (checked: the augmented images equal the originals) and its run would equal "
                     "'none'. The contrast row (grey levels stretched or flattened about the image mean) is the "
                     "nearest photometric operation that does act on grayscale images.")
    return Outcome(
        columns=["train_images", "augmentation", "pipeline", "epochs", "test", "gap", "delta", "effect"], rows=rows,
        supported=as_supported(outcome), verdict=verdict, checks=checks,
        headers={"train_images": "train images", "test": "test accuracy", "gap": "train - test",
                 "delta": "test vs none (paired)"},
        fmt={"train_images": ",d", "test": ".2%", "gap": ".2%", "delta": "+.2%"},
        notes=notes,
    )
