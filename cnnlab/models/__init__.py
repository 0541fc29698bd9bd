"""The model zoo: `create_model(name, ...)`, `list_models()`, and models built from the lecture's notation.

Importing this package imports every family file so that its builders register themselves.
"""

from __future__ import annotations

import importlib
import inspect

import torch

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
from cnnlab.models.timm_models import create_timm_model, is_timm_name, split_timm_name, timm_input_size

# Family files register their builders on import; this order is the order of `cnnlab models`.
for _family in ("simple", "lenet", "alexnet", "vgg", "resnet", "googlenet", "resnet_cifar"):
    importlib.import_module(f"cnnlab.models.{_family}")

__all__ = [
    "ConvNet",
    "ModelInfo",
    "create_model",
    "is_timm_name",
    "is_model_name",
    "list_models",
    "model_info",
    "register_model",
    "resolve_model",
]

# Parameters a model built from a name or spec may have: 4 GB of fp32 weights, 4x the zoo's largest
# (vgg19, 144 M); a model card or option asking for more is refused before anything is allocated.
MAX_PARAMS = 1_000_000_000


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
    if not isinstance(text, str):
        raise CnnlabError(f"a model must be a registered name or a spec (a string), got {text!r}")
    if is_timm_name(text):  # timm:NAME, timm's architectures (optional; imported only here)
        return _resolve_timm(text, input_size, num_classes, options)
    if torch.get_default_device().type == "meta":
        return _resolve(text, input_size, num_classes, options)
    try:  # count on the meta device first: nothing is allocated
        with torch.device("meta"):
            model, _ = _resolve(text, input_size, num_classes, options)
        n = sum(p.numel() for p in model.parameters())
    except (RuntimeError, OverflowError) as e:  # a size PyTorch cannot even represent
        n = f"too many ({str(e).strip().splitlines()[0][:80] if str(e).strip() else type(e).__name__})"
    if not isinstance(n, int) or n > MAX_PARAMS:
        raise CnnlabError(f"model '{text.strip()[:80]}' would have {n if isinstance(n, str) else f'{n:,}'} parameters, "
                          f"more than the limit of {MAX_PARAMS:,} (4 GB of fp32 weights); choose fewer channels or units")
    return _resolve(text, input_size, num_classes, options)


def _resolve_timm(text: str, input_size, num_classes, options):
    name, where = split_timm_name(text)
    if where:
        raise CnnlabError(f"'{text}': weights after the name are for `transfer --backbone`; here give timm:{name}")
    size = tuple(input_size) if input_size is not None else timm_input_size(name)
    return create_timm_model(name, num_classes=num_classes, in_channels=size[0], **dict(options or {})), size


def _resolve(text: str, input_size, num_classes, options):
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

