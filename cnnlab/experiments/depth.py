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
from cnnlab.data import load_dataset
from cnnlab.experiments._base import ExperimentContext, Outcome, register_experiment
from cnnlab.experiments._common import fit, param_count, subsample
from cnnlab.inspect import summary

WIDTH = 16  # channels of every conv layer: small enough that 6 layers at 28x28 train in seconds
NOISE = 0.01  # one point: differences below it are within seed-to-seed noise at this size

# (train images per class, test images per class, epochs, no-pool depths, pool depths)
DEFAULT_SIZE = (600, 300, 4, (1, 2, 3, 4, 5, 6), (1, 2, 3, 4))
QUICK_SIZE = (30, 20, 1, (1, 2, 3), (1, 2))


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
        ax_acc.plot(ds, [100 * r["accuracy"] for r in series], "o-", color=colour, label=label)
    ax_rf.plot([], [], "x", color="black", label="closed form")
    ax_rf.set(xlabel="3x3 conv layers d", ylabel="receptive field (pixels)", title="receptive field of the last conv")
    ax_acc.set(xlabel="3x3 conv layers d", ylabel="test accuracy (%)", title="accuracy")
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
    """Train both series of `depth_spec` nets; receptive field, parameters, MACs and test accuracy."""
    per_class, test_per_class, epochs, plain_depths, pool_depths = QUICK_SIZE if ctx.quick else DEFAULT_SIZE
    ds = subsample(load_dataset(ctx.data or "fashion-mnist", data_dir=ctx.data_dir), per_class, test_per_class,
                   ctx.seed)
    input_size, k = tuple(ds.input_size), ds.num_classes
    plan = [(False, d) for d in plain_depths] + [(True, d) for d in pool_depths]
    ctx.progress.total = len(plan)
    rows = []
    for pool, depth in plan:
        spec = depth_spec(depth, pool, k)
        result = fit(spec, ds, device=ctx.device, epochs=epochs, batch_size=64, lr=3e-3, optimizer="adamw",
                     seed=ctx.seed)
        rows.append({
            "pool": pool, "depth": depth, "rf": _last_conv_rf(spec, input_size, k),
            "rf_formula": closed_form_rf(depth, pool), "params": param_count(result.model),
            "macs": summary(spec, input_size, num_classes=k).total_macs, "accuracy": float(result.test_accuracy),
        })
        ctx.progress.step(f"{'pool' if pool else 'plain'} d={depth}")
    _plot(rows, ctx.path("plot.png"))

    plain = [r for r in rows if not r["pool"]]
    pooled = [r for r in rows if r["pool"]]
    rf_matches = all(r["rf"] == 1 + 2 * r["depth"] for r in plain)
    common = [(a, b) for a in plain for b in pooled if a["depth"] == b["depth"] and a["depth"] >= 2]
    pool_faster = bool(common) and all(b["rf"] > a["rf"] for a, b in common)

    def gain(series: list[dict]) -> tuple[dict, float]:
        best = max(series, key=lambda r: r["accuracy"])
        return best, best["accuracy"] - series[0]["accuracy"]

    best_plain, gain_plain = gain(plain)
    best_pool, gain_pool = gain(pooled)
    improves = gain_plain > NOISE and gain_pool > NOISE
    supported = rf_matches and pool_faster and improves
    deepest = plain[-1]
    verdict = (
        f"Traced receptive fields {'equal' if rf_matches else 'differ from'} 1+2d for every plain net "
        f"({', '.join(str(r['rf']) for r in plain)} for d={plain[0]['depth']}..{deepest['depth']}); with pooling they "
        f"grow to {', '.join(str(r['rf']) for r in pooled)}. Accuracy without pooling goes from {plain[0]['accuracy']:.1%} "
        f"(d=1) to {best_plain['accuracy']:.1%} at best (d={best_plain['depth']}, {gain_plain:+.1%}); with pooling "
        f"from {pooled[0]['accuracy']:.1%} to {best_pool['accuracy']:.1%} (d={best_pool['depth']}, {gain_pool:+.1%})."
    )
    if best_plain is not deepest:
        verdict += f" The deepest plain net (d={deepest['depth']}) reaches {deepest['accuracy']:.1%}: no gain past " \
                   f"d={best_plain['depth']} at this size."
    if not improves:
        verdict += " Depth did not improve accuracy by more than one point in both series here."
    for r in rows:
        r["pooling"] = "maxpool2" if r["pool"] else "none"
    notes = [
        f"Nets: `{depth_spec(2, False, k)}` (d=2, no pooling), `{depth_spec(2, True, k)}` (d=2, pooling); "
        f"receptive field of one unit of the last conv layer, from `cnnlab.inspect.summary`.",
        "Closed form: r = 1 + 2d without pooling; with a 2x2 pool after each conv the jump doubles per layer, "
        "r = 1 + sum_k 2 * 2^(k-1) + sum_k<d 2^(k-1) = 5 * 2^(d-1) - 2. Fields larger than the 28-pixel image "
        "count padding.",
        f"Data: {per_class} train and {test_per_class} test images per class of {ds.name}; {epochs} epochs, "
        f"AdamW lr 3e-3 one-cycle, batch 64, seed {ctx.seed}; one seed per net.",
        "Absolute accuracies are low by design (16 channels, a global-average head, few epochs): the nets are "
        "kept small so the trend with depth and receptive field is what is measured.",
    ]
    return Outcome(
        columns=["pooling", "depth", "rf", "rf_formula", "params", "macs", "accuracy"], rows=rows,
        supported=supported, verdict=verdict,
        headers={"depth": "3x3 layers d", "rf": "receptive field (traced)", "rf_formula": "closed form",
                 "params": "parameters", "macs": "MACs / image", "accuracy": "test accuracy"},
        fmt={"params": ",d", "macs": ",d", "accuracy": ".2%"}, notes=notes,
    )
