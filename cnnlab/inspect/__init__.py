"""Inspect a network: layer tables with receptive fields and MACs, and the lecture's parameter arithmetic.

Importing this package does not import torch (`cnnlab arithmetic` stays instant); `summary()` does.
"""

from cnnlab.inspect.arithmetic import bottleneck, connectivity, lecture_examples, receptive_field_growth
from cnnlab.inspect.summary import LayerRow, Summary, format_models, model_stats, summary, trace

__all__ = [
    "LayerRow",
    "Summary",
    "bottleneck",
    "connectivity",
    "format_models",
    "lecture_examples",
    "model_stats",
    "receptive_field_growth",
    "summary",
    "trace",
]
