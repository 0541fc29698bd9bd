"""Flatten whose gradient keeps the input's memory layout (channels_last stays channels_last).

Flattening a channels_last `(N, C, H, W)` map to `(N, C*H*W)` in (C, H, W) order (the order fc weights,
and torchvision's, assume) copies it into NCHW order. Autograd then hands the gradient back as an NCHW
view, so the max-pool, activation and convolution backward passes below it convert their tensors back
to channels_last: two extra copies of the map before the pool, every step. Returning the gradient in
the input's layout costs one copy of the small flattened map instead: 1.07-1.10x more training images/s
for `simple_cnn` in bf16 on a 2-core CPU (`benchmarks/step_levers.py`; the same values, other strides).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.layers._tracing import tracing


class _FlattenKeepLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, start_dim: int, end_dim: int) -> torch.Tensor:
        ctx.shape = x.shape
        return x.flatten(start_dim, end_dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last), None, None


def _keeps_layout(x: torch.Tensor) -> bool:
    """True where the plain flatten would hand back a gradient in another layout than `x`'s."""
    if tracing() or torch.compiler.is_compiling():  # before touching x: under fx it is a proxy
        return False
    return (x.dim() == 4 and x.requires_grad and torch.is_grad_enabled() and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def flatten(x: torch.Tensor, start_dim: int = 1, end_dim: int = -1) -> torch.Tensor:
    """`torch.flatten(x, start_dim, end_dim)`, same values; a channels_last `x` gets a channels_last gradient."""
    if _keeps_layout(x):
        return _FlattenKeepLayout.apply(x, start_dim, end_dim)
    return torch.flatten(x, start_dim, end_dim)


class Flatten(nn.Flatten):
    """`nn.Flatten` (same repr, no state), whose gradient keeps a channels_last input's layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flatten(x, self.start_dim, self.end_dim)
