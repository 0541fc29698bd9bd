"""Figures without global state: matplotlib `Figure`s on the Agg canvas, saved as PNG.

No pyplot and no backend switching: a figure made here belongs to no figure manager, needs no display,
is freed when it goes out of scope, and leaves `matplotlib.get_backend()` and a notebook's inline plots
as they were. matplotlib is imported inside the functions: it is slow to import and only needed when a
figure is drawn.

Also the pictures of a run: learning curves and the confusion matrix, and the curves of several runs
overlaid (`cnnlab compare`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.core.files import atomic_write

DPI = 110  # PNG resolution: 28x28 images and 10-class matrices stay legible at a modest file size


def new_figure(figsize: tuple[float, float] | None = None, **kwargs: Any):
    """A `matplotlib.figure.Figure` with its own Agg canvas (keyword arguments as `Figure` takes them)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, **kwargs: Any):
    """`(figure, axes)` as `pyplot.subplots` returns them, on a figure of `new_figure`."""
    fig = new_figure(figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def colormap(name: str):
    """matplotlib's registered colormap `name` (e.g. "viridis")."""
    import matplotlib  # noqa: PLC0415

    return matplotlib.colormaps[name]


def figure_png(fig) -> bytes:
    """A matplotlib figure -> PNG bytes (110 dpi, tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure as PNG to `path`, atomically."""
    return atomic_write(path, figure_png(fig))


def plot_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Loss (left) and accuracy in % (right) per epoch: train, validation (what chose the weights), test per
    epoch where it was measured every epoch (dotted, marked as not used to choose), and the test figure of
    the chosen weights (a star on the record marked `"chosen"`)."""
    epochs = [h["epoch"] for h in history]
    chosen = [h for h in history if h.get("chosen") and h.get("test_accuracy") is not None]
    # with --eval-every some epochs have no held-out figures: plot those that were measured
    val = [h for h in history if h.get("val_accuracy") is not None]
    test = [h for h in history if h.get("test_accuracy") is not None]
    per_epoch_test = len(test) > len(chosen)  # a run before the selection protocol, or --eval-test-every-epoch
    fig, (ax_loss, ax_acc) = subplots(1, 2, figsize=(10, 3.8))
    for ax, key, scale in ((ax_loss, "loss", 1), (ax_acc, "accuracy", 100)):
        ax.plot(epochs, [scale * h[f"train_{key}"] for h in history], "o-", label="train")
        if val:
            ax.plot([h["epoch"] for h in val], [scale * h[f"val_{key}"] for h in val], "s-", label="validation")
        if per_epoch_test:
            label = "test (every epoch, not used to choose)" if val else "test"
            ax.plot([h["epoch"] for h in test], [scale * h[f"test_{key}"] for h in test], "^:", label=label)
        if chosen:
            what = "chosen" if val else "last"
            ax.plot([h["epoch"] for h in chosen], [scale * h[f"test_{key}"] for h in chosen], "*", ms=13,
                    color="tab:red", label=f"test, {what} weights")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) < 15:
            ax.set_xticks(epochs)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_confusion(confusion, classes: list[str], path: str | Path, title: str = "") -> None:
    """Rows: true class, columns: predicted class; cells count images, colour is the row share."""
    save_figure(confusion_figure(confusion, classes, title), path)


def confusion_figure(confusion, classes: list[str], title: str = ""):
    """The figure `plot_confusion` saves (for callers that want the PNG bytes, `figure_png`)."""
    cm = np.asarray(confusion, dtype=np.int64)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    size = max(4.0, 0.55 * k + 2)
    fig, ax = subplots(figsize=(size, size))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    return fig


def plot_curves_overlay(histories: list[list[dict[str, Any]]], labels: list[str], path: str | Path,
                        title: str = "") -> None:
    """Several runs' curves on shared axes: loss (left) and accuracy in % (right) per epoch; one colour per
    run, train dashed and held-out (val where recorded, else test) solid."""
    fig, (ax_loss, ax_acc) = subplots(1, 2, figsize=(11, 4.2))
    colours = colormap("tab10")
    for i, (history, label) in enumerate(zip(histories, labels, strict=True)):
        colour = colours(i % 10)
        held = "val" if any(h.get("val_accuracy") is not None for h in history) else "test"
        for ax, key, scale in ((ax_loss, "loss", 1), (ax_acc, "accuracy", 100)):
            for split, style in (("train", dict(linestyle="--", alpha=0.7)), (held, dict(marker="o", markersize=3))):
                # a figure a run did not record (an older or partial metrics file) is left out, not guessed
                seen = [h for h in history if all(isinstance(h.get(k), (int, float)) for k in ("epoch", f"{split}_{key}"))]
                ax.plot([h["epoch"] for h in seen], [scale * h[f"{split}_{key}"] for h in seen], color=colour,
                        label=f"{label} {split}", **style)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy (dashed: train)")
    last = max((h["epoch"] for history in histories for h in history), default=1)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if last < 15:
            ax.set_xticks(range(1, last + 1))
    ax_acc.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
