"""From the data API's uint8 batches to what the model reads, and loading datasets by name.

Per batch, on the batch's device: uint8 `(N, C, H, W)` -> float in [0, 1] -> augmentation (train only)
-> per-channel normalisation -> channels_last layout. Everything is a batched tensor op: no per-image
Python work, which is what makes an in-memory dataset fast.
"""

from __future__ import annotations

from typing import Any

import torch

from cnnlab.errors import CnnlabError


class Preprocess:
    """`prep(images_uint8, augment=None, generator=None) -> (N, C, H', W')` normalised float32."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool = True):
        c = len(mean)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32, device=device).view(1, c, 1, 1)
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor, augment=None, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.to(torch.float32).mul_(1.0 / 255.0)  # (N, C, H, W) in [0, 1]
        if augment is not None:
            x = augment(x, generator)
        x = (x - self.mean).mul_(self.inv_std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def load_data(data: Any, *, data_dir=None, image_size=None, val_fraction: float = 0.0, seed: int = 0):
    """A `cnnlab.data.Dataset` as given, or loaded by name through `cnnlab.data.load_dataset`."""
    if not isinstance(data, str):
        for attr in ("classes", "input_size", "mean", "std", "train", "test"):
            if not hasattr(data, attr):
                raise CnnlabError(f"data must be a dataset name or a cnnlab.data.Dataset; {type(data).__name__} has no '{attr}'")
        return data
    try:
        from cnnlab.data import load_dataset  # noqa: PLC0415
    except ImportError as e:
        raise CnnlabError(f"cannot load dataset '{data}': the cnnlab.data module is unavailable ({e})") from None
    return load_dataset(data, data_dir=data_dir, image_size=image_size, val_fraction=val_fraction, seed=seed)


def parse_augment(text: str | None):
    """`None` for no augmentation, else a `cnnlab.augment` pipeline (errors are the pipeline's own)."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    from cnnlab.augment import parse_pipeline  # noqa: PLC0415

    pipeline = parse_pipeline(str(text))
    return pipeline if len(pipeline) else None
