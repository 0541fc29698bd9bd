"""Refuse weights that hold NaN or infinity, before they are evaluated, used for predictions or exported.

A run that diverged can still write `best`/`last` weights; evaluated they give "accuracy 10.00%, loss nan"
and predictions of "nan%", which look like results. One line naming the file and the first bad tensor
says what happened instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from cnnlab.errors import CnnlabError


def check_finite_weights(state: Mapping[str, torch.Tensor], file: str | Path, which: str = "best") -> None:
    """Raise CnnlabError if a floating-point tensor of `state` (parameters and buffers, in state-dict order)
    holds a NaN or an infinity; `file` is where the weights came from, `which` their name (best/last)."""
    for name, tensor in state.items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            nan = int(torch.isnan(tensor).sum())
            kinds = " and ".join(k for k, n in (("NaN", nan), ("inf", bad - nan)) if n)
            other = "last" if which == "best" else "best"
            raise CnnlabError(
                f"weights '{file}' hold non-finite values: tensor '{name}' has {bad:,} {kinds} of {tensor.numel():,} "
                f"(the first such tensor); the run diverged: try --weights {other} or train again with a lower --lr")
