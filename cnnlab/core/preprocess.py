"""From the data API's uint8 images to what a model reads: the one place that scales and normalises.

Per batch, on the batch's device: uint8 `(N, C, H, W)` -> float32 in [0, 1] -> augmentation (training
only) -> per-channel normalisation `(x - mean) / std` -> channels_last layout. Every step is a batched
tensor op: no per-image Python work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cnnlab.errors import CnnlabError


def to_unit(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 `(N, C, H, W)` in 0..255 -> a new float tensor in [0, 1] (the input is never changed)."""
    return images.to(dtype, copy=True).mul_(1.0 / 255.0)


class Preprocess:
    """`prep(images_uint8, augment=None, generator=None) -> (N, C, H', W')` normalised float (`dtype`, float32).

    `mean` and `std` are per channel, in [0, 1] units (`Dataset.mean`, `ModelCard.mean`). `normalise(x)`
    applies only the normalisation, to floats already in [0, 1] (e.g. an augmentation's output).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu",
                 channels_last: bool = True, dtype: torch.dtype = torch.float32):
        c = len(mean)
        if len(std) != c:
            raise CnnlabError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        self.mean = torch.tensor(mean, dtype=dtype, device=device).view(1, c, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=dtype, device=device).view(1, c, 1, 1)
        self.channels_last = channels_last
        self.dtype = dtype

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Float `(N, C, H, W)` in [0, 1] -> `(x - mean) / std` (a new tensor), laid out as configured."""
        c = self.mean.shape[1]
        if x.dim() != 4 or x.shape[1] != c:
            need = x.shape[1] if x.dim() == 4 else "C"
            raise CnnlabError(f"images of shape {tuple(x.shape)} (N, C, H, W) need {need} values of mean/std, "
                              f"got {c}")
        x = (x - self.mean).mul_(self.inv_std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __call__(self, images: torch.Tensor, augment=None, generator: torch.Generator | None = None) -> torch.Tensor:
        x = to_unit(images, self.dtype)  # (N, C, H, W) in [0, 1]
        if augment is not None:
            x = augment(x, generator)
        return self.normalise(x)
