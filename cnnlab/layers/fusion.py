"""`fuse(model)`: swap layer patterns for faster modules that compute the same values, visibly.

In the spirit of `torch.ao.quantization.fuse_modules`: the returned model prints what it runs, and its
`state_dict` keys are unchanged (the new modules have no state), so weights saved from a fused model
load into an unfused one and back. Inside every `nn.Sequential`:

- `ReLU -> MaxPool2d(2, 2)` becomes `Identity -> ReLUMaxPool2x2`: the pool runs first and the ReLU on
  a quarter of the positions, on cnnlab's C kernel where it applies (`cnnlab.layers.maxpool2x2`);
- a lone `MaxPool2d(2, 2)` (e.g. the spec option `/pool2`, conv -> pool -> bn -> act) becomes
  `MaxPool2x2`, the same pool on the C kernel where it applies;
- `nn.Flatten` becomes `FlattenKeepLayout`, whose gradient keeps a channels_last map's layout
  (`cnnlab.layers.flatten`).

Values and gradients stay the same bit for bit (tests/test_fusion.py checks every zoo model against its
unfused self). What changes is what the Identity's output shows: a forward hook on the fused ReLU's slot
sees the convolution's output, not the ReLU's. So pairs whose modules carry hooks, and modules named in
`keep`, are left as they are; register hooks on an unfused model (what `create_model` returns).

How pairs are found: by module order inside `nn.Sequential` containers (exact type `nn.Sequential`, whose
forward feeds each child's output to the next child), which is how every cnnlab model (and torchvision's
VGG and AlexNet) holds them. torch.fx would find pairs anywhere in the dataflow, but it needs a model fx
can trace and returns a `GraphModule`, which loses the model's class and its handles (`forward_features`,
`reset_classifier`, `feature_info`); a pair written in a custom `forward` is therefore not fused.

The C kernel is built (once, saying so in one line) and loaded here, when a model on the CPU has a 2x2 pool
to fuse; never during a forward pass.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable

from torch import nn

from cnnlab.layers.flatten import FlattenKeepLayout
from cnnlab.layers.maxpool2x2 import MaxPool2x2, ReLUMaxPool2x2, load_kernel

__all__ = ["fuse"]


def _pair(v) -> tuple:
    return (v, v) if isinstance(v, int) else tuple(v)


def _is_2x2(m: nn.Module) -> bool:
    """Exactly `nn.MaxPool2d(2, 2)`: no padding, dilation, ceil mode or indices."""
    return (type(m) is nn.MaxPool2d and _pair(m.kernel_size) == (2, 2) and _pair(m.stride) == (2, 2)
            and _pair(m.padding) == (0, 0) and _pair(m.dilation) == (1, 1) and not m.ceil_mode
            and not m.return_indices)


def _hooked(m: nn.Module) -> bool:
    """Whether someone observes this module (its hooks would see other values once fused)."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _on_cpu(model: nn.Module) -> bool:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first is None or first.device.type == "cpu"


def fuse(model: nn.Module, *, inplace: bool = False, keep: Iterable[str] = (), kernel: bool | None = None) -> nn.Module:
    """`model` with its `ReLU -> MaxPool2d(2, 2)` pairs, lone 2x2 max-pools and `nn.Flatten`s replaced by
    modules that compute the same values faster (see the module's doc); same `state_dict` keys.

    Args:
        model: any module; only `nn.Sequential` containers inside it (or itself) are searched.
        inplace: change `model` itself (the Trainer's way: the same parameters keep training); by
            default a deep copy is fused and returned, as `torch.ao.quantization.fuse_modules` does.
        keep: names of modules (as in `model.named_modules()`) whose own output must stay observable,
            e.g. a layer a forward hook will read; pairs containing them are not fused.
        kernel: build (once) and load the C kernel for the fused pools; None: if the model is on the CPU.
            Without it the fused modules run PyTorch's operators (same values).
    """
    if not inplace:
        model = copy.deepcopy(model)
    keep = set(keep)
    pools = 0
    for name, seq in list(model.named_modules()):
        if type(seq) is not nn.Sequential:
            continue
        prefix = f"{name}." if name else ""
        children = list(seq.named_children())
        for i, (key, m) in enumerate(children):
            if prefix + key in keep or _hooked(m):
                continue
            if _is_2x2(m):
                before, relu = children[i - 1] if i else ("", None)
                if type(relu) is nn.ReLU and prefix + before not in keep and not _hooked(relu):
                    setattr(seq, before, nn.Identity())
                    setattr(seq, key, ReLUMaxPool2x2())
                else:
                    setattr(seq, key, MaxPool2x2())
                pools += 1
            elif type(m) is nn.Flatten:
                setattr(seq, key, FlattenKeepLayout(m.start_dim, m.end_dim))
    if pools and (_on_cpu(model) if kernel is None else kernel):
        load_kernel()
    return model
