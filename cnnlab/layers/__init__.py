"""Layers PyTorch lacks, and the activation table the specs and the zoo share."""

from cnnlab.layers.activations import ACTIVATIONS, activation_gain, check_activation, make_activation
from cnnlab.layers.flatten import Flatten, flatten
from cnnlab.layers.locally_connected import LocallyConnected2d, conv_output_size
from cnnlab.layers.shortcut import ShortcutA

__all__ = [
    "ACTIVATIONS",
    "Flatten",
    "LocallyConnected2d",
    "ShortcutA",
    "activation_gain",
    "check_activation",
    "conv_output_size",
    "flatten",
    "make_activation",
]
