"""Transfer learning: backbones, frozen feature extraction, feature caches, heads and strategies.

    >>> from cnnlab.transfer import transfer, probe, load_backbone, freeze
    >>> transfer("resnet18:imagenet", "digits", strategy="features", head="logreg", train_per_class=10)
"""

from cnnlab._callable import make_callable
from cnnlab.transfer.freeze import freeze, is_frozen, unfreeze

__all__ = ["freeze", "unfreeze", "is_frozen", "transfer", "probe", "load_backbone", "cut_points",
           "TransferResult", "ProbeResult", "Backbone"]


def __getattr__(name: str):
    # freeze() is imported by the training loop; the rest (sklearn, torchvision) only when asked for.
    if name in ("transfer", "probe", "TransferResult", "ProbeResult"):
        from cnnlab.transfer import api  # noqa: PLC0415

        return getattr(api, name)
    if name in ("load_backbone", "cut_points", "Backbone"):
        from cnnlab.transfer import backbone  # noqa: PLC0415

        return getattr(backbone, name)
    raise AttributeError(f"module 'cnnlab.transfer' has no attribute {name!r}")


make_callable(__name__, "transfer")
