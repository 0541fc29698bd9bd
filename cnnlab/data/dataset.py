"""`Dataset`: what `load_dataset` returns — splits, class names, image size and normalisation statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.data.memory import MemorySplit, Split, channel_stats, stratified_holdout
from cnnlab.errors import CnnlabError


@dataclass
class Dataset:
    """A loaded dataset. Images are served as uint8 (N, C, H, W); `mean`/`std` are per channel in [0, 1]
    units, computed from `train` (after the validation images were taken out)."""

    name: str
    classes: list[str]  # class names, index = label
    input_size: tuple[int, int, int]  # (C, H, W) of the images served
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # where it was found, e.g. "/usr/share/datasets/fashion-mnist", "embedded (scikit-learn)"
    train: Split
    test: Split
    val: Split | None = None  # only with val_fraction > 0 (seeded, stratified split of train)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # unreadable files left out (imagefolder)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        c, h, w = self.input_size
        sizes = f"train={len(self.train)}" + (f", val={len(self.val)}" if self.val is not None else "")
        return (f"Dataset({self.name!r}, {len(self.classes)} classes, {c}x{h}x{w}, {sizes}, "
                f"test={len(self.test)}, source={self.source!r})")


def check_val_fraction(val_fraction: float) -> None:
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise CnnlabError(f"val_fraction must be in [0, 1), got {val_fraction!r} (e.g. 0.1 holds out 10% of train)")


def check_image_size(image_size: int | None) -> None:
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1):
        raise CnnlabError(f"image_size must be a positive integer (pixels), got {image_size!r}")


# Resized images are held in memory: a bound on their bytes, stated in the error that refuses more.
MAX_RESIZED_BYTES = 8 << 30


def check_resized_bytes(count: int, channels: int, size: int) -> None:
    """Refuse, before allocating, `count` images resized to `channels x size x size` uint8 above MAX_RESIZED_BYTES."""
    need = count * channels * size * size
    if need > MAX_RESIZED_BYTES:
        fits = int((MAX_RESIZED_BYTES / max(count * channels, 1)) ** 0.5)
        raise CnnlabError(f"image_size {size} would hold {need / 2**30:,.1f} GiB of images ({count:,} x {channels}x{size}x{size}) "
                          f"in memory, more than the limit of {MAX_RESIZED_BYTES >> 30} GiB; use image_size {fits} or less")


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 images (N, C, H, W) so the shorter side is `size`, then centre-crop to size x size.

    Bilinear with antialiasing (like Pillow's resize), rounded back to uint8; done in chunks to bound memory.
    """
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    check_resized_bytes(n, c, size)
    chunk = max(1, min(chunk, (256 << 20) // (4 * c * nh * nw)))  # at most ~256 MB of fp32 per interpolation
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    for start in range(0, n, chunk):
        x = images[start:start + chunk].float()
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = x[:, :, top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8)
    return out


def in_memory_dataset(
    name: str,
    classes: list[str],
    source: str,
    train: tuple,
    test: tuple,
    *,
    image_size: int | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """Build a Dataset from arrays: train/test are (images uint8 (N, C, H, W), labels int64 (N,))."""
    check_val_fraction(val_fraction)
    check_image_size(image_size)
    if image_size is not None:  # both splits, before either is resized
        check_resized_bytes(len(train[0]) + len(test[0]), int(torch.as_tensor(train[0][:1]).shape[1]), image_size)
    splits = []
    for images, labels in (train, test):
        images = torch.as_tensor(images)
        if image_size is not None:
            images = resize_uint8(images, image_size)
        splits.append(MemorySplit(images, labels))
    train_split, test_split = splits
    val_split = None
    if val_fraction > 0:
        keep, hold = stratified_holdout(train_split.labels, val_fraction, seed)
        train_split, val_split = train_split.subset(keep), train_split.subset(hold)
    mean, std = channel_stats(train_split.images)
    return Dataset(
        name=name,
        classes=list(classes),
        input_size=tuple(train_split.images.shape[1:]),
        mean=mean,
        std=std,
        source=source,
        train=train_split,
        test=test_split,
        val=val_split,
    )
