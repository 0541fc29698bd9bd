"""Pictures of what maps.py measured, as PNG bytes (headless; the caller decides where they go).

The kernel grid is drawn pixel by pixel with numpy (no resampling, so each kernel weight is a block
of `scale` x `scale` pixels and the tiles sit on a known background); the other figures use matplotlib.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from cnnlab.core.figures import figure_png, subplots

BACKGROUND = (64, 64, 64)  # dark grey: the blue-white-red colour map never produces it (one channel is 255)


def png_bytes(rgb: np.ndarray) -> bytes:
    """uint8 `(H, W, 3)` -> PNG bytes."""
    from PIL import Image  # noqa: PLC0415

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _diverging(v: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] -> RGB in [0, 1]: negative blue, zero white, positive red."""
    v = np.clip(v, -1.0, 1.0)
    neg, pos = np.clip(-v, 0, 1), np.clip(v, 0, 1)
    return np.stack([1 - neg, 1 - neg - pos, 1 - pos], axis=-1)


def kernel_grid(weight: torch.Tensor, tile: int = 48, gap: int = 4) -> np.ndarray:
    """Convolution kernels `(O, I, kh, kw)` -> uint8 RGB grid `(H, W, 3)`, one tile per output channel.

    Three input channels are shown as colour, each kernel min-max scaled to [0, 1] (the usual picture of
    AlexNet's first layer); any other count as the mean over input channels in blue-white-red, each
    kernel scaled by its own largest |weight| so that zero stays white. Tiles are `ceil(sqrt(O))` to a
    row, `gap` pixels apart on a `BACKGROUND` frame.
    """
    w = weight.detach().float().cpu().numpy()
    o, i, kh, kw = w.shape
    scale = max(1, tile // max(kh, kw))
    cols = math.ceil(math.sqrt(o))
    rows = math.ceil(o / cols)
    th, tw = kh * scale, kw * scale
    grid = np.empty((gap + rows * (th + gap), gap + cols * (tw + gap), 3), dtype=np.uint8)
    grid[:] = BACKGROUND
    for k in range(o):
        if i == 3:
            lo, hi = w[k].min(), w[k].max()
            rgb = ((w[k] - lo) / (hi - lo if hi > lo else 1.0)).transpose(1, 2, 0)  # (kh, kw, 3)
        else:
            m = w[k].mean(0)  # (kh, kw)
            rgb = _diverging(m / max(float(np.abs(m).max()), 1e-12))
        block = np.kron(rgb, np.ones((scale, scale, 1)))  # nearest-neighbour upscaling
        r, c = divmod(k, cols)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        grid[y:y + th, x:x + tw] = np.round(255 * block).astype(np.uint8)
    return grid


def _show_image(ax, image: torch.Tensor) -> None:
    """uint8 `(C, H, W)` on an axis: grey for one channel, colour for three."""
    arr = image.cpu().numpy()
    if arr.shape[0] == 1:
        ax.imshow(arr[0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(arr[:3].transpose(1, 2, 0))
    ax.set_axis_off()


def features_figure(image: torch.Tensor, maps: dict[str, torch.Tensor], per_layer: int = 12, title: str = "") -> bytes:
    """The image, then one row per layer with its `per_layer` strongest channels (by mean |activation|).

    Args:
        image: uint8 `(C, H, W)` as fed to the model (before normalisation).
        maps: `{layer: (C', H', W')}`; each channel is coloured on its own min-max scale.
    """
    cols = per_layer
    fig, axes = subplots(1 + len(maps), cols, figsize=(1.3 * cols, 1.5 * (1 + len(maps))), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    _show_image(axes[0, 0], image)
    axes[0, 0].set_title("input", fontsize=8)
    for row, (name, fmap) in enumerate(maps.items(), start=1):
        strength = fmap.abs().mean(dim=(1, 2))  # (C',)
        top = strength.argsort(descending=True)[:cols].tolist()
        for col, ch in enumerate(top):
            ax = axes[row, col]
            ax.imshow(fmap[ch].numpy(), cmap="viridis", interpolation="nearest")
            ax.set_title(f"ch {ch}", fontsize=7)
        c, h, w = fmap.shape
        axes[row, 0].text(-0.15, 0.5, f"{name}\n{c}×{h}×{w}", transform=axes[row, 0].transAxes,
                          ha="right", va="center", fontsize=8)
    fig.suptitle(title or f"feature maps: the {cols} most active channels per layer", fontsize=10)
    return figure_png(fig)


def heatmap_figure(image: torch.Tensor, heat: torch.Tensor, heat_title: str, title: str) -> bytes:
    """Three panels: the image, the heat map `(H, W)` in [0, 1], and the map over the image."""
    fig, axes = subplots(1, 3, figsize=(9, 3.3))
    _show_image(axes[0], image)
    axes[0].set_title("input", fontsize=9)
    im = axes[1].imshow(heat.cpu().numpy(), cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title(heat_title, fontsize=9)
    axes[1].set_axis_off()
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    _show_image(axes[2], image)
    axes[2].imshow(heat.cpu().numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
    axes[2].set_title("overlay", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return figure_png(fig)


def mistakes_figure(images: list[torch.Tensor], captions: list[str], title: str, cols: int = 8) -> bytes:
    """A grid of uint8 `(C, H, W)` images, each with its caption above it."""
    n = max(1, len(images))
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = subplots(rows, cols, figsize=(1.45 * cols, 1.75 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        _show_image(ax, image)
        ax.set_title(caption, fontsize=7)
    if not images:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    return figure_png(fig)
