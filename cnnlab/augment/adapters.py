"""Bridges between cnnlab's batched ops and the rest of the world.

- `augment_batches`: augment any stream of (uint8 images, labels) batches (an in-memory split's
  `batches()`, or a DataLoader over an image folder after collation) with a batched pipeline.
- `PerSample`: the other way round, a torchvision transform applied image by image with the same
  call signature as a Pipeline, for users who prefer torchvision's ops (slower: a Python loop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from cnnlab.augment.ops import check_batch
from cnnlab.augment.pipeline import Pipeline, parse_pipeline
from cnnlab.errors import CnnlabError

Augment = Callable[..., Tensor]  # (x (N, C, H, W) float in [0, 1], generator) -> (N, C, H', W')


def to_unit_float(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (N, C, H, W) in [0, 255] -> `dtype` in [0, 1]; float input is returned as `dtype`."""
    if images.dtype == torch.uint8:
        return images.to(dtype).div_(255)
    if not images.is_floating_point():
        raise CnnlabError(f"images must be uint8 in [0, 255] or float in [0, 1], got {images.dtype}")
    return images.to(dtype)


def augment_batches(
    batches: Iterable[tuple[Tensor, Tensor]],
    augment: str | Pipeline | Augment,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (augmented images `dtype` (N, C, H', W') in [0, 1], labels) for each (images, labels)
    batch; images may be uint8 or float in [0, 1], on any device (the ops run there).
    Normalise afterwards (e.g. `cnnlab.data.to_float` works on uint8, so apply mean/std yourself)."""
    fn = parse_pipeline(augment) if isinstance(augment, str) else augment
    # A Pipeline converts uint8 to float32 itself, chunk by chunk (cheaper than converting first).
    convert = not (isinstance(fn, Pipeline) and dtype == torch.float32)
    for images, labels in batches:
        yield fn(to_unit_float(images, dtype) if convert else images, generator), labels


class PerSample:
    """A torchvision transform (v1 or v2, on a (C, H, W) float tensor) applied to each image of a batch
    in turn, so it can stand where a Pipeline does: `PerSample(T)(x, generator) -> (N, C, H', W')`.
    With a generator, each call seeds torch's RNG from it inside `torch.random.fork_rng`, so the result
    is reproducible and the global RNG is left untouched."""

    def __init__(self, transform: Callable[[Tensor], Tensor]):
        if not callable(transform):
            raise CnnlabError(f"PerSample needs a callable transform, got {type(transform).__name__}")
        self.transform = transform

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_batch(x)
        if generator is None:
            return torch.stack([self.transform(img) for img in x])
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return torch.stack([self.transform(img) for img in x])

    def __repr__(self) -> str:
        return f"PerSample({self.transform!r})"
