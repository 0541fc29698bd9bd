"""cnnlab: convolutional neural networks as a ConvNets course teaches them.

The public API is re-exported here lazily, so `import cnnlab` (and `cnnlab --help`) stays fast and
torch is imported only when a name that needs it is used:

    >>> import cnnlab
    >>> model = cnnlab.create_model("resnet18", num_classes=10, in_channels=1)
    >>> print(cnnlab.summary(model, (1, 28, 28)))
"""

from __future__ import annotations

import importlib
from typing import Any

from cnnlab.version import __version__

# public name -> module that defines it
_EXPORTS = {
    "create_model": "cnnlab.models",
    "list_models": "cnnlab.models",
    "model_info": "cnnlab.models",
    "resolve_model": "cnnlab.models",
    "build_spec": "cnnlab.models.spec",
    "parse_spec": "cnnlab.models.spec",
    "LocallyConnected2d": "cnnlab.layers",
    "fuse": "cnnlab.layers",
    "summary": "cnnlab.inspect",
    "Summary": "cnnlab.inspect",
    "load_dataset": "cnnlab.data",
    "list_datasets": "cnnlab.data",
    "to_float": "cnnlab.data",
    "Dataset": "cnnlab.data",
    "parse_pipeline": "cnnlab.augment",
    "Pipeline": "cnnlab.augment",
    "augment_batches": "cnnlab.augment",
    "train": "cnnlab.training",
    "Trainer": "cnnlab.training",
    "TrainConfig": "cnnlab.training",
    "Callback": "cnnlab.training",
    "evaluate": "cnnlab.training",
    "predict": "cnnlab.training",
    "export": "cnnlab.training",
    "lr_find": "cnnlab.training",
    "transfer": "cnnlab.transfer_learning",
    "probe": "cnnlab.transfer_learning",
    "load_backbone": "cnnlab.transfer_learning",
    "freeze": "cnnlab.transfer_learning",
    "unfreeze": "cnnlab.transfer_learning",
    "is_frozen": "cnnlab.transfer_learning",
    "gradient_lab": "cnnlab.inspect.gradients",
    "gradient_norms": "cnnlab.training.monitor",
    "GradientMonitor": "cnnlab.training.monitor",
    "show_filters": "cnnlab.inspect.visual",
    "show_features": "cnnlab.inspect.visual",
    "show_saliency": "cnnlab.inspect.visual",
    "show_errors": "cnnlab.inspect.visual",
    "build_report": "cnnlab.inspect.report",
    "run_experiment": "cnnlab.experiments",
    "run_all": "cnnlab.experiments",
    "list_experiments": "cnnlab.experiments",
    "tune_allocator": "cnnlab.runtime",
    "CnnlabError": "cnnlab.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
