"""Why convolutions: a dense net, a locally-connected net and a convolutional net, trained the same way.

The lecture's argument in three steps. A dense layer connects every pixel to every unit. A locally
connected layer keeps only a k x k window per output position (sparsity) but a separate kernel at every
position. A convolution adds weight sharing: one kernel slides over every position. The local and the
conv net here are the same architecture (two 3x3 layers with pooling, then the classifier), so they have
the same depth and receptive field and differ only in sharing; the dense net has the same depth (two
hidden layers and the classifier) and sees the whole image in its first layer.

This module also holds the small helpers the other experiments of this family share (`subsample`,
`fit`, from `_common`): they train through `cnnlab.training`'s `Trainer` in memory, writing no files.
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.core.figures import save_figure, subplots
from cnnlab.core.stats import as_supported, check, combine, exact
from cnnlab.data import load_dataset
from cnnlab.experiments._base import ExperimentContext, Outcome, register_experiment
from cnnlab.experiments._common import VAL_FRACTION, fit_selected, param_count, seeds_note, spread, subsample
from cnnlab.inspect import summary

NETS = {  # name -> spec in the lecture's notation; see the module docstring for why these three
    "dense": "fc256 fc128 fc10",
    "local": "local3x3-16 maxpool2 local3x3-32 maxpool2 fc10",
    "conv": "conv3x3-16 maxpool2 conv3x3-32 maxpool2 fc10",
}
FEWER = 5  # "far fewer parameters": at least 5x fewer than either other net

# (train images per class, of which VAL_FRACTION is held out for selection; test images per class; epochs)
# AdamW lr 2e-3 one-cycle, batch 64 for all. The default (3 seeds) takes ~45 CPU-seconds (AVX2 class).
SIZES = {"quick": (50, 30, 1), "default": (200, 500, 6), "large": (1000, 1000, 8)}
DEFAULT_SIZE, QUICK_SIZE = SIZES["default"], SIZES["quick"]


def _plot(rows: list[dict], per_seed: dict[str, list[float]], path: Path) -> None:
    fig, ax = subplots(figsize=(6.0, 4.0))
    colours = {"dense": "tab:gray", "local": "tab:orange", "conv": "tab:blue"}
    for r in rows:
        acc = r["accuracy"]
        err = [[100 * (acc["mean"] - (acc["low"] if acc["low"] is not None else acc["mean"]))],
               [100 * ((acc["high"] if acc["high"] is not None else acc["mean"]) - acc["mean"])]]
        colour = colours.get(r["net"], "black")
        ax.errorbar([r["params"]], [100 * acc["mean"]], yerr=err, fmt="o", ms=10, color=colour, capsize=4, zorder=3)
        ax.scatter([r["params"]] * len(per_seed[r["net"]]), [100 * v for v in per_seed[r["net"]]], s=14,
                   color=colour, alpha=0.5, zorder=4)
        ax.annotate(f"{r['net']}\n{r['params']:,} params", (r["params"], 100 * acc["mean"]),
                    textcoords="offset points", xytext=(10, -4), fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="parameters (log scale)", ylabel="test accuracy (%)",
           title="Same depth, same training: dense vs locally connected vs conv\n(mean, 95% interval, one dot per seed)")
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.35, y=0.25)
    save_figure(fig, path)


@register_experiment(
    "why-conv",
    title="Why convolutions",
    claim="Convolutions reach higher accuracy than a dense or a locally-connected network of the same depth, "
          "with far fewer parameters, through sparse connections and weight sharing.",
    order=10,
    budget="about 1 min",
)
def run(ctx: ExperimentContext) -> Outcome:
    """Train the dense, local and conv nets of `NETS` identically, once per seed; parameters, MACs, accuracy."""
    per_class, test_per_class, epochs = SIZES[ctx.size]
    full = load_dataset(ctx.data or "fashion-mnist", data_dir=ctx.data_dir)
    specs = {name: spec.replace("fc10", f"fc{full.num_classes}") for name, spec in NETS.items()}
    ctx.progress.total = len(specs) * len(ctx.seeds)
    acc: dict[str, list[float]] = {n: [] for n in specs}
    val: dict[str, list[float]] = {n: [] for n in specs}
    secs: dict[str, list[float]] = {n: [] for n in specs}
    params: dict[str, int] = {}
    for seed in ctx.seeds:
        ds = subsample(full, per_class, test_per_class, seed)
        for name, spec in specs.items():
            run_ = fit_selected(spec, ds, val_fraction=VAL_FRACTION, seed=seed, device=ctx.device, epochs=epochs,
                                batch_size=64, lr=2e-3, optimizer="adamw")
            acc[name].append(run_.test_accuracy)
            val[name].append(run_.val_accuracy)
            secs[name].append(run_.train_seconds)
            params[name] = param_count(run_.result.model)
            ctx.progress.step(f"{name} seed {seed}")
    input_size = tuple(ds.input_size)
    rows = []
    for name, spec in specs.items():
        stats = summary(spec, input_size, num_classes=ds.num_classes)  # meta device: shapes only
        rows.append({"net": name, "spec": spec, "params": params[name], "macs": stats.total_macs,
                     "val": spread(val[name]), "accuracy": spread(acc[name]), "seconds": spread(secs[name])})
    _plot(rows, acc, ctx.path("plot.png"))

    by = {r["net"]: r for r in rows}
    conv, local, dense = by["conv"], by["local"], by["dense"]
    checks = [check("conv - dense > 0 (test accuracy)", acc["conv"], acc["dense"]),
              check("conv - local > 0 (test accuracy)", acc["conv"], acc["local"]),
              exact(f"conv has >= {FEWER}x fewer parameters than dense and local",
                    conv["params"] * FEWER <= min(local["params"], dense["params"]),
                    f"{dense['params'] / conv['params']:.0f}x and {local['params'] / conv['params']:.0f}x")]
    outcome = combine(checks)
    m = {n: r["accuracy"]["mean"] for n, r in by.items()}
    verdict = (
        f"Mean test accuracy over {len(ctx.seeds)} seed{'s' if len(ctx.seeds) > 1 else ''}: conv {m['conv']:.1%} with "
        f"{conv['params']:,} parameters, locally-connected {m['local']:.1%} with {local['params']:,} "
        f"({local['params'] / conv['params']:.0f}x), dense {m['dense']:.1%} with {dense['params']:,} "
        f"({dense['params'] / conv['params']:.0f}x)."
    )
    c_in, c_out = input_size[0], 16
    h, w = input_size[1:]
    notes = [
        f"Lecture arithmetic: one 3x3 kernel on a 3-channel image has 3x3x3 = 27 weights; a locally connected "
        f"layer has a separate kernel at every output position, 27 x 32 x 32 = 27,648 weights per output channel "
        f"on a 32x32 image. Here the first layer has {9 * c_in * c_out:,} shared conv weights vs "
        f"{9 * c_in * c_out * h * w:,} local ones ({h}x{w} positions).",
        f"Data: {per_class} train images per class of {ds.name} ({len(ds.train):,}), {100 * VAL_FRACTION:.0f}% of "
        f"them held out (stratified) as the validation split that picks each run's epoch; {test_per_class} test "
        f"images per class ({len(ds.test):,}), evaluated once on the chosen weights. {epochs} epochs, AdamW lr 2e-3 "
        "one-cycle, batch 64.",
        seeds_note(ctx.seeds),
        "MACs per image from `cnnlab.inspect.summary`; a locally-connected layer has as many MACs as the conv "
        "but runs slower (no optimised kernel). Train time: the training steps of all epochs (no evaluation); "
        "on a loaded machine it varies.",
        *(f"{r['net']}: `{r['spec']}`" for r in rows),
    ]
    return Outcome(
        columns=["net", "params", "macs", "val", "accuracy", "seconds"], rows=rows, supported=as_supported(outcome),
        verdict=verdict, checks=checks,
        headers={"params": "parameters", "macs": "MACs / image", "val": "validation accuracy",
                 "accuracy": "test accuracy", "seconds": "train time (s)"},
        fmt={"params": ",d", "macs": ",d", "val": ".2%", "accuracy": ".2%", "seconds": ".1f"}, notes=notes,
    )
