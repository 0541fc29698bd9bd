"""Run an `nn.Sequential` with each ReLU -> max-pool pair computed as max-pool -> ReLU: the same values.

ReLU is non-decreasing and leaves positive values as they are, so `maxpool(relu(x)) == relu(maxpool(x))`
for any window (overlapping, padded, ceil_mode), and the gradients agree too: where a window's maximum
is positive both orders send its gradient to the same first maximum; where it is not, both send zero.
Pooling first runs the ReLU, its backward and the saved activation on a quarter of the positions (for
2x2 pools): 1.12-1.15x more training images/s for `simple_cnn` in bf16 on a 2-core CPU
(`benchmarks/step_levers.py`). Where the C kernel applies (2x2 stride-2 pools on channels_last CPU maps,
`cnnlab.layers.maxpool2x2`), the pool and the ReLU run as one pass of it, with the same values again.

The model keeps its modules, order and printout: `conv -> relu -> maxpool` is what it is and what it
computes. Where the difference would show, the modules run in their order: while either module of a pair
has a hook (feature maps, Grad-CAM and other inspection see the ReLU's real output), while any global
module hook is set, and while tracing (TorchScript, ONNX, torch.fx), so exported graphs match the printout.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module

from cnnlab.layers._tracing import tracing
from cnnlab.layers.maxpool2x2 import max_pool2x2, pool2x2_applies


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks")
    return any(getattr(_module, name, None) for name in names)


def _max_pool(m: nn.Module) -> bool:
    return type(m) is nn.MaxPool2d and not m.return_indices and not _has_hooks(m)


def forward_pool_first(seq: nn.Sequential, x: torch.Tensor, kernel: bool = True) -> torch.Tensor:
    """`seq(x)`, with every unhooked `ReLU` directly followed by an unhooked `MaxPool2d` run pool-first, and
    (if kernel) 2x2 max-pools, with such a ReLU or alone, on cnnlab's C kernel where it applies
    (`cnnlab.layers.maxpool2x2`)."""
    if tracing() or _global_hooks() or _has_hooks(seq):
        return seq(x)
    modules = list(seq)
    i = 0
    while i < len(modules):
        m = modules[i]
        if type(m) is nn.ReLU and i + 1 < len(modules) and _max_pool(modules[i + 1]) and not _has_hooks(m):
            pool = modules[i + 1]
            x = max_pool2x2(x, relu=True) if kernel and pool2x2_applies(x, pool) else m(pool(x))
            i += 2
        else:
            x = max_pool2x2(x) if kernel and _max_pool(m) and pool2x2_applies(x, m) else m(x)
            i += 1
    return x
