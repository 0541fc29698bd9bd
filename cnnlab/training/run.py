"""Models and run directories: rebuild a run's model from its card, and check a model fits the data.

The run directory itself (files, model card) is `cnnlab.core.run`; building models needs `cnnlab.models`,
which core may not import, so it lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.core.run import ModelCard, RunDir, open_run
from cnnlab.errors import CnnlabError
from cnnlab.models import model_info, resolve_model
from cnnlab.training.finite import check_finite_weights


def build_model(text: str, input_size: tuple[int, int, int], num_classes: int, options: dict[str, Any] | None = None) -> nn.Module:
    """A registered name (with builder options) or a spec -> model for `(C, H, W)` inputs and `num_classes`."""
    name = text.strip()
    if name.startswith("<module"):
        raise CnnlabError(f"this run was trained from a Python module ({name}), which cannot be rebuilt from its name; "
                          "build the module yourself and load the run's .safetensors into it")
    try:
        # resolve_model passes (H, W) to builders whose fc layers depend on it, and refuses options for a spec
        model, _ = resolve_model(text, input_size=tuple(input_size), num_classes=num_classes, options=options)
    except CnnlabError:
        if len(name.split()) == 1 and "-" not in name:  # one word that is no layer: a mistyped model name
            model_info(name)  # raises "unknown model 'x' (did you mean 'y'?)"
        raise
    return model


def check_model_fits(model: nn.Module, input_size: tuple[int, int, int], num_classes: int, what: str) -> None:
    """One forward pass on a zero image: refuse, in one line, a model that cannot take this data."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_size))
    except (RuntimeError, ValueError) as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CnnlabError(
            f"model {what} cannot take images of size {tuple(input_size)} (C, H, W): {msg}; "
            "choose a model made for this input size or resize the data with --image-size"
        ) from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != (1, num_classes):
        raise CnnlabError(
            f"model {what} outputs shape {tuple(out.shape)} for one image, but the data has {num_classes} classes; "
            f"expected (1, {num_classes})"
        )


def load_model(run: str | Path | RunDir, which: str = "best") -> tuple[nn.Module, ModelCard]:
    """Rebuild the model of run `run` from `which.json` and load `which.safetensors` into it (eval mode, CPU)."""
    run_dir = run if isinstance(run, RunDir) else open_run(run)
    state, card = run_dir.load_weights(which)
    model = build_model(card.model, card.input_size, card.num_classes, card.model_options)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape: the card and the weights disagree
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise CnnlabError(f"weights '{run_dir.path / (which + '.safetensors')}' do not fit model '{card.model}' of "
                          f"'{which}.json': {detail[:200]}; retrain or restore the files") from None
    if missing or unexpected:
        raise CnnlabError(
            f"weights '{which}' in '{run_dir.path}' do not match model '{card.model}': "
            f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}"
        )
    # a diverged run's weights, named in the model's own (state-dict) order
    check_finite_weights(model.state_dict(), run_dir.path / f"{which}.safetensors", which)
    return model.eval(), card
