"""`cnnlab.train(...)`: the one function behind `cnnlab train`.

    >>> import cnnlab
    >>> run = cnnlab.train(model="simple_cnn", data="fashion-mnist", epochs=2)
    >>> run.test_accuracy, run.path
    >>> run = cnnlab.train(recipe="fashion-mnist")          # the best known setup, no tuning
    >>> run = cnnlab.train(resume="runs/simple_cnn-fashion-mnist-20261128-101500")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from cnnlab.core.run import RunDir
from cnnlab.errors import CnnlabError
from cnnlab.training.config import TrainConfig, load_config_file, merge
from cnnlab.training.loop import Callback, Trainer, TrainResult
from cnnlab.training.recipes import recipe_options

# Options that may change when a run is resumed; everything else must stay as the run started.
RESUME_OVERRIDES = ("epochs", "data_dir")


def resolve_config(options: dict[str, Any], *, recipe: str | None = None, config_file: str | Path | None = None,
                   resume: str | Path | None = None) -> TrainConfig:
    """Defaults < recipe < config file < explicit options (`None` = not given); checked, not yet resolved."""
    if resume is not None:
        run = RunDir(resume)
        if not run.exists():
            raise CnnlabError(f"cannot resume '{resume}': no config.json there; give a run directory written by cnnlab train")
        saved = run.read_config()["config"]
        given = {k: v for k, v in options.items() if v is not None}
        changed = sorted(k for k, v in given.items() if k not in RESUME_OVERRIDES and saved.get(k) != v)
        if changed or recipe or config_file:
            what = ", ".join(changed) or ("--recipe" if recipe else "--config")
            raise CnnlabError(f"--resume continues a run with its saved options; cannot change {what} "
                              f"(only {', '.join(RESUME_OVERRIDES)} may change)")
        return merge(saved, {k: given[k] for k in RESUME_OVERRIDES if k in given})
    layers: list[dict[str, Any]] = []
    if recipe:
        layers.append(recipe_options(recipe))
    if config_file:
        file_opts = load_config_file(config_file)
        if file_opts.get("recipe") and not recipe:
            layers.insert(0, recipe_options(file_opts["recipe"]))
        layers.append(file_opts)
    layers.append(options)
    cfg = merge(*layers)
    if recipe:
        cfg.recipe = recipe
    return cfg


def train(model: str | nn.Module | None = None, data: Any = None, *, recipe: str | None = None,
          config: str | Path | TrainConfig | None = None, resume: str | Path | None = None,
          callbacks: Sequence[Callback] = (), quiet: bool = False, progress: bool = True, verbose: bool = True,
          plots: bool = True, **options: Any) -> TrainResult:
    """Train a model and write a run directory; returns a `TrainResult` (path, history, model, ...).

    Args:
        model: a registered name (`cnnlab models`), a spec ("conv3x3-32 maxpool2 fc10"), or an `nn.Module`.
        data: a dataset name (`cnnlab data list`) or a `cnnlab.data.Dataset`.
        recipe: a named recipe (`cnnlab.training.recipes.RECIPES`) to start from.
        config: a TOML file of options, or a `TrainConfig`.
        resume: a run directory to continue from its newest readable checkpoint.
        callbacks: `Callback` objects (hooks and their order: `cnnlab.training.callbacks`).
        quiet: print nothing (no progress bar, no epoch lines); `verbose=False` is its older spelling.
        progress: draw the progress bar on a terminal; False leaves one summary line per epoch (for logs).
        plots: draw curves.png and confusion.png in the run directory (False saves ~1 s per run).
        **options: any `TrainConfig` field: epochs, batch_size, optimizer, lr, schedule, augment, ...
    """
    module = model if isinstance(model, nn.Module) else None
    dataset = data if data is not None and not isinstance(data, str) else None
    given = dict(options)
    if model is not None and module is None:
        given["model"] = model
    if isinstance(data, str):
        given["data"] = data
    if isinstance(config, TrainConfig):
        cfg = merge(config.to_dict(), given)
    else:
        cfg = resolve_config(given, recipe=recipe, config_file=config, resume=resume)
    trainer = Trainer(cfg, model=module, data=dataset, resume=resume, callbacks=callbacks, quiet=quiet,
                      progress=progress, verbose=verbose, plots=plots)
    return trainer.fit()
