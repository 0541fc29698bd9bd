"""The model zoo: `create_model(name, ...)`, `list_models()`, and models built from the lecture's notation.

Importing this package imports every family file so that its builders register themselves.
"""

from __future__ import annotations

import importlib
import inspect

from cnnlab.errors import CnnlabError
from cnnlab.models._base import ConvNet
from cnnlab.models._registry import (
    ModelInfo,
    create_model,
    is_model_name,
    list_models,
    model_info,
    register_model,
)
from cnnlab.models.spec import build_spec

# Family files register their builders on import; this order is the order of `cnnlab models`.
for _family in ("simple", "lenet", "alexnet", "vgg", "resnet", "googlenet", "resnet_cifar"):
    importlib.import_module(f"cnnlab.models.{_family}")

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
    options: dict | None = None,
):
    """A registered model name or a spec in the lecture's notation -> `(model, input_size)`.

    For a registered name, `input_size` defaults to the model's; its channel count is passed on as
    `in_channels`, and its (H, W) as `input_size` to builders whose fc layers depend on the image size
    (simple_cnn, vgg_like, lenet5). A spec needs `input_size` for the same reason (default 1x28x28).
    `options` go to the registered builder (a spec takes none).
    """
    text = text.strip()
    options = dict(options or {})  # a dict, not **kwargs: a builder may itself take `input_size`
    if is_model_name(text):
        info = model_info(text)
        size = tuple(input_size) if input_size is not None else info.input_size
        if "input_size" in inspect.signature(info.builder).parameters and "input_size" not in options:
            options["input_size"] = tuple(size[1:])
        return create_model(text, num_classes=num_classes, in_channels=size[0], **options), size
    if options:
        raise CnnlabError(f"options {sorted(options)} apply to registered models, not to a spec like '{text}'")
    size = tuple(input_size) if input_size is not None else (1, 28, 28)
    return build_spec(text, input_size=size, num_classes=num_classes), size
