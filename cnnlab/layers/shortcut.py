"""The parameter-free shortcut of He et al. 2016 (option A), used by the CIFAR ResNets.

Where a residual block halves the map and doubles the channels, the identity cannot be added as is.
Option A subsamples the input spatially (every `stride`-th pixel) and zero-pads the new channels, so the
shortcut adds no parameters and a plain net and its ResNet have exactly the same parameter count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortcutA(nn.Module):
    """`(N, C_in, H, W)` -> `(N, C_out, ceil(H/stride), ceil(W/stride))`: subsample, then zero-pad channels.

    The input channels come first and the `C_out - C_in` new ones are zeros after them, as in
    fb.resnet.torch (Concat(Identity, MulConstant(0))); any arrangement is parameter-free.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"ShortcutA can only add channels, got {in_channels} -> {out_channels}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (N, C_in, H/s, W/s)
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))  # (N, C_out, H/s, W/s)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"
