"""`--whiten`: the first convolution becomes a fixed patch-whitening layer, fitted on training images.

airbench (Keller Jordan, 2024) starts its CIFAR-10 speed runs this way: the first layer's filters are the
eigenvectors of the covariance of the k x k input patches, each scaled by 1 / sqrt(eigenvalue + eps), and
stacked with their negatives, so that after the ReLU the pair keeps both signs (relu(z) - relu(-z) = z).
Every direction of patch space then reaches the next layer with unit variance, the conditioning a
network otherwise spends its first steps learning; the filters stay frozen (only their bias trains).

`whiten_first_conv(model, split, prep)` does it in place:
- the model's first layer must be a convolution that reads the image (checked with one forward pass),
  with groups 1 and at most 2 * C * k * k filters (each direction and its negative; a narrower layer keeps
  the directions of largest variance);
- the covariance comes from up to `max_images` images of `split` (the training split the run trains on:
  never validation or test), normalised as the model will see them, without augmentation, every valid
  (unpadded) patch at stride 1, or a coarser stride on large images;
- the weight is set and frozen (`requires_grad=False`); a bias, if any, is zeroed and trains.

The model is otherwise unchanged: `print(model)` shows the same convolution, and a saved run loads
without knowing that it was whitened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError

EPS = 5e-4  # added to each eigenvalue before the square root (airbench's value on unit-variance inputs)
MAX_IMAGES = 5000  # images the covariance is estimated from
PATCHES_PER_IMAGE = 1024  # on large images, a strided grid keeps about this many patches per image
CHUNK_FLOATS = 1 << 24  # unfolded floats held at once (64 MB)


@dataclass(frozen=True)
class Whitening:
    """What `whiten_first_conv` did: the layer's name, patch dimension, images and patches used, eigenvalues."""

    layer: str
    dims: int
    filters: int
    images: int
    patches: int
    eigenvalues: torch.Tensor  # descending, all `dims` of them

    def describe(self) -> str:
        ev = self.eigenvalues
        return (f"whitened {self.layer}: {self.filters} frozen filters (± the top {math.ceil(self.filters / 2)} of "
                f"{self.dims} patch directions) from {self.patches:,} patches of {self.images:,} training images; "
                f"eigenvalues {ev[0]:.3g} .. {ev[-1]:.3g}")


def first_conv(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[str, nn.Conv2d]:
    """The model's first layer, which must be a Conv2d reading the image itself (checked by a forward pass)."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise CnnlabError("--whiten needs a model whose first layer is a convolution; this one has none")
    name, conv = convs[0]
    seen: list[torch.Tensor] = []
    hook = conv.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.randn(1, *input_size, device=conv.weight.device)
    was = model.training
    try:
        model.eval()  # no batch-norm statistics change
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
        model.train(was)
    if not seen or not torch.equal(seen[0], x):
        raise CnnlabError(f"--whiten: the model's first convolution ('{name}') does not read the image directly "
                          f"(something runs before it); whitening needs a convolution as the first layer")
    if conv.groups != 1:
        raise CnnlabError(f"--whiten: the first convolution ('{name}') is grouped ({conv.groups} groups); it needs groups=1")
    return name, conv


def patch_covariance(split, prep, kernel: tuple[int, int], dilation: tuple[int, int], *, max_images: int = MAX_IMAGES,
                     seed: int = 0) -> tuple[torch.Tensor, int, int]:
    """(D x D uncentred covariance of the k x k patches, images used, patches used), in float64."""
    n_images = min(max_images, len(split))
    cov, patches, images = None, 0, 0
    stride = step = dims = 0  # set from the first batch: every image of a split has the same size
    for raw, _ in split.batches(min(256, n_images), shuffle=True, seed=seed):
        raw = raw[: n_images - images]
        x = prep(raw).float().contiguous()
        if not stride:
            c, h, w = x.shape[1:]
            span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
            if h < span[0] or w < span[1]:
                raise CnnlabError(f"--whiten: images of {h}x{w} pixels are smaller than the first convolution's "
                                  f"{span[0]}x{span[1]} receptive field")
            positions = (h - span[0] + 1) * (w - span[1] + 1)
            stride = max(1, round(math.sqrt(positions / PATCHES_PER_IMAGE)))
            dims = c * kernel[0] * kernel[1]
            step = max(1, CHUNK_FLOATS // (dims * math.ceil(h / stride) * math.ceil(w / stride)))  # images per chunk
        for i in range(0, len(x), step):
            cols = F.unfold(x[i: i + step], kernel, dilation=dilation, stride=stride)  # (n, D, L)
            flat = cols.transpose(1, 2).reshape(-1, dims).double()
            part = flat.T @ flat
            cov = part if cov is None else cov + part
            patches += len(flat)
        images += len(raw)
        if images >= n_images:
            break
    if cov is None or patches == 0:
        raise CnnlabError("--whiten: the training split has no images to estimate the patch covariance from")
    return cov / patches, images, patches


def whiten_first_conv(model: nn.Module, split, prep, input_size: tuple[int, int, int], *, eps: float = EPS,
                      max_images: int = MAX_IMAGES, seed: int = 0) -> Whitening:
    """Set the first convolution's filters to ± the scaled eigenvectors of the patch covariance; freeze them."""
    name, conv = first_conv(model, input_size)
    kernel, dilation = tuple(conv.kernel_size), tuple(conv.dilation)
    dims = conv.in_channels * kernel[0] * kernel[1]
    if conv.out_channels > 2 * dims:
        raise CnnlabError(
            f"--whiten: the first convolution ('{name}') has {conv.out_channels} filters, but {conv.in_channels}-channel "
            f"{kernel[0]}x{kernel[1]} patches have {dims} directions, so at most {2 * dims} (each and its negative); "
            f"start the model with a convolution of at most {2 * dims} filters (a spec: conv{kernel[0]}x{kernel[1]}-{2 * dims} "
            f"first), or drop --whiten")
    cov, images, patches = patch_covariance(split, prep, kernel, dilation, max_images=max_images, seed=seed)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    values, vectors = values.flip(0).clamp_min(0.0), vectors.flip(1)  # descending; round-off can dip below 0
    keep = math.ceil(conv.out_channels / 2)
    scaled = (vectors[:, :keep] / torch.sqrt(values[:keep] + eps)).T  # (keep, D)
    filters = torch.cat([scaled, -scaled])[: conv.out_channels]
    with torch.no_grad():
        conv.weight.copy_(filters.reshape(conv.weight.shape).to(conv.weight.dtype))
        if conv.bias is not None:
            conv.bias.zero_()
    conv.weight.requires_grad_(False)
    return Whitening(name, dims, conv.out_channels, images, patches, values.float())
