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
from cnnlab.data import load_dataset
from cnnlab.experiments._base import ExperimentContext, Outcome, register_experiment
from cnnlab.experiments._common import fit, param_count, subsample
from cnnlab.inspect import summary

NETS = {  # name -> spec in the lecture's notation; see the module docstring for why these three
    "dense": "fc256 fc128 fc10",
    "local": "local3x3-16 maxpool2 local3x3-32 maxpool2 fc10",
    "conv": "conv3x3-16 maxpool2 conv3x3-32 maxpool2 fc10",
}
NOISE = 0.005  # accuracy differences under half a point are within seed-to-seed noise at the default size

# (train images per class, test images per class, epochs); AdamW lr 2e-3 one-cycle, batch 64 for all
DEFAULT_SIZE = (1000, 500, 5)
QUICK_SIZE = (50, 30, 1)


# ---- helpers shared by the experiments of this family ---------------------------------------------
# ---- the experiment -----------------------------------------------------------------------------
def _plot(rows: list[dict], path: Path) -> None:
    fig, ax = subplots(figsize=(6.0, 4.0))
    colours = {"dense": "tab:gray", "local": "tab:orange", "conv": "tab:blue"}
    for r in rows:
        ax.scatter(r["params"], 100 * r["accuracy"], s=120, color=colours.get(r["net"], "black"), zorder=3)
        ax.annotate(f"{r['net']}\n{r['params']:,} params", (r["params"], 100 * r["accuracy"]),
                    textcoords="offset points", xytext=(8, -4), fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="parameters (log scale)", ylabel="test accuracy (%)",
           title="Same depth, same training: dense vs locally connected vs conv")
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.35, y=0.25)
    save_figure(fig, path)


@register_experiment(
    "why-conv",
    title="Why convolutions",
    claim="Convolutions reach higher accuracy than a dense or a locally-connected network of the same depth, "
          "with far fewer parameters, through sparse connections and weight sharing.",
    order=10,
    budget="about 2 min",
)
def run(ctx: ExperimentContext) -> Outcome:
    """Train the dense, local and conv nets of `NETS` identically; parameters, MACs, accuracy, time."""
    per_class, test_per_class, epochs = QUICK_SIZE if ctx.quick else DEFAULT_SIZE
    ds = subsample(load_dataset(ctx.data or "fashion-mnist", data_dir=ctx.data_dir), per_class, test_per_class,
                   ctx.seed)
    input_size = tuple(ds.input_size)
    specs = {name: spec.replace("fc10", f"fc{ds.num_classes}") for name, spec in NETS.items()}
    ctx.progress.total = len(specs)
    rows = []
    for name, spec in specs.items():
        result = fit(spec, ds, device=ctx.device, epochs=epochs, batch_size=64, lr=2e-3, optimizer="adamw",
                     seed=ctx.seed)
        seconds = sum(h["train_seconds"] for h in result.history)  # training steps only, not evaluation
        stats = summary(spec, input_size, num_classes=ds.num_classes)  # meta device: shapes only
        rows.append({"net": name, "spec": spec, "params": param_count(result.model), "macs": stats.total_macs,
                     "accuracy": float(result.test_accuracy), "seconds": seconds})
        ctx.progress.step(name)
    _plot(rows, ctx.path("plot.png"))

    by = {r["net"]: r for r in rows}
    conv, local, dense = by["conv"], by["local"], by["dense"]
    best_other = max(local["accuracy"], dense["accuracy"])
    more_accurate = conv["accuracy"] >= best_other - NOISE
    fewer_params = conv["params"] * 5 <= min(local["params"], dense["params"])
    supported = more_accurate and fewer_params
    verdict = (
        f"The conv net reaches {conv['accuracy']:.1%} with {conv['params']:,} parameters; the locally-connected net "
        f"{local['accuracy']:.1%} with {local['params']:,} ({local['params'] / conv['params']:.0f}x) and the dense "
        f"net {dense['accuracy']:.1%} with {dense['params']:,} ({dense['params'] / conv['params']:.0f}x)."
    )
    if not more_accurate:
        verdict += f" The conv net is not the most accurate here ({conv['accuracy'] - best_other:+.1%} vs the best)."
    c_in, c_out = input_size[0], 16
    h, w = input_size[1:]
    notes = [
        f"Lecture arithmetic: one 3x3 kernel on a 3-channel image has 3x3x3 = 27 weights; a locally connected "
        f"layer has a separate kernel at every output position, 27 x 32 x 32 = 27,648 weights per output channel "
        f"on a 32x32 image. Here the first layer has {9 * c_in * c_out:,} shared conv weights vs "
        f"{9 * c_in * c_out * h * w:,} local ones ({h}x{w} positions).",
        f"Data: {per_class} train and {test_per_class} test images per class of {ds.name} "
        f"({len(ds.train):,} / {len(ds.test):,}); {epochs} epochs, AdamW lr 2e-3 one-cycle, batch 64, seed {ctx.seed}.",
        "MACs per image from `cnnlab.inspect.summary`; a locally-connected layer has as many MACs as the conv "
        "but runs slower (no optimised kernel). Train time: the training steps of all epochs (no evaluation); on a loaded machine it varies.",
        *(f"{r['net']}: `{r['spec']}`" for r in rows),
    ]
    return Outcome(
        columns=["net", "params", "macs", "accuracy", "seconds"], rows=rows, supported=supported, verdict=verdict,
        headers={"params": "parameters", "macs": "MACs / image", "accuracy": "test accuracy",
                 "seconds": "train time (s)"},
        fmt={"params": ",d", "macs": ",d", "accuracy": ".2%", "seconds": ".1f"}, notes=notes,
    )
