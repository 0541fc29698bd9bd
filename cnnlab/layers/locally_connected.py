"""A locally-connected layer: a convolution whose kernel is different at every output position.

The lecture's "sparsity without parameter sharing": each output pixel still sees only a k x k window,
but nothing is reused across positions, so the layer has H'*W' times the weights of the convolution
(DeepFace used such layers for aligned faces). PyTorch has none; this one is `unfold` + one `einsum`.

Weight layout: `weight[i, j]` is an ordinary conv kernel `(out_channels, in_channels, kh, kw)` used at
output position `(i, j)`, so `weight` is `(H', W', out_channels, in_channels, kh, kw)`. Bias is untied
(the classic definition): one value per output channel *and* position, `bias` is `(out_channels, H', W')`.
Parameters: `H'*W'*O*C*kh*kw + O*H'*W'`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError


def _pair(v: int | tuple[int, int], label: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(a, int) and not isinstance(a, bool) for a in pair):
        raise CnnlabError(f"LocallyConnected2d {label} must be an int or a pair of ints, got {v!r}")
    return pair  # type: ignore[return-value]


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution or pooling along one axis (PyTorch's floor formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class LocallyConnected2d(nn.Module):
    """`(N, C, H, W)` -> `(N, O, H', W')`, each output position with its own `(O, C, kh, kw)` kernel.

    `H'`, `W'` follow the convolution formula, so the layer must know its input size when it is built.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        input_size: tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.input_size = _pair(input_size, "input_size")
        self.stride, self.padding = _pair(stride, "stride"), _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.output_size = tuple(
            conv_output_size(n, k, s, p, d)
            for n, k, s, p, d in zip(self.input_size, self.kernel_size, self.stride, self.padding, self.dilation, strict=True)
        )
        if min(self.output_size) < 1:
            raise CnnlabError(
                f"LocallyConnected2d with kernel {self.kernel_size} leaves no output position on a "
                f"{self.input_size[0]}x{self.input_size[1]} input; use a smaller kernel or more padding"
            )
        oh, ow = self.output_size
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(oh, ow, out_channels, in_channels, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_channels, oh, ow)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The bound nn.Conv2d uses by default, 1/sqrt(fan_in): each position starts like a fresh conv.
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            raise CnnlabError(
                f"LocallyConnected2d was built for {self.input_size[0]}x{self.input_size[1]} inputs, got "
                f"{x.shape[-2]}x{x.shape[-1]}; build it with input_size={tuple(x.shape[-2:])}"
            )
        oh, ow = self.output_size
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C*kh*kw, H'*W')
        w = self.weight.reshape(oh * ow, self.out_channels, -1)  # (H'*W', O, C*kh*kw), same order as unfold
        out = torch.einsum("nkl,lok->nol", cols, w)  # (N, O, H'*W')
        out = out.reshape(x.shape[0], self.out_channels, oh, ow)  # (N, O, H', W')
        if self.bias is not None:
            out = out + self.bias
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"input_size={self.input_size}, output_size={self.output_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}"
        )
