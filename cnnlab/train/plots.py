"""The two pictures of a run: learning curves and the confusion matrix (matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from cnnlab.train.checkpoint import atomic_write


def pyplot():
    """matplotlib.pyplot on the headless Agg backend: the project's one matplotlib set-up."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def figure_png(fig) -> bytes:
    """A matplotlib figure -> PNG bytes (110 dpi, tight); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure as PNG to `path`, atomically, and close it."""
    return atomic_write(path, figure_png(fig))


def plot_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Loss (left) and accuracy in % (right) per epoch, train and test (or val)."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    held = "val" if any(h.get("val_accuracy") is not None for h in history) else "test"
    # with --eval-every some epochs have no held-out figures: plot those that were measured
    seen = [h for h in history if h.get(f"{held}_accuracy") is not None]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot([h["epoch"] for h in seen], [h[f"{held}_loss"] for h in seen], "s-", label=held)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot([h["epoch"] for h in seen], [100 * h[f"{held}_accuracy"] for h in seen], "s-", label=held)
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
    import numpy as np  # noqa: PLC0415

    plt = pyplot()
    cm = np.asarray(confusion, dtype=np.int64)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    size = max(4.0, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    save_figure(fig, path)
