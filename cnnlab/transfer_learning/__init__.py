"""Transfer learning: backbones, frozen feature extraction, feature caches, heads and strategies.

    >>> from cnnlab.transfer_learning import transfer, probe, load_backbone, freeze
    >>> transfer("resnet18:imagenet", "digits", strategy="features", head="logreg", train_per_class=10)
"""

from cnnlab.transfer_learning.api import ProbeResult, TransferResult, probe, transfer
from cnnlab.transfer_learning.backbone import Backbone, cut_points, load_backbone
from cnnlab.transfer_learning.freeze import freeze, is_frozen, unfreeze

__all__ = ["freeze", "unfreeze", "is_frozen", "transfer", "probe", "load_backbone", "cut_points",
           "TransferResult", "ProbeResult", "Backbone"]
