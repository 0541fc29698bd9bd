"""Activations by name, the one table that specs and zoo options share.

`make_activation("tanh")` -> `nn.Tanh()`. Modules are never in-place: an in-place ReLU would overwrite the
output of the conv before it, which forward hooks (summaries, activation statistics) have to read.
"""

from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError, did_you_mean

# name -> (module factory, gain name for `nn.init.calculate_gain`)
ACTIVATIONS: dict[str, tuple[type[nn.Module], str]] = {
    "relu": (nn.ReLU, "relu"),
    "tanh": (nn.Tanh, "tanh"),
    "sigmoid": (nn.Sigmoid, "sigmoid"),
    "gelu": (nn.GELU, "relu"),  # no exact gain exists; ReLU's is the usual stand-in
    "elu": (nn.ELU, "relu"),
    "leakyrelu": (nn.LeakyReLU, "leaky_relu"),  # slope 0.01, PyTorch's default
    "identity": (nn.Identity, "linear"),
}


def check_activation(name: str) -> str:
    """Return `name` lower-cased if it is a known activation, else raise a `CnnlabError`."""
    key = str(name).lower()
    if key not in ACTIVATIONS:
        raise CnnlabError(
            f"unknown activation '{name}'{did_you_mean(key, ACTIVATIONS)}; choose one of {', '.join(ACTIVATIONS)}"
        )
    return key


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for `name` (one of `ACTIVATIONS`), shape-preserving."""
    return ACTIVATIONS[check_activation(name)][0]()


def activation_gain(name: str) -> float:
    """The gain `nn.init.calculate_gain` recommends for `name` (sqrt(2) for ReLU, 5/3 for tanh, 1 for sigmoid)."""
    return nn.init.calculate_gain(ACTIVATIONS[check_activation(name)][1])
