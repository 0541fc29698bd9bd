"""`demo()`: the lecture's CNN trained for a few epochs, on Fashion-MNIST where its files are found, else on
the small digits set embedded in scikit-learn (`cnnlab demo`, `make demo`). Under a minute on 2 CPU cores."""

from __future__ import annotations

import time
from dataclasses import dataclass

from cnnlab import data
from cnnlab.errors import CnnlabError
from cnnlab.training.api import train
from cnnlab.training.loop import TrainResult

# simple_cnn with AdamW one-cycle (peak 3e-3): about 90% test accuracy on Fashion-MNIST in 3 epochs.
DEMO = {"model": "simple_cnn", "data": "fashion-mnist", "epochs": 3, "batch_size": 128, "optimizer": "adamw",
        "lr": 3e-3, "schedule": "onecycle", "warmup": 0.5}
# digits has 1,797 8x8 images: epochs, batch and rate are left to the size-dependent defaults
# (cnnlab.training.defaults), the one mechanism `cnnlab train` uses too
FALLBACK = {"data": "digits", "epochs": None, "batch_size": None, "lr": None, "warmup": None}


@dataclass
class DemoResult:
    result: TrainResult
    options: dict  # what was trained: DEMO, or DEMO with FALLBACK when Fashion-MNIST was not found
    fell_back: bool  # True: Fashion-MNIST was not found, digits was used
    seconds: float


def demo(epochs: int | None = None, out: str | None = None, data_dir: str | None = None, on_fallback=None) -> DemoResult:
    """Train `DEMO` into `out` (default runs/demo-<time>). `on_fallback(reason)` is called before training on digits."""
    options = dict(DEMO)
    try:  # loaded, not only found: damaged files fall back too
        data.load_dataset("fashion-mnist", data_dir=data_dir)
        fell_back = False
    except CnnlabError as e:
        fell_back = True
        options.update(FALLBACK)
        if on_fallback is not None:
            on_fallback(str(e))
    if epochs is not None:
        options["epochs"] = epochs
    start = time.perf_counter()
    result = train(out=out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}", data_dir=data_dir, **options)
    options.update({k: getattr(result.config, k) for k in ("epochs", "batch_size", "lr", "warmup")})  # as resolved
    return DemoResult(result, options, fell_back, time.perf_counter() - start)
