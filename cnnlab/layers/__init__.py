"""Layers PyTorch lacks, the activation table the specs and the zoo share, and `fuse` (faster modules that
compute the same values, put in visibly)."""

from cnnlab.layers.activations import ACTIVATIONS, activation_gain, check_activation, make_activation
from cnnlab.layers.flatten import FlattenKeepLayout
from cnnlab.layers.fusion import fuse
from cnnlab.layers.locally_connected import LocallyConnected2d, conv_output_size
from cnnlab.layers.maxpool2x2 import MaxPool2x2, ReLUMaxPool2x2
from cnnlab.layers.shortcut import ShortcutA

__all__ = [
    "ACTIVATIONS",
    "FlattenKeepLayout",
    "LocallyConnected2d",
    "MaxPool2x2",
    "ReLUMaxPool2x2",
    "ShortcutA",
    "activation_gain",
    "check_activation",
    "conv_output_size",
    "fuse",
    "make_activation",
]
