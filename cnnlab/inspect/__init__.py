"""Inspect a network: layer tables with receptive fields and MACs, and the lecture's parameter arithmetic.

Importing this package does not import torch (`cnnlab arithmetic` stays instant): the arithmetic is pure
Python; the layer-summary names (`layer_summary.py`, which needs torch and the model zoo) load on first
use, as the top-level `cnnlab` package does it. The module is not called `summary.py`: a sub-module of
that name would rebind `cnnlab.inspect.summary` from the function to the module once imported.
"""

from __future__ import annotations

import importlib
from typing import Any

from cnnlab.inspect.arithmetic import bottleneck, connectivity, lecture_examples, receptive_field_growth
from cnnlab.inspect.zoo_table import format_models, zoo_stats

_LAZY = ("LayerRow", "Summary", "model_stats", "summary", "trace")  # from layer_summary

__all__ = ["bottleneck", "connectivity", "format_models", "lecture_examples", "receptive_field_growth", "zoo_stats",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("cnnlab.inspect.layer_summary"), name)
    raise AttributeError(f"module 'cnnlab.inspect' has no attribute {name!r}")
