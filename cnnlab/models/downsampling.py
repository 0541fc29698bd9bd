"""How much a model downsamples, measured on the meta device, and the smallest input it suits.

Padding keeps a feature map at least 1x1 however small the input: resnet18 runs on 8x8 digits, but its
last stage steps 32 input pixels per position, so each of its "pixels" stands for a quarter of the image
and training stays near chance (10.28% measured). `downsampling_warning` says so before training, with
the input size that would work. Everything here is measured on the meta device (shapes only: nothing
is allocated or computed), by building the model at two large inputs and comparing its smallest maps.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import CnnlabError

_PROBE = (512, 1024)  # input sides whose smallest maps give the factor: linear there, far from 1x1


def _smallest_map(text: str, input_size: tuple[int, int, int], num_classes: int, options: dict | None) -> int:
    """min(H, W) over the 4-D outputs of the modules (adaptive pools left out) for one `input_size` image, on meta."""
    from cnnlab.models import resolve_model  # noqa: PLC0415 - this module is imported by the package itself

    sizes: list[int] = []

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            sizes.append(min(output.shape[-2:]))

    with torch.device("meta"):
        model, _ = resolve_model(text, input_size=input_size, num_classes=num_classes, options=options)
        # adaptive pools end at a fixed size whatever the input: they are the head, not a stage
        skip = (nn.Sequential, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
        handles = [m.register_forward_hook(hook) for m in model.modules() if not isinstance(m, skip)]
        try:
            model.eval()
            with torch.no_grad():
                model(torch.zeros(1, *input_size))
        finally:
            for h in handles:
                h.remove()
    if not sizes:
        raise CnnlabError(f"model '{text}' has no feature maps")
    return min(sizes)


def downsampling_factor(text: str, input_size: tuple[int, int, int], num_classes: int,
                        options: dict | None = None) -> int | None:
    """Input pixels per position of the model's smallest feature map (resnet18: 32), or None if unmeasurable.

    Measured as (S2 - S1) / (m(S2) - m(S1)) for two large square inputs S1 < S2, m being the smallest map.
    """
    c = input_size[0]
    try:
        small, large = (_smallest_map(text, (c, s, s), num_classes, options) for s in _PROBE)
    except (CnnlabError, RuntimeError, ValueError, TypeError, NotImplementedError):
        return None  # a model made for one input size only: nothing to measure
    if large <= small:
        return None
    return round((_PROBE[1] - _PROBE[0]) / (large - small))


def smallest_input_side(text: str, input_size: tuple[int, int, int], num_classes: int,
                        options: dict | None = None, factor: int | None = None) -> int | None:
    """The smallest square side that keeps every stage of the model at least 1x1 of real input, or None.
    `factor`: the model's `downsampling_factor`, when the caller has measured it already."""
    if factor is None:
        factor = downsampling_factor(text, input_size, num_classes, options)
    if factor is None:
        return None
    for side in range(factor, 2 * factor + 1):  # check it builds and runs there (on meta)
        try:
            if _smallest_map(text, (input_size[0], side, side), num_classes, options) >= 1:
                return side
        except (CnnlabError, RuntimeError, ValueError):
            continue
    return None


def downsampling_warning(text: str, input_size: tuple[int, int, int], num_classes: int,
                         options: dict | None = None) -> str:
    """A one-line warning when the model downsamples the `(C, H, W)` input below one pixel per position; else ""."""
    h, w = input_size[1:]
    try:  # one meta build at the real size first: a smallest map above 1x1 cannot hide a collapse
        if _smallest_map(text, tuple(input_size), num_classes, options) > 1:
            return ""
    except (CnnlabError, RuntimeError, ValueError, TypeError, NotImplementedError):
        return ""
    factor = downsampling_factor(text, input_size, num_classes, options)
    if factor is None or min(h, w) >= factor:
        return ""
    side = smallest_input_side(text, input_size, num_classes, options, factor) or factor
    return (f"model '{text}' downsamples its input {factor}x, more than the {h}x{w} images: its deepest layers see "
            f"less than one pixel of them and training may stay near chance; use --image-size {side} (the smallest "
            f"size that keeps every stage at least 1x1, measured) or a model made for small images")
