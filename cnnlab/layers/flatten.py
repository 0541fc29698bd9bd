"""`FlattenKeepLayout`: `nn.Flatten` whose gradient keeps a channels_last input's memory layout; `cnnlab.fuse`
puts it in place of a model's `nn.Flatten` modules.

Flattening a channels_last `(N, C, H, W)` map to `(N, C*H*W)` in (C, H, W) order (the order fc weights,
and torchvision's, assume) copies it into NCHW order. Autograd then hands the gradient back as an NCHW
view, so the max-pool, activation and convolution backward passes below it convert their tensors back
to channels_last: two extra copies of the map before the pool, every step. Returning the gradient in the
input's layout costs one copy of the small flattened map instead (`benchmarks/step_levers.py` measures it).

The values are `torch.flatten`'s. Where it matters (a 4-D channels_last input that needs a gradient) the
module runs an autograd.Function around `torch.flatten`; elsewhere `torch.flatten` itself.
`torch.fx.symbolic_trace` records the module's function as one call (`torch.fx.wrap`).
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

__all__ = ["FlattenKeepLayout", "flatten_keep_layout"]


def _channels_last(x: Tensor) -> bool:
    """A 4-D map stored (N, H, W, C) that is not also plain contiguous (from its strides, which vmap answers)."""
    n, c, h, w = x.shape
    s = x.stride()
    return c > 1 and h * w > 1 and s[1] == 1 and s[3] == c and (h == 1 or s[2] == w * c) and (n == 1 or s[0] == h * w * c)


def _setup(ctx, inputs, output) -> None:
    x = inputs[0]
    ctx.shape = x.shape
    ctx.channels_last = x.dim() == 4 and _channels_last(x)


def _backward(ctx, grad: Tensor):
    grad = grad.reshape(ctx.shape)  # (N, C, H, W), an NCHW view
    if ctx.channels_last:  # copied to (N, H, W, C) order: .contiguous(memory_format=torch.channels_last), also under vmap
        grad = grad.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    return grad, None, None


class _FlattenFunction(torch.autograd.Function):
    """`torch.flatten` with a backward pass that returns the gradient in the input's layout. In PyTorch's
    operators only (no C), so torch.compile, torch.export and torch.func trace it as they trace any
    Function (with setup_context; vmap rule generated); export and inference see a plain flatten."""

    generate_vmap_rule = True
    setup_context = staticmethod(_setup)
    backward = staticmethod(_backward)

    @staticmethod
    def forward(x: Tensor, start_dim: int, end_dim: int) -> Tensor:
        return torch.flatten(x, start_dim, end_dim)  # a copy: only channels_last, non-contiguous inputs come here


_FlattenFunction.forward.__signature__ = inspect.signature(_FlattenFunction.forward)  # bound on every apply: once


@torch.fx.wrap  # symbolic_trace records one call to this function, which branches on the tensor's metadata
def flatten_keep_layout(x: Tensor, start_dim: int = 1, end_dim: int = -1) -> Tensor:
    """`torch.flatten(x, start_dim, end_dim)`, same values; a channels_last `x` gets a channels_last gradient."""
    if x.dim() == 4 and x.requires_grad and torch.is_grad_enabled() and _channels_last(x):
        return _FlattenFunction.apply(x, start_dim, end_dim)
    return torch.flatten(x, start_dim, end_dim)


class FlattenKeepLayout(nn.Flatten):
    """`nn.Flatten(start_dim, end_dim)` whose gradient keeps a channels_last input's layout (see the module's doc)."""

    def forward(self, x: Tensor) -> Tensor:
        return flatten_keep_layout(x, self.start_dim, self.end_dim)
