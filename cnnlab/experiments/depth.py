"""Depth: stacking 3x3 convolutions grows the receptive field, and (up to a point) the accuracy.

Two series of nets on Fashion-MNIST, d = 1, 2, ... stacked `conv3x3-16` layers:

    no pooling     conv3x3-16 * d                 gap fc10
    with pooling   (conv3x3-16 maxpool2) * d      gap fc10

The head is global average pooling and one linear layer (170 parameters), so what a unit of the last
conv layer can see (its receptive field) and the conv stack's parameters are what changes with depth.
The receptive field is read from `cnnlab.inspect.summary` (traced, not computed from a formula) and
checked against the closed forms: without pooling each 3x3 layer adds 2 pixels, r = 1 + 2d; a 2x2 pool
after every conv doubles the step (jump) between neighbouring units, so the next layer adds twice as
much, r = 1 + sum_k (k - 1) * jump_k = 5 * 2^(d-1) - 2 for the last conv.
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.core.figures import save_figure, subplots
from cnnlab.core.stats import as_supported, check, combine, exact
from cnnlab.data import load_dataset
from cnnlab.experiments._base import ExperimentContext, Outcome, register_experiment
from cnnlab.experiments._common import VAL_FRACTION, fit_selected, param_count, seeds_note, spread, subsample
from cnnlab.inspect import summary

WIDTH = 16  # channels of every conv layer: small enough that 6 layers at 28x28 train in seconds

# (train images per class, of which VAL_FRACTION is held out; test images per class; epochs; no-pool depths;
# pool depths). The default (3 seeds) takes ~2 CPU-minutes (AVX2 class).
SIZES = {"quick": (30, 20, 1, (1, 2, 3), (1, 2)),
         "default": (150, 300, 4, (1, 2, 3, 4, 5, 6), (1, 2, 3, 4)),
         "large": (600, 1000, 6, (1, 2, 3, 4, 5, 6), (1, 2, 3, 4))}
DEFAULT_SIZE, QUICK_SIZE = SIZES["default"], SIZES["quick"]


def depth_spec(depth: int, pool: bool, num_classes: int = 10) -> str:
    """The spec of the net with `depth` 3x3 conv layers, with a 2x2 max pool after each if `pool`."""
    block = f"(conv3x3-{WIDTH} maxpool2)*{depth}" if pool else f"conv3x3-{WIDTH}*{depth}"
    return f"{block} gap fc{num_classes}"


def closed_form_rf(depth: int, pool: bool) -> int:
    """Receptive field (pixels) of one unit of the last conv layer: 1 + 2d, or 5 * 2^(d-1) - 2 with pooling."""
    return 5 * 2 ** (depth - 1) - 2 if pool else 1 + 2 * depth


def _last_conv_rf(spec: str, input_size: tuple[int, int, int], num_classes: int) -> int:
    rows = [r for r in summary(spec, input_size, num_classes=num_classes).layers if r.kind == "Conv2d"]
    return int(rows[-1].receptive_field[0])


def _plot(rows: list[dict], path: Path) -> None:
    fig, (ax_rf, ax_acc) = subplots(1, 2, figsize=(10, 3.8))
    for pool, colour, label in ((False, "tab:blue", "no pooling"), (True, "tab:orange", "maxpool2 after each")):
        series = [r for r in rows if r["pool"] == pool]
        ds = [r["depth"] for r in series]
        ax_rf.plot(ds, [r["rf"] for r in series], "o-", color=colour, label=f"{label} (traced)")
        ax_rf.plot(ds, [r["rf_formula"] for r in series], "x", color="black", markersize=9)
        means = [100 * r["accuracy"]["mean"] for r in series]
        lows = [100 * (r["accuracy"]["low"] if r["accuracy"]["low"] is not None else r["accuracy"]["mean"]) for r in series]
        highs = [100 * (r["accuracy"]["high"] if r["accuracy"]["high"] is not None else r["accuracy"]["mean"])
                 for r in series]
        ax_acc.errorbar(ds, means, yerr=[[m - lo for m, lo in zip(means, lows, strict=True)],
                                         [h - m for m, h in zip(means, highs, strict=True)]],
                        fmt="o-", color=colour, capsize=3, label=f"{label} (mean, 95% interval)")
        for r in series:
            ax_acc.scatter([r["depth"]] * len(r["per_seed"]), [100 * v for v in r["per_seed"]], s=10, color=colour,
                           alpha=0.5)
    ax_rf.plot([], [], "x", color="black", label="closed form")
    ax_rf.set(xlabel="3x3 conv layers d", ylabel="receptive field (pixels)", title="receptive field of the last conv")
    ax_acc.set(xlabel="3x3 conv layers d", ylabel="test accuracy (%)", title="accuracy (dots: seeds)")
    for ax in (ax_rf, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_xticks(sorted({r["depth"] for r in rows}))
    save_figure(fig, path)


@register_experiment(
    "depth",
    title="Depth and receptive field",
    claim="Each stacked 3x3 layer grows the receptive field (by 2 pixels without pooling, faster with pooling), "
          "and depth improves accuracy, up to a point.",
    order=20,
    budget="about 2 min",
)
def run(ctx: ExperimentContext) -> Outcome:
    """Train both series of `depth_spec` nets once per seed; receptive field, parameters, MACs, test accuracy."""
    per_class, test_per_class, epochs, plain_depths, pool_depths = SIZES[ctx.size]
    full = load_dataset(ctx.data or "fashion-mnist", data_dir=ctx.data_dir)
    input_size, k = tuple(full.input_size), full.num_classes
    plan = [(False, d) for d in plain_depths] + [(True, d) for d in pool_depths]
    ctx.progress.total = len(plan) * len(ctx.seeds)
    acc = {cell: [] for cell in plan}
    val = {cell: [] for cell in plan}
    params = {}
    for seed in ctx.seeds:
        ds = subsample(full, per_class, test_per_class, seed)
        for pool, depth in plan:
            run_ = fit_selected(depth_spec(depth, pool, k), ds, val_fraction=VAL_FRACTION, seed=seed,
                                device=ctx.device, epochs=epochs, batch_size=64, lr=3e-3, optimizer="adamw")
            acc[(pool, depth)].append(run_.test_accuracy)
            val[(pool, depth)].append(run_.val_accuracy)
            params[(pool, depth)] = param_count(run_.result.model)
            ctx.progress.step(f"{'pool' if pool else 'plain'} d={depth} seed {seed}")
    rows = []
    for pool, depth in plan:
        spec = depth_spec(depth, pool, k)
        rows.append({
            "pool": pool, "depth": depth, "rf": _last_conv_rf(spec, input_size, k),
            "rf_formula": closed_form_rf(depth, pool), "params": params[(pool, depth)],
            "macs": summary(spec, input_size, num_classes=k).total_macs, "val": spread(val[(pool, depth)]),
            "accuracy": spread(acc[(pool, depth)]), "per_seed": acc[(pool, depth)],
        })
    _plot(rows, ctx.path("plot.png"))

    plain = [r for r in rows if not r["pool"]]
    pooled = [r for r in rows if r["pool"]]
    rf_matches = all(r["rf"] == 1 + 2 * r["depth"] for r in plain)
    common = [(a, b) for a in plain for b in pooled if a["depth"] == b["depth"] and a["depth"] >= 2]
    pool_faster = bool(common) and all(b["rf"] > a["rf"] for a, b in common)

    def chosen(series: list[dict]) -> dict:
        # the deeper net (d > the shallowest) with the best mean validation accuracy: chosen on validation, never test
        return max(series[1:], key=lambda r: r["val"]["mean"])

    best_plain, best_pool = chosen(plain), chosen(pooled)
    checks = [exact("receptive field = 1 + 2d without pooling (traced)", rf_matches),
              exact("pooling grows it faster (d >= 2)", pool_faster)]
    for name, series, best in (("no pooling", plain, best_plain), ("pooling", pooled, best_pool)):
        checks.append(check(f"{name}: d={best['depth']} (best deeper net on validation) - d={series[0]['depth']} > 0",
                            best["per_seed"], series[0]["per_seed"]))
    outcome = combine(checks)
    deepest = plain[-1]
    mean = lambda r: r["accuracy"]["mean"]  # noqa: E731
    verdict = (
        f"Traced receptive fields {'equal' if rf_matches else 'differ from'} 1+2d for every plain net "
        f"({', '.join(str(r['rf']) for r in plain)} for d={plain[0]['depth']}..{deepest['depth']}); with pooling they "
        f"grow to {', '.join(str(r['rf']) for r in pooled)}. Mean test accuracy without pooling goes from "
        f"{mean(plain[0]):.1%} (d=1) to {mean(best_plain):.1%} at the deeper net chosen on validation (d={best_plain['depth']}); "
        f"with pooling from {mean(pooled[0]):.1%} to {mean(best_pool):.1%} (d={best_pool['depth']})."
    )
    if best_plain is not deepest:
        verdict += (f" The deepest plain net (d={deepest['depth']}) reaches {mean(deepest):.1%}: validation chose "
                    f"d={best_plain['depth']}: past it, depth stopped helping at this size.")
    for r in rows:
        r["pooling"] = "maxpool2" if r["pool"] else "none"
    notes = [
        f"Nets: `{depth_spec(2, False, k)}` (d=2, no pooling), `{depth_spec(2, True, k)}` (d=2, pooling); "
        f"receptive field of one unit of the last conv layer, from `cnnlab.inspect.summary`.",
        "Closed form: r = 1 + 2d without pooling; with a 2x2 pool after each conv the jump doubles per layer, "
        "r = 1 + sum_k 2 * 2^(k-1) + sum_k<d 2^(k-1) = 5 * 2^(d-1) - 2. Fields larger than the 28-pixel image "
        "count padding.",
        f"Data: {per_class} train images per class of {full.name}, {100 * VAL_FRACTION:.0f}% held out as the "
        f"validation split that picks each run's epoch and each series' best depth; {test_per_class} test images "
        f"per class, evaluated once on the chosen weights; {epochs} epochs, AdamW lr 3e-3 one-cycle, batch 64.",
        seeds_note(ctx.seeds),
        "Absolute accuracies are low by design (16 channels, a global-average head, few epochs): the nets are "
        "kept small so the trend with depth and receptive field is what is measured.",
    ]
    return Outcome(
        columns=["pooling", "depth", "rf", "rf_formula", "params", "macs", "val", "accuracy"], rows=rows,
        supported=as_supported(outcome), verdict=verdict, checks=checks,
        headers={"depth": "3x3 layers d", "rf": "receptive field (traced)", "rf_formula": "closed form",
                 "params": "parameters", "macs": "MACs / image", "val": "validation accuracy",
                 "accuracy": "test accuracy"},
        fmt={"params": ",d", "macs": ",d", "val": ".2%", "accuracy": ".2%"}, notes=notes,
    )
