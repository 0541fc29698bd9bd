"""Named recipes: a model, augmentation and schedule chosen for speed-to-accuracy on one dataset.

`cnnlab train --recipe fashion-mnist` starts from these options; any flag given next to it still wins.
Each entry says what it was measured to reach, on which machine, so a user knows what to expect.
"""

from __future__ import annotations

from typing import Any

from cnnlab.errors import CnnlabError, did_you_mean

RECIPES: dict[str, dict[str, Any]] = {
    # A VGG-style net with batch norm (widths 16-32-64, two 3x3 convs per stage, global average pooling):
    # batch norm lets AdamW take a large one-cycle peak; flip + 2-pixel translation and label smoothing
    # keep the small net from over-fitting in the few epochs it gets.
    "fashion-mnist": {
        "about": "fast: vgg_like(16, batch norm) + flip/translate, AdamW one-cycle; ~90% test in about 3 epochs",
        "options": {
            "model": "vgg_like", "data": "fashion-mnist",
            "extra": {"n": 2, "m": 3, "width": 16, "batch_norm": True, "head": "gap"},
            "epochs": 4, "batch_size": 256, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.05,
            "schedule": "onecycle", "warmup": 1.0, "label_smoothing": 0.1, "augment": "flip,crop:2:mode=zero",
        },
    },
    # Same family, twice as wide, trained longer: the accuracy end of the trade-off.
    "fashion-mnist-94": {
        "about": "accurate: vgg_like(32, batch norm) + flip/translate, AdamW one-cycle, 20 epochs",
        "options": {
            "model": "vgg_like", "data": "fashion-mnist",
            "extra": {"n": 2, "m": 3, "width": 32, "batch_norm": True, "head": "gap"},
            "epochs": 20, "batch_size": 256, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.05,
            "schedule": "onecycle", "warmup": 3.0, "label_smoothing": 0.1, "augment": "flip,crop:2:mode=zero",
        },
    },
    # The lecture's CNN as the course trains it, for comparison with the plain PyTorch loop.
    "simple": {
        "about": "the lecture's simple_cnn, Adam 1e-3, constant rate, no augmentation",
        "options": {"model": "simple_cnn", "data": "fashion-mnist", "epochs": 10, "batch_size": 128,
                    "optimizer": "adam", "lr": 1e-3, "schedule": "constant", "augment": "none"},
    },
}


def recipe_options(name: str) -> dict[str, Any]:
    """A copy of the recipe's options (TrainConfig fields)."""
    if name not in RECIPES:
        raise CnnlabError(f"unknown recipe '{name}'{did_you_mean(name, RECIPES)}; recipes: {', '.join(RECIPES)}")
    opts = dict(RECIPES[name]["options"])
    opts["extra"] = dict(opts.get("extra", {}))
    return opts


def describe_recipes() -> str:
    return "\n".join(f"{name:<18} {r['about']}" for name, r in RECIPES.items())
