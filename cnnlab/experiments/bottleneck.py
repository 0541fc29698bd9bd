"""The 1x1 bottleneck: a 256->256 3x3 convolution against 1x1 -> 3x3 -> 1x1 (256->64->64->256).

Both sit as the residual branch of one block inside the same small ResNet, so everything else (stem,
head, recipe, data, seed) is shared. Without biases the plain 3x3 layer has 256*256*9 = 589,824
weights; the bottleneck 256*64 + 64*64*9 + 64*256 = 16,384 + 36,864 + 16,384 = 69,632, 8.5x fewer
(the lecture's numbers, from He et al. 2016, figure 5). The claim: that cut costs little accuracy.

The network (`BottleneckNet`): a cheap stem to 256 channels at 1/4 resolution (28x28 -> 7x7) keeps
the block's 256-channel map small, then one residual block, global average pooling and a classifier:

    conv3x3-32/bn maxpool2 conv3x3-64/bn maxpool2 conv1x1-256/bn | block | gap fc<classes>
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.core.figures import save_figure, subplots
from cnnlab.core.stats import as_supported, check, combine, exact
from cnnlab.data import load_dataset
from cnnlab.errors import CnnlabError
from cnnlab.experiments._base import ExperimentContext, Outcome, register_experiment
from cnnlab.experiments._common import VAL_FRACTION, fit_selected, plural, seeds_note, spread, subsample
from cnnlab.inspect import summary
from cnnlab.models._base import ConvNet

WIDTH, MID = 256, 64  # the lecture's block: 256 channels in and out, 64 inside the bottleneck
PUBLISHED = {"plain": 589_824, "bottleneck": 69_632}  # weights of the block's convolutions, no biases
# Images per class trained on (VAL_FRACTION held out for selection) and tested once (None: all of them).
# The default (3 seeds) takes ~2 CPU-minutes (AVX2 class), two thirds of it the plain net (its block alone
# costs 28.9 M MACs per image).
SIZES: dict[str, dict[str, Any]] = {
    "quick": {"train": 40, "test": 50, "epochs": 1},
    "default": {"train": 400, "test": 500, "epochs": 3},
    "large": {"train": None, "test": None, "epochs": 2},
}
RECIPE: dict[str, Any] = {"optimizer": "adamw", "lr": 2e-3, "schedule": "onecycle", "batch_size": 128}
MAX_DROP = 0.01  # "little cost": at most 1 percentage point of test accuracy lost


def _conv_bn(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    # bias-free: the batch norm that follows has its own shift, so a conv bias would be redundant
    return [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out)]


class PlainBlock(nn.Module):
    """`relu(x + bn(conv3x3(x)))`: one 256->256 3x3 convolution as the residual branch. `(N, C, H, W)` -> same."""

    def __init__(self, channels: int = WIDTH):
        super().__init__()
        self.conv, self.bn = _conv_bn(channels, channels, 3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.bn(self.conv(x))
        return self.act(out + identity)


class BottleneckBlock(nn.Module):
    """He et al.'s bottleneck: 1x1 reduce -> 3x3 -> 1x1 expand, plus the identity. `(N, C, H, W)` -> same."""

    expansion = 4  # channels out / channels inside, as torchvision's Bottleneck

    def __init__(self, channels: int = WIDTH, mid: int = MID):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(channels, mid, 1)  # (N, 64, H, W)
        self.conv2, self.bn2 = _conv_bn(mid, mid, 3)  # (N, 64, H, W)
        self.conv3, self.bn3 = _conv_bn(mid, channels, 1)  # (N, 256, H, W)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + identity)


class BottleneckNet(ConvNet):
    """The small ResNet of this experiment. `(N, C, H, W)` -> `(N, num_classes)` logits.

    Args:
        block: "plain" (a 256->256 3x3 convolution) or "bottleneck" (256->64->64->256).
        num_classes: outputs of the classifier.
        in_channels: channels of the input images.
    """

    def __init__(self, block: str = "bottleneck", num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        if block not in PUBLISHED:
            raise CnnlabError(f"block must be one of {', '.join(PUBLISHED)}, got {block!r}")
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            *_conv_bn(in_channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, H/2, W/2)
            *_conv_bn(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),  # (N, 64, H/4, W/4)
            *_conv_bn(64, WIDTH, 1), nn.ReLU(),  # (N, 256, H/4, W/4)
        )
        self.block = PlainBlock() if block == "plain" else BottleneckBlock()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(WIDTH, num_classes)
        self.feature_info = [{"name": "stem", "channels": WIDTH, "stride": 4},
                             {"name": "block", "channels": WIDTH, "stride": 4}]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))  # (N, 256, H/4, W/4)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)  # (N, 256)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(WIDTH, num_classes)
        self.num_classes = num_classes


def block_conv_params(model: BottleneckNet) -> int:
    """Weights of the convolutions inside the compared block (batch norms not counted)."""
    return sum(m.weight.numel() for m in model.block.modules() if isinstance(m, nn.Conv2d))


def _costs(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, int]:
    s = summary(model, input_size)
    block = [r for r in s.layers if r.name.startswith("block.")]
    return {"params": s.total_params, "macs": s.total_macs, "block_macs": sum(r.macs for r in block)}


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    names = [r["block"] for r in rows]
    panels = [("block_params", "parameters of the block's convs", 1.0),
              ("block_macs", "MACs of the block per image (millions)", 1e-6),
              ("accuracy", "test accuracy (%): mean, 95% interval, seeds", 100.0)]
    fig, axes = subplots(1, 3, figsize=(11, 3.4))
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        if key == "accuracy":
            values = [scale * r[key]["mean"] for r in rows]
            lo = [scale * (r[key]["low"] if r[key]["low"] is not None else r[key]["mean"]) for r in rows]
            hi = [scale * (r[key]["high"] if r[key]["high"] is not None else r[key]["mean"]) for r in rows]
        else:
            values = [scale * r[key] for r in rows]
        bars = ax.bar(names, values, color=["tab:gray", "tab:blue"], alpha=0.7 if key == "accuracy" else 1.0)
        ax.bar_label(bars, [f"{v:,.0f}" if key == "block_params" else f"{v:.2f}" for v in values], fontsize=8)
        if key == "accuracy":
            ax.errorbar(names, values, yerr=[[v - x for v, x in zip(values, lo, strict=True)],
                                             [x - v for v, x in zip(values, hi, strict=True)]],
                        fmt="none", color="k", capsize=4)
            for i, r in enumerate(rows):
                ax.scatter([i] * len(r["per_seed"]), [scale * v for v in r["per_seed"]], s=10, color="k", zorder=3)
            ax.set_ylim(min(lo) - 5, 100)
        ax.set(title=label)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, y=1.03)
    save_figure(fig, path)


@register_experiment(
    "bottleneck", order=50, title="The 1x1 bottleneck",
    claim="A 1x1 bottleneck (256->64->64->256) cuts the parameters of a 256->256 3x3 layer about 10x "
          "(589,824 -> 69,632, 8.5x) at little cost in accuracy.",
    budget="about 2.5 min")
def run(ctx: ExperimentContext) -> Outcome:
    """Train the same small ResNet with a plain 3x3 block and with a bottleneck block, once per seed."""
    size = SIZES[ctx.size]
    full = load_dataset(ctx.data, data_dir=ctx.data_dir)
    c, h, w = full.input_size
    if min(h, w) < 4:
        raise CnnlabError(f"the bottleneck experiment needs images of at least 4x4 (two 2x2 pools), got {h}x{w}")
    k = len(full.classes)
    ctx.progress.total = len(PUBLISHED) * len(ctx.seeds)
    acc: dict[str, list[float]] = {kind: [] for kind in PUBLISHED}
    val: dict[str, list[float]] = {kind: [] for kind in PUBLISHED}
    secs: dict[str, list[float]] = {kind: [] for kind in PUBLISHED}
    costs: dict[str, dict[str, int]] = {}
    for seed in ctx.seeds:
        ds = subsample(full, size["train"], size["test"], seed)
        for kind in PUBLISHED:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # the stem and head start from the same weights in both nets
                model = BottleneckNet(kind, num_classes=k, in_channels=c)
            count = block_conv_params(model)
            if count != PUBLISHED[kind]:  # the whole point of the table: refuse to report a wrong count
                raise RuntimeError(f"{kind} block has {count:,} conv weights, the lecture says {PUBLISHED[kind]:,}")
            if kind not in costs:
                with torch.device("meta"):
                    costs[kind] = _costs(BottleneckNet(kind, num_classes=k, in_channels=c), ds.input_size)
                costs[kind]["block_params"] = count
            run_ = fit_selected(model, ds, val_fraction=VAL_FRACTION, seed=seed, device=ctx.device,
                                epochs=size["epochs"], **RECIPE)
            acc[kind].append(run_.test_accuracy)
            val[kind].append(run_.val_accuracy)
            secs[kind].append(run_.train_seconds)
            ctx.progress.step(f"{kind} seed {seed}")
    rows: list[dict[str, Any]] = []
    for kind in PUBLISHED:
        cost = costs[kind]
        rows.append({"block": kind, "block_params": cost["block_params"], "block_macs": cost["block_macs"],
                     "params": cost["params"], "macs": cost["macs"], "val": spread(val[kind]),
                     "accuracy": spread(acc[kind]), "per_seed": acc[kind], "train_s": spread(secs[kind])})

    plain, bottle = rows
    ratio = plain["block_params"] / bottle["block_params"]
    checks = [exact("the bottleneck block has >= 8x fewer weights", ratio >= 8, f"{ratio:.2f}x"),
              check(f"bottleneck - plain > -{100 * MAX_DROP:.0f} point (little cost)", acc["bottleneck"], acc["plain"],
                    threshold=-MAX_DROP)]
    outcome = combine(checks)
    drop = plain["accuracy"]["mean"] - bottle["accuracy"]["mean"]
    verdict = (f"The bottleneck has {bottle['block_params']:,} weights where the 3x3 layer has "
               f"{plain['block_params']:,} ({ratio:.2f}x fewer; {plain['block_macs'] / bottle['block_macs']:.2f}x "
               f"fewer MACs in the block, {plain['macs'] / bottle['macs']:.2f}x in the whole net), and reached "
               f"{100 * bottle['accuracy']['mean']:.2f}% mean test accuracy against "
               f"{100 * plain['accuracy']['mean']:.2f}% ({-100 * drop:+.2f} points).")

    n_train, n_test = len(ds.train), len(ds.test)
    _plot(rows, ctx.path("plot.png"), f"{ds.name}: {n_train:,} train images, {plural(size['epochs'], 'epoch')}")
    notes = [
        "Net: conv3x3-32/bn maxpool2 conv3x3-64/bn maxpool2 conv1x1-256/bn, then the block as the residual "
        "branch (out = relu(x + branch(x))), global average pooling and fc; every conv bias-free with batch norm.",
        f"Block parameters count the convolutions' weights only (checked against the published {PUBLISHED['plain']:,} "
        f"and {PUBLISHED['bottleneck']:,}); the whole-net count includes the stem, batch norms and classifier.",
        f"Data: {ds.name}, a stratified seeded subset of {n_train:,} training images ({100 * VAL_FRACTION:.0f}% held "
        f"out as the validation split that picks each run's epoch), {n_test:,} test images evaluated once on the "
        f"chosen weights; {plural(size['epochs'], 'epoch')}, {RECIPE['optimizer']} lr {RECIPE['lr']:g}, "
        f"{RECIPE['schedule']} schedule, batch {RECIPE['batch_size']}. 'Little cost' means a drop of at most "
        f"{100 * MAX_DROP:.0f} percentage point: supported when the whole 95% interval of the paired difference "
        "lies above -1 point (a non-inferiority test).",
        seeds_note(ctx.seeds),
        "Training time: wall seconds of the training steps on a machine that may be shared; compare the rows.",
    ]
    return Outcome(
        columns=["block", "block_params", "block_macs", "params", "macs", "val", "accuracy", "train_s"], rows=rows,
        supported=as_supported(outcome), verdict=verdict, checks=checks,
        headers={"block_params": "block parameters", "block_macs": "block MACs / image", "params": "net parameters",
                 "macs": "net MACs / image", "val": "validation accuracy", "accuracy": "test accuracy",
                 "train_s": "training (s)"},
        fmt={"block_params": ",d", "block_macs": ",d", "params": ",d", "macs": ",d", "val": ".2%", "accuracy": ".2%",
             "train_s": ".1f"},
        notes=notes,
    )
