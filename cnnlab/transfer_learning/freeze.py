"""Freezing: no gradients, and batch-norm running statistics untouched even after `model.train()`.

`requires_grad=False` alone is not enough to freeze a network with batch norm: in training mode a
`BatchNorm` layer still normalises with the batch's statistics and overwrites its running mean and
variance on every forward pass, so a "frozen" backbone drifts while the head trains, and dropout keeps
dropping. fastai and Keras both keep frozen normalisation layers in inference mode for that reason.

How: `freeze` turns gradients off and registers a forward pre-hook on every normalisation and dropout
layer inside the module that sets that layer's `training` flag to False just before it runs. The hook
survives `model.train()` (which only flips flags), works however the layer is reached (a parent's
`forward`, `forward_features`, or the layer called directly), and is a module-level function, so frozen
models still pickle and `copy.deepcopy`. A side effect: after a forward pass those layers report
`training == False` even inside a model in training mode — which is the truth about how they ran.
`unfreeze` removes the hooks and restores gradients; the layers follow the parent's mode again from the
next `.train()`/`.eval()` call.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd

# Layers whose forward pass depends on `training`: normalisation with running statistics (BatchNorm,
# InstanceNorm with track_running_stats) and dropout.
_MODE_DEPENDENT: tuple[type[nn.Module], ...] = (_NormBase, _DropoutNd, nn.AlphaDropout)

_FLAG = "_cnnlab_frozen"


def _keep_eval(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: run this layer in inference mode whatever the parent's mode says."""
    module.training = False


def _has_keep_eval(module: nn.Module) -> bool:
    return any(hook is _keep_eval for hook in module._forward_pre_hooks.values())


def freeze(module: nn.Module) -> nn.Module:
    """Freeze `module` in place and return it: every parameter gets `requires_grad=False`, and its
    batch-norm and dropout layers always run in inference mode (see the module docstring).

    Freezing twice is harmless. Works on any `nn.Module`, e.g. `freeze(model.layer1)` for one stage.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"freeze() expects an nn.Module, got {type(module).__name__}")
    for p in module.parameters():
        p.requires_grad_(False)
    for m in module.modules():
        if isinstance(m, _MODE_DEPENDENT):
            if not _has_keep_eval(m):
                m.register_forward_pre_hook(_keep_eval)
            m.training = False
        setattr(m, _FLAG, True)
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Undo `freeze` in place and return `module`: gradients on, normalisation and dropout follow the
    model's mode again (they take the parent's mode at the next `.train()`/`.eval()`)."""
    for p in module.parameters():
        p.requires_grad_(True)
    for m in module.modules():
        for key in [k for k, hook in m._forward_pre_hooks.items() if hook is _keep_eval]:
            del m._forward_pre_hooks[key]
        if _FLAG in m.__dict__:
            delattr(m, _FLAG)
    return module


def is_frozen(module: nn.Module) -> bool:
    """True when `module` was frozen with `freeze` (or lies inside a frozen module) and none of its
    parameters requires a gradient. A module without parameters is frozen only if it was marked."""
    if not getattr(module, _FLAG, False):
        return False
    return not any(p.requires_grad for p in module.parameters())


def frozen_parameter_count(module: nn.Module) -> tuple[int, int]:
    """`(trainable, frozen)` parameter counts of `module`."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return trainable, frozen


@torch.no_grad()
def _bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every buffer (running means/variances, counters): used by tests and checks."""
    return {k: v.detach().clone() for k, v in module.named_buffers()}
