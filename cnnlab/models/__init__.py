"""The model zoo: `create_model(name, ...)`, `list_models()`, and models built from the lecture's notation.

Importing this package imports every family file so that its builders register themselves.
"""

from __future__ import annotations

import importlib

from cnnlab.models._base import ConvNet
from cnnlab.models._registry import ModelInfo, create_model, is_model_name, list_models, model_info, register_model

# Family files; each registers its builders on import. Order is the order of `cnnlab models`.
_FAMILIES = ["simple", "lenet", "alexnet", "vgg", "resnet", "googlenet", "resnet_cifar"]
for _family in _FAMILIES:
    try:
        importlib.import_module(f"cnnlab.models.{_family}")
    except ModuleNotFoundError as _e:  # a family not written yet must not break the others
        if _e.name != f"cnnlab.models.{_family}":
            raise

__all__ = [
    "ConvNet",
    "ModelInfo",
    "create_model",
    "is_model_name",
    "list_models",
    "model_info",
    "register_model",
    "resolve_model",
]


def resolve_model(
    text: str,
    input_size: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
):
    """A registered model name or a spec in the lecture's notation -> `(model, input_size)`.

    For a registered name, `input_size` defaults to the model's and its channel count is passed on as
    `in_channels`; a spec needs `input_size` (its fc layers depend on the spatial size).
    """
    text = text.strip()
    if is_model_name(text):
        info = model_info(text)
        size = tuple(input_size) if input_size is not None else info.input_size
        return create_model(text, num_classes=num_classes, in_channels=size[0]), size
    from cnnlab.models.spec import build_spec  # noqa: PLC0415 - only specs need the parser

    size = tuple(input_size) if input_size is not None else (1, 28, 28)
    return build_spec(text, input_size=size, num_classes=num_classes), size
