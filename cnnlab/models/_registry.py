"""The one model registry: `register_model` adds a builder, `create_model` is the way in.

Each builder is a one-line function in its family's file, decorated with the facts that `cnnlab models`
prints: the paper it comes from and its default input and class count (the paper's).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnnlab.errors import CnnlabError, did_you_mean, positive_int


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model builder."""

    name: str
    builder: Callable[..., nn.Module]
    family: str  # the module the builder lives in, e.g. "resnet"
    paper: str  # short citation, e.g. "He et al. 2016, Deep Residual Learning"
    input_size: tuple[int, int, int]  # default (C, H, W)
    num_classes: int  # default number of classes


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(*, paper: str, input_size: tuple[int, int, int], num_classes: int):
    """Decorator: register `fn` under its own name. Duplicate names are refused."""

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} is registered twice")
        family = fn.__module__.rsplit(".", 1)[-1]
        _REGISTRY[name] = ModelInfo(name, fn, family, paper, tuple(input_size), num_classes)
        return fn

    return decorate


def _natural_key(name: str) -> list:
    # resnet18 < resnet34 < resnet101, as people count
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style `pattern`, in natural order (resnet18 < resnet101)."""
    return sorted((n for n in _REGISTRY if fnmatch.fnmatch(n, pattern)), key=_natural_key)


def model_info(name: str) -> ModelInfo:
    """The registry entry for `name`; a `CnnlabError` naming close matches if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CnnlabError(
            f"unknown model '{name}'{did_you_mean(name, _REGISTRY)}; `cnnlab models` lists them all"
        ) from None


def check_options(variant: str, kwargs: dict, allowed: tuple[str, ...]) -> None:
    """Refuse unknown builder options up front, naming the ones that exist."""
    for key in kwargs:
        if key not in allowed:
            raise CnnlabError(
                f"{variant} has no option {key!r}{did_you_mean(key, allowed)}; options: {', '.join(allowed)}"
            )


def is_model_name(name: str) -> bool:
    return name in _REGISTRY


def create_model(
    name: str, num_classes: int | None = None, in_channels: int | None = None, **options
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from `list_models()`.
        num_classes: size of the classifier output; the paper's default when None.
        in_channels: channels of the input images (1 for grayscale); the paper's default when None.
        **options: family-specific options (e.g. `activation="relu"` for lenet5).

    Returns:
        An `nn.Module` mapping `(N, C, H, W)` images to `(N, num_classes)` logits.
    """
    info = model_info(name)
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is not None:
            positive_int(label, value)
    kwargs = dict(options)
    kwargs["num_classes"] = info.num_classes if num_classes is None else num_classes
    kwargs["in_channels"] = info.input_size[0] if in_channels is None else in_channels
    try:
        return info.builder(**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            bad = str(e).split("unexpected keyword argument")[-1].strip(" '\"")
            raise CnnlabError(f"model '{name}' has no option '{bad}'") from None
        raise
