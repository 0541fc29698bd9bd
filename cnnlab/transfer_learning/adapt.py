"""Input adaptation: target images -> what the backbone was trained on, done explicitly and reported.

Grayscale into an RGB backbone: the gray channel is repeated three times (the image a colour camera
would record of a gray scene). RGB into a grayscale backbone: ITU-R BT.601 luma. Another size: bilinear
resize with antialiasing to the backbone's input size (bicubic where the backbone's pretrained config
asks for it, as timm's do). Then the backbone's own normalisation (the
statistics it was trained with), or the target data's when the backbone's are unknown.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.core.preprocess import Preprocess, to_unit
from cnnlab.errors import CnnlabError

_LUMA = (0.299, 0.587, 0.114)


class InputAdapter(nn.Module):
    """uint8 (N, C_in, H_in, W_in) -> normalised float (N, C_out, H_out, W_out) for the backbone.

    Also accepts float images already in [0, 1]. `describe()` says in words what was done; `key()` is
    the exact preprocessing, part of the feature-cache key.
    """

    def __init__(self, data_size: Sequence[int], backbone_size: Sequence[int], mean: Sequence[float],
                 std: Sequence[float], stats_from: str = "backbone", interpolation: str = "bilinear"):
        super().__init__()
        self.data_size = tuple(int(v) for v in data_size)
        self.out_size = tuple(int(v) for v in backbone_size)
        c_in, c_out = self.data_size[0], self.out_size[0]
        if c_in != c_out and 1 not in (c_in, c_out) and not (c_in == 3 and c_out == 1):
            raise CnnlabError(f"cannot adapt {c_in}-channel images to a {c_out}-channel backbone; "
                              "supported: 1 -> 3 (gray repeated), 3 -> 1 (luma), or equal channels")
        if len(mean) != c_out or len(std) != c_out:
            raise CnnlabError(f"normalisation needs {c_out} values per statistic, got mean={tuple(mean)} std={tuple(std)}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.stats_from = stats_from
        if interpolation not in ("bilinear", "bicubic"):
            raise CnnlabError(f"unknown interpolation '{interpolation}'; cnnlab resizes with bilinear or bicubic")
        self.interpolation = interpolation
        self._preps: dict[torch.device, Preprocess] = {}  # one per device the images come on

    @property
    def changes(self) -> list[str]:
        (ci, hi, wi), (co, ho, wo) = self.data_size, self.out_size
        out = []
        if ci != co:
            out.append("grayscale repeated to 3 channels (RGB)" if ci == 1 else "RGB converted to gray (BT.601 luma)")
        if (hi, wi) != (ho, wo):
            out.append(f"resized {hi}x{wi} -> {ho}x{wo} ({self.interpolation}, antialiased"
                       f"{', clamped to [0, 1]' if self.interpolation == 'bicubic' else ''})")
        return out

    def describe(self) -> str:
        (ci, hi, wi), (co, ho, wo) = self.data_size, self.out_size
        steps = self.changes or ["no change of channels or size"]
        stats = ", ".join(f"{m:.3f}/{s:.3f}" for m, s in zip(self.mean, self.std, strict=True))
        return (f"input {ci}x{hi}x{wi} -> backbone {co}x{ho}x{wo}: {'; '.join(steps)}; "
                f"normalised with the {self.stats_from}'s mean/std ({stats})")

    def key(self) -> str:
        extra = "" if self.interpolation == "bilinear" else f"|{self.interpolation}"  # old keys stay valid
        return f"adapt-v1|{self.data_size}|{self.out_size}|{self.mean}|{self.std}{extra}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit(images) if images.dtype == torch.uint8 else images.float()
        ci, co = self.data_size[0], self.out_size[0]
        if ci == 1 and co == 3:
            x = x.expand(-1, 3, -1, -1)  # (N, 3, H, W), a view
        elif ci == 3 and co == 1:
            w = torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)  # (N, 1, H, W)
        if tuple(x.shape[-2:]) != self.out_size[1:]:
            x = F.interpolate(x, size=self.out_size[1:], mode=self.interpolation, antialias=True, align_corners=False)
            if self.interpolation == "bicubic":
                x = x.clamp(0.0, 1.0)  # bicubic overshoots at edges; PIL, as timm resizes, clamps to the pixel range
        prep = self._preps.get(x.device)
        if prep is None:
            prep = self._preps[x.device] = Preprocess(self.mean, self.std, x.device, channels_last=False)
        return prep.normalise(x)


def make_adapter(data_size: Sequence[int], backbone, data_mean: Sequence[float], data_std: Sequence[float],
                 image_size: int | None = None) -> InputAdapter:
    """The adapter from data of `data_size` (C, H, W) to `backbone` (a `Backbone`).

    `image_size` overrides the backbone's H = W for backbones that pool adaptively (ImageNet nets);
    backbones whose head depends on the size (specs, small zoo nets) must get their own size.
    """
    c_out, h, w = backbone.input_size
    if image_size is not None:
        if backbone.fixed_size and (image_size, image_size) != (h, w):
            raise CnnlabError(f"backbone '{backbone.name}' needs {h}x{w} inputs (its fc layers depend on the size); "
                              f"got image_size={image_size}; leave it out")
        h = w = int(image_size)
    how = getattr(backbone, "interpolation", "bilinear")
    if backbone.mean is not None:
        return InputAdapter(data_size, (c_out, h, w), backbone.mean, backbone.std, "backbone", how)
    mean, std = tuple(data_mean), tuple(data_std)
    if len(mean) != c_out:  # channels change: gray stats repeated, or RGB stats averaged into gray
        mean = mean * c_out if len(mean) == 1 else (sum(mean) / len(mean),)
        std = std * c_out if len(std) == 1 else (sum(std) / len(std),)
    return InputAdapter(data_size, (c_out, h, w), mean, std, "target data", how)
