"""Transferability (Yosinski et al. 2014, "How transferable are features in deep neural networks?").

The paper's design at Fashion-MNIST scale. The 10 classes are split at random (seeded) into two halves
A and B. Two base nets, baseA and baseB, are trained on their half. Then for every n = 1 .. L-1 four nets
are trained on task B whose first n weight layers are copied from a base net and the rest re-initialised:

    BnB   first n layers from baseB, frozen       (selffer: tests co-adaptation of neighbouring layers)
    BnB+  first n layers from baseB, fine-tuned
    AnB   first n layers from baseA, frozen       (transfer: tests how general layer n's features are)
    AnB+  first n layers from baseA, fine-tuned

The net is all-convolutional below two fully connected layers and has no batch norm, as in the paper
(its AlexNet had none either; freezing a layer then freezes exactly its weights). Figure 2 of the paper
is the plot: test accuracy on B against n, one marker per treatment, baseB as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.core.figures import save_figure, subplots
from cnnlab.core.stats import as_supported, check, combine
from cnnlab.data import load_dataset
from cnnlab.data.dataset import Dataset, in_memory_dataset
from cnnlab.errors import CnnlabError
from cnnlab.experiments._base import ExperimentContext, Outcome, register_experiment
from cnnlab.experiments._common import VAL_FRACTION, fit_selected, seeds_note, spread
from cnnlab.models import resolve_model
from cnnlab.transfer_learning.freeze import freeze

# L = 5 weight layers; n runs over 1..4 (the classifier is always new, as the paper's fc8).
# Strided convolutions instead of pooling keep every layer a weight layer ("all-conv", Springenberg 2015).
SPEC = "conv3x3-16 conv3x3-32/s2 conv3x3-32/s2 fc64 fc5"

TREATMENTS = ("BnB", "BnB+", "AnB", "AnB+")
NOISE = 0.01  # "costs almost nothing", "at least as good": within one point (a non-inferiority margin)


@dataclass
class Size:
    """How much to train. `per_class` images per class of train (test uses the whole test half)."""

    per_class: int  # training images per class (Fashion-MNIST has 6000), VAL_FRACTION of them held out
    test_per_class: int  # test images per class (1000 available)
    epochs: int
    batch_size: int = 64
    lr: float = 2e-3  # AdamW, one-cycle: a net without batch norm trains stably at this rate


# The default (3 seeds, 18 nets each) takes ~2 CPU-minutes (AVX2 class).
DEFAULT = Size(per_class=300, test_per_class=500, epochs=5)
QUICK = Size(per_class=60, test_per_class=40, epochs=1, batch_size=50)
LARGE = Size(per_class=1200, test_per_class=1000, epochs=6)
SIZES = {"quick": QUICK, "default": DEFAULT, "large": LARGE}


def split_classes(num_classes: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random split of class indices into halves A and B (each sorted)."""
    perm = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    half = num_classes // 2
    return sorted(perm[:half]), sorted(perm[half:2 * half])


def task_dataset(ds: Dataset, classes: list[int], per_class: int, test_per_class: int, seed: int,
                 name: str) -> Dataset:
    """The images of `classes` only, relabelled 0..len(classes)-1, at most `per_class` train and
    `test_per_class` test images of each class (a seeded sample)."""
    gen = torch.Generator().manual_seed(seed)
    splits = []
    for split, limit in ((ds.train, per_class), (ds.test, test_per_class)):
        keep, labels = [], []
        for new, old in enumerate(classes):
            idx = torch.nonzero(split.labels == old).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)[:limit]]
            keep.append(idx)
            labels.append(torch.full((len(idx),), new, dtype=torch.int64))
        keep_t = torch.cat(keep)
        splits.append((split.images[keep_t], torch.cat(labels)))
    return in_memory_dataset(name, [ds.classes[c] for c in classes], ds.source, splits[0], splits[1])


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The layers holding weights (convolutions and linear layers), in forward order."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def build_net(num_classes: int, input_size: tuple[int, int, int], seed: int) -> nn.Module:
    """A freshly initialised transfer net (`SPEC`), its weights fixed by `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _ = resolve_model(SPEC.replace("fc5", f"fc{num_classes}"), input_size, num_classes, {})
    return model.float().to(memory_format=torch.contiguous_format)


def transfer_net(base: nn.Module, n: int, *, frozen: bool, num_classes: int,
                 input_size: tuple[int, int, int], seed: int) -> nn.Module:
    """A new net whose first `n` weight layers are copies of `base`'s (frozen or trainable) and whose
    other layers are freshly initialised with `seed`."""
    net = build_net(num_classes, input_size, seed)
    src, dst = weight_layers(base), weight_layers(net)
    if not 0 <= n < len(dst):
        raise ValueError(f"n must be in 0..{len(dst) - 1} (the classifier is always new), got {n}")
    with torch.no_grad():
        for s, d in zip(src[:n], dst[:n], strict=True):
            d.load_state_dict({k: v.detach().float().cpu() for k, v in s.state_dict().items()})
            if frozen:
                freeze(d)
    return net


def _train(model: nn.Module, data: Dataset, size: Size, seed: int, device: str) -> float:
    """Test accuracy of `model` trained on `data`, its epoch chosen on a held-out validation split."""
    return fit_selected(model, data, val_fraction=VAL_FRACTION, seed=seed, device=device, epochs=size.epochs,
                        batch_size=size.batch_size, lr=size.lr, optimizer="adamw").test_accuracy


def _plot(rows: list[dict], base_b: float, base_a: float, data_name: str, path: Path) -> None:
    fig, ax = subplots(figsize=(6.4, 4.2))
    ns = [r["n"] for r in rows]
    # The paper's Figure 2 markers: selffer (B) as circles, transfer (A) as diamonds; '+' filled lighter.
    style = {"BnB": ("o", "white", "navy"), "BnB+": ("o", "lightskyblue", "navy"),
             "AnB": ("D", "firebrick", "firebrick"), "AnB+": ("D", "pink", "firebrick")}
    for j, t in enumerate(TREATMENTS):
        marker, face, edge = style[t]
        ax.plot(ns, [100 * r[t]["mean"] for r in rows], linestyle=":", color=edge, marker=marker,
                markerfacecolor=face, markeredgecolor=edge, markersize=8, label=f"{t} (mean)")
        for r in rows:  # one small dot per seed, shifted a little so the treatments do not overlap
            ax.scatter([r["n"] + 0.06 * (j - 1.5)] * len(r["seeds_" + t]), [100 * v for v in r["seeds_" + t]],
                       s=8, color=edge, alpha=0.5)
    ax.plot([0], [100 * base_b], marker="s", color="black", linestyle="none", markersize=8, label="baseB")
    ax.axhline(100 * base_b, color="gray", linewidth=1, linestyle="--")
    ax.set_xticks([0, *ns])
    ax.set(xlabel="layer n at which the net is chopped and retrained", ylabel="test accuracy on B (%)",
           title=f"Transferability between halves of {data_name} (baseA on A: {100 * base_a:.1f}%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, ncol=3)
    save_figure(fig, path)


@register_experiment(
    "transferability",
    title="Transferability of features",
    claim="Features of early layers are general (copying them from a net trained on other classes costs "
          "almost nothing) and become specific to their task higher up, while fine-tuning the copied layers "
          "recovers (AnB+ at least as good as baseB).",
    order=70,
    budget="about 3-5 min",
)
def run(ctx: ExperimentContext) -> Outcome:
    """Per seed: train baseA, baseB and the BnB/BnB+/AnB/AnB+ nets for every n; test accuracy on task B."""
    size = SIZES[ctx.size]
    ds = load_dataset(ctx.data or "fashion-mnist", data_dir=ctx.data_dir)
    if ds.num_classes < 4:
        raise CnnlabError(f"transferability needs a dataset with at least 4 classes to split in two, "
                          f"got {ds.name!r} with {ds.num_classes}")
    classes_a, classes_b = split_classes(ds.num_classes, ctx.seed)  # one task pair for every seed
    k = len(classes_b)
    input_size = tuple(ds.input_size)
    n_layers = len(weight_layers(build_net(k, input_size, 0)))
    ns = list(range(1, n_layers))
    ctx.progress.total = (2 + len(ns) * len(TREATMENTS)) * len(ctx.seeds)
    acc = {(t, n): [] for t in TREATMENTS for n in ns}
    base_a_acc, base_b_acc = [], []
    for seed in ctx.seeds:
        data_a = task_dataset(ds, classes_a, size.per_class, size.test_per_class, seed, f"{ds.name}-A")
        data_b = task_dataset(ds, classes_b, size.per_class, size.test_per_class, seed + 1, f"{ds.name}-B")
        # The base nets share one initialisation seed, as the paper's baseA and baseB.
        base_a = build_net(k, input_size, seed)
        base_a_acc.append(_train(base_a, data_a, size, seed, ctx.device))
        ctx.progress.step(f"baseA seed {seed}")
        base_b = build_net(k, input_size, seed)
        base_b_acc.append(_train(base_b, data_b, size, seed, ctx.device))
        ctx.progress.step(f"baseB seed {seed}")
        for n in ns:
            for t in TREATMENTS:
                base = base_b if t.startswith("B") else base_a
                # The upper layers get an initialisation of their own, different from the base nets'.
                net = transfer_net(base, n, frozen=not t.endswith("+"), num_classes=k, input_size=input_size,
                                   seed=seed + 1000 + n)
                acc[(t, n)].append(_train(net, data_b, size, seed, ctx.device))
                ctx.progress.step(f"{t} n={n} seed {seed}")
    rows = []
    for n in ns:
        row: dict = {"n": n}
        for t in TREATMENTS:
            row[t] = spread(acc[(t, n)])
            row["seeds_" + t] = acc[(t, n)]
        row["baseB"] = spread(base_b_acc)
        rows.append(row)
    base_b_mean = sum(base_b_acc) / len(base_b_acc)
    base_a_mean = sum(base_a_acc) / len(base_a_acc)
    _plot(rows, base_b_mean, base_a_mean, ds.name, ctx.path("plot.png"))

    first, last = ns[0], ns[-1]
    plus_mean = [sum(acc[("AnB+", n)][i] for n in ns) / len(ns) for i in range(len(ctx.seeds))]
    checks = [
        check(f"AnB at n={first} - baseB > -{100 * NOISE:.0f} point (early features are general)",
              acc[("AnB", first)], base_b_acc, threshold=-NOISE),
        check(f"AnB at n={first} - AnB at n={last} > 0 (higher features are specific)",
              acc[("AnB", first)], acc[("AnB", last)]),
        check(f"AnB+ (mean over n) - baseB > -{100 * NOISE:.0f} point (fine-tuning recovers)", plus_mean,
              base_b_acc, threshold=-NOISE),
    ]
    outcome = combine(checks)
    m = lambda t, n: rows[n - 1][t]["mean"]  # noqa: E731
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    worst_bnb = min(m("BnB", n) for n in ns)
    verdict = (
        f"Mean over seeds: baseB reaches {pct(base_b_mean)} on B. Copying frozen layers from baseA: AnB at n={first} "
        f"{pct(m('AnB', first))}, at n={last} {pct(m('AnB', last))}; fine-tuned AnB+ ranges "
        f"{pct(min(m('AnB+', n) for n in ns))}-{pct(max(m('AnB+', n) for n in ns))}. Selffer BnB is at worst "
        f"{pct(worst_bnb)}{' (a co-adaptation dip)' if worst_bnb < base_b_mean - NOISE else ''}."
    )
    names_a = ", ".join(ds.classes[c] for c in classes_a)
    names_b = ", ".join(ds.classes[c] for c in classes_b)
    notes = [
        f"Task A: {names_a}. Task B: {names_b} (split by seed {ctx.seed}, the same for every seed).",
        f"Net `{SPEC.replace('fc5', f'fc{k}')}` (no batch norm, {n_layers} weight layers); n = number of "
        f"weight layers copied; the classifier is always new.",
        f"Each net: {size.per_class} train images per class ({100 * VAL_FRACTION:.0f}% held out as the validation "
        f"split that picks its epoch), {size.epochs} epochs, AdamW lr {size.lr:g} one-cycle, batch "
        f"{size.batch_size}; tested once on {size.test_per_class} test images per class of B with the chosen "
        "weights. Frozen = requires_grad off (`cnnlab.transfer_learning.freeze`).",
        seeds_note(ctx.seeds),
        f"'Costs almost nothing' and 'at least as good' are non-inferiority checks with a {100 * NOISE:.0f}-point "
        "margin: the whole 95% interval of the paired difference must lie above -1 point.",
    ]
    for r in rows:
        for t in TREATMENTS:
            r.pop("seeds_" + t)
    return Outcome(
        columns=["n", *TREATMENTS, "baseB"], rows=rows, supported=as_supported(outcome), verdict=verdict,
        checks=checks, headers={"n": "n (layers copied)", "baseB": "baseB"},
        fmt={t: ".2%" for t in (*TREATMENTS, "baseB")}, notes=notes,
    )
