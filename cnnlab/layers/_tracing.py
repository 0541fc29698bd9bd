"""Whether a model is being traced into a graph (TorchScript, ONNX export, torch.fx), where layers that
pick a faster path at run time must take the plain one: the graph should show what the model prints, and
fx cannot branch on the attributes of the proxies it traces with."""

from __future__ import annotations

import torch
from torch.fx import _symbolic_trace as _fx

# newer torch: is_fx_tracing() also answers (and warns) under torch.export; ask the narrower question
_fx_tracing = getattr(_fx, "is_fx_symbolic_tracing", getattr(_fx, "is_fx_tracing", lambda: False))


def tracing() -> bool:
    """True under `torch.jit.trace`/`script` (and so the TorchScript ONNX exporter) and `torch.fx.symbolic_trace`."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or _fx_tracing()
