"""The run directory: everything a finished (or interrupted) training run leaves behind.

Models are built in `cnnlab.training.run` (`load_model`); this module only reads and writes the files.

    RUN/
      config.json          resolved options, seed, versions, device: enough to reproduce the run
      metrics.jsonl        one JSON object per epoch (losses, accuracies, lr, seconds, images/s)
      best.safetensors     weights of the epoch with the best held-out accuracy
      best.json            what is needed to rebuild and use them (model, classes, input size, normalisation)
      last.safetensors     weights after the last finished epoch
      last.json
      checkpoints/ckpt-*.pt  resume state (model, optimizer, RNG, history), newest `keep` kept
      curves.png           loss and accuracy per epoch, train and test
      confusion.png        confusion matrix of the last evaluation
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import torch
from torch import nn

from cnnlab.core.files import atomic_write_json, atomic_write_text
from cnnlab.core.machine import describe
from cnnlab.core.weights import load_safetensors, save_safetensors
from cnnlab.errors import CnnlabError
from cnnlab.version import __version__

WEIGHTS_FORMAT = "cnnlab-weights-1"


@dataclass
class ModelCard:
    """The small JSON beside the weights: how to rebuild the model and feed it."""

    model: str  # registered name or spec text, as given to `cnnlab train --model`
    model_options: dict[str, Any]  # extra builder options (e.g. dropout)
    num_classes: int
    classes: list[str]
    input_size: tuple[int, int, int]  # (C, H, W) the model was trained on
    mean: tuple[float, ...]  # per-channel normalisation of images scaled to [0, 1]
    std: tuple[float, ...]
    dataset: str
    epoch: int  # 1-based epoch these weights come from
    accuracy: float | None = None  # held-out accuracy at that epoch, in [0, 1]
    format: str = WEIGHTS_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)
    # softmax temperature fitted on the validation split by `cnnlab calibrate` (1.0: not calibrated);
    # predict, eval, export and the report divide log-probabilities by it (argmax unchanged)
    temperature: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model card") -> ModelCard:
        """Check every field's presence and type (the file may have been edited): `CnnlabError` naming `where`."""
        if not isinstance(d, dict):
            raise CnnlabError(f"{where} must hold a JSON object, got {type(d).__name__}; retrain or restore the file")
        if d.get("format") != WEIGHTS_FORMAT:
            raise CnnlabError(f"{where}: unknown weights format {d.get('format')!r}; expected {WEIGHTS_FORMAT!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        unknown, missing = sorted(set(d) - names), sorted(required - set(d))
        if unknown or missing:
            raise CnnlabError(f"{where}: unknown keys {unknown}, missing keys {missing}; retrain or restore the file")
        d = dict(d)

        def bad(key: str, want: str) -> CnnlabError:
            return CnnlabError(f"{where}: '{key}' must be {want}, got {str(d[key])[:60]!r}; retrain or restore the file")

        def numbers(key: str, kind=(int, float)) -> tuple:
            v = d[key]
            if not isinstance(v, list) or not all(isinstance(x, kind) and not isinstance(x, bool) for x in v):
                raise bad(key, "a list of numbers")
            return tuple(v)

        for key in ("model", "dataset"):
            if not isinstance(d[key], str):
                raise bad(key, "a string")
        if not isinstance(d["model_options"], dict):
            raise bad("model_options", "an object")
        if not isinstance(d["classes"], list) or not all(isinstance(c, str) for c in d["classes"]):
            raise bad("classes", "a list of class names")
        for key in ("num_classes", "epoch"):
            if not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 0:
                raise bad(key, "a non-negative integer")
        d["input_size"] = numbers("input_size", int)
        d["mean"], d["std"] = numbers("mean"), numbers("std")
        if len(d["input_size"]) != 3 or len(d["mean"]) != d["input_size"][0] or len(d["std"]) != d["input_size"][0]:
            raise bad("input_size", "[C, H, W] with C means and C stds")
        if len(d["classes"]) != d["num_classes"]:
            raise bad("classes", f"{d['num_classes']} names (num_classes)")
        t = d.get("temperature", 1.0)
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 < t < float("inf"):
            raise bad("temperature", "a positive finite number (run `cnnlab calibrate` again)")
        return cls(**d)


def read_json(path: Path, what: str = "file") -> Any:
    """JSON from a file of a run folder; a damaged or unreadable file is one `CnnlabError` naming it."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        why = f"{e.msg}, line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        raise CnnlabError(f"{what} '{path}' is not valid JSON ({why}); retrain or restore the file") from None


def read_text(path: Path, what: str = "file") -> str:
    """The text of a file of a run folder; unreadable or not text: one `CnnlabError` naming it."""
    try:
        return path.read_text()
    except UnicodeDecodeError as e:
        raise CnnlabError(f"{what} '{path}' is not text ({e.reason}); retrain or restore the file") from None
    except OSError as e:
        raise CnnlabError(f"cannot read {what} '{path}': {e.strerror or e}; check the file and its permissions") from None


def environment() -> dict[str, Any]:
    """Versions and machine, for config.json."""
    return {
        "cnnlab": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "machine": describe(),  # CPU model and class (AVX2, AVX-512, AVX512-BF16, AMX, NEON), cores, threads
    }


class RunDir:
    """Reads and writes one run directory. Only rank 0 writes under DDP (the caller ensures it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def exists(self) -> bool:
        return (self.path / "config.json").is_file()

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.path / "config.json", config)

    def read_config(self) -> dict[str, Any]:
        path = self.path / "config.json"
        config = read_json(path, "run config")
        if not isinstance(config, dict) or not isinstance(config.get("config", {}), dict):
            raise CnnlabError(f"run config '{path}' must hold a JSON object with a 'config' object; retrain or restore it")
        return config


    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        # Rewritten whole from the checkpointed history, so it never disagrees with what resume restores.
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for number, line in enumerate(read_text(path, "metrics").splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CnnlabError(f"metrics '{path}' line {number} is not valid JSON ({e.msg}); "
                                      "delete that line or restore the file") from None
                if not isinstance(row, dict):
                    raise CnnlabError(f"metrics '{path}' line {number} is not a JSON object; delete it or restore the file")
                for key, value in row.items():  # the figures readers plot and compare: numbers or null
                    if (key == "epoch" or key == "lr" or key.endswith(("_loss", "_accuracy"))) and value is not None \
                            and (isinstance(value, bool) or not isinstance(value, (int, float))):
                        raise CnnlabError(f"metrics '{path}' line {number}: '{key}' is {value!r}, not a number; "
                                          "delete that line or restore the file")
                rows.append(row)
        return rows

    def save_weights(self, which: str, model: nn.Module, card: ModelCard) -> None:
        """`which.safetensors` then `which.json`; each atomic, the JSON last so it names finished weights."""
        save_safetensors(self.path / f"{which}.safetensors", model.state_dict(),
                         metadata={"format": WEIGHTS_FORMAT, "model": card.model, "epoch": str(card.epoch)})
        atomic_write_json(self.path / f"{which}.json", card.to_dict())

    def card(self, which: str = "best") -> ModelCard:
        path = self.path / f"{which}.json"
        if not path.is_file():
            found = sorted(p.stem for p in self.path.glob("*.json") if p.stem not in ("config",))
            raise CnnlabError(f"no weights '{which}' in run '{self.path}'; found: {', '.join(found) or 'none'}")
        return ModelCard.from_dict(read_json(path, "model card"), where=f"model card '{path}'")

    def load_weights(self, which: str = "best") -> tuple[dict[str, torch.Tensor], ModelCard]:
        """The state dict of `which.safetensors` (CPU) and the card `which.json` that describes it.
        Rebuilding the model from the card is `cnnlab.training.run.load_model`'s job (core has no models)."""
        card = self.card(which)
        return load_safetensors(self.path / f"{which}.safetensors"), card


def open_run(path: str | Path) -> RunDir:
    """An existing run directory, or a one-line error saying what a run directory holds."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise CnnlabError(f"run directory not found: '{path}'; give the folder `cnnlab train` printed (e.g. runs/...)")
    if not any((run.path / f"{w}.json").is_file() for w in ("best", "last")):
        raise CnnlabError(f"'{path}' is not a finished cnnlab run (no best.json or last.json); train one with `cnnlab train`")
    return run


def default_run_name(model: str, data: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in model.strip())[:40].strip("-") or "model"
    return f"{safe}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"
