"""Logging to the tools people already use: `--log csv` and `--log tensorboard` (or both, comma-separated).

Both are callbacks (`cnnlab.training.callbacks`) that write into the run directory, on rank 0 only:

- `CsvLogger`: RUN/metrics.csv, one row per epoch with the columns of metrics.jsonl; rewritten whole
  from the trainer's history at every epoch end (atomically), so after `--resume` it never holds
  epochs the checkpoint does not;
- `TensorBoardLogger`: RUN/tensorboard/, through `torch.utils.tensorboard` (needs the `tensorboard`
  package: `pip install "cnnlab[tensorboard]"`): every number of each epoch's record as a scalar
  (`loss/train`, `accuracy/val`, `lr`, ...), and the confusion matrix of the last evaluation as an
  image. `tensorboard --logdir runs` shows every run. After `--resume`, events past the resumed epoch
  are dropped (`purge_step`).

The tensorboard package is imported only when `--log tensorboard` is asked for, and its absence is
refused before training starts.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
from typing import Any

import numpy as np
from PIL import Image

from cnnlab.core.figures import confusion_figure, figure_png
from cnnlab.core.files import atomic_write_text
from cnnlab.errors import CnnlabError
from cnnlab.training.callbacks import Callback
from cnnlab.training.evaluate import EvalResult


def _needs_run(trainer, what: str) -> bool:
    """True on the rank that writes; refuses training in memory, where there is no folder to log into."""
    if trainer.run is None:
        raise CnnlabError(f"--log {what} writes into the run directory; it needs save=True")
    return trainer.dist.is_main


class CsvLogger(Callback):
    """RUN/metrics.csv: one row per epoch, the columns of metrics.jsonl (empty where a value is None)."""

    def on_fit_start(self, trainer) -> None:
        _needs_run(trainer, "csv")

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, Any]) -> None:
        if not _needs_run(trainer, "csv"):
            return
        columns = list(dict.fromkeys(k for record in trainer.history for k in record))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        for record in trainer.history:
            writer.writerow({k: "" if v is None else v for k, v in record.items()})
        atomic_write_text(trainer.run.path / "metrics.csv", buf.getvalue())


def _tensorboard():
    """`torch.utils.tensorboard`, or a `CnnlabError` saying how to install the package it needs."""
    # torch.utils.tensorboard loads TensorFlow when it is installed (the bench extra installs it), and a
    # TensorFlow loaded before triton makes triton's import crash the process (seen with tensorflow-cpu 2.21
    # and triton 3: torch imports triton on the first forward pass through a device context); triton
    # loaded first coexists with it
    if importlib.util.find_spec("triton") is not None:
        importlib.import_module("triton")
    try:
        return importlib.import_module("torch.utils.tensorboard")
    except ImportError as e:  # torch's module raises ImportError when the tensorboard package is missing
        raise CnnlabError(f"--log tensorboard needs the tensorboard package ({e}); "
                          "pip install 'cnnlab[tensorboard]' (or pip install tensorboard)") from None


class TensorBoardLogger(Callback):
    """RUN/tensorboard/: the epoch records as scalars and the last confusion matrix as an image."""

    def __init__(self):
        self._module = _tensorboard()  # refuse a missing package before training starts
        self.writer = None

    def on_fit_start(self, trainer) -> None:
        if not _needs_run(trainer, "tensorboard"):
            return
        # resuming at epoch e: drop what an earlier attempt logged for epochs > e (scalars are per epoch)
        self.writer = self._module.SummaryWriter(log_dir=str(trainer.run.path / "tensorboard"),
                                                 purge_step=trainer.start_epoch + 1 if trainer.start_epoch else None)

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if key == "epoch" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            split, _, name = key.partition("_")  # train_loss -> loss/train: TensorBoard groups by the prefix
            tag = f"{name}/{split}" if split in ("train", "val", "test") else key
            self.writer.add_scalar(tag, value, epoch + 1)
        self.writer.flush()  # an interrupted run keeps what it logged

    def on_fit_end(self, trainer, last_eval: EvalResult | None) -> None:
        if self.writer is None:
            return
        if last_eval is not None:
            epoch = trainer.history[-1]["epoch"]
            fig = confusion_figure(last_eval.confusion, trainer.classes,
                                   f"test, epoch {epoch}: {100 * last_eval.accuracy:.2f}%")
            image = np.asarray(Image.open(io.BytesIO(figure_png(fig))).convert("RGB"))  # (H, W, 3) uint8
            self.writer.add_image("confusion_matrix", image, epoch, dataformats="HWC")
        self.writer.close()
        self.writer = None


LOGGERS = {"csv": CsvLogger, "tensorboard": TensorBoardLogger}


def loggers(spec: str) -> list[Callback]:
    """The callbacks of a resolved `TrainConfig.log` ("none", "csv", "tensorboard", "csv,tensorboard")."""
    return [LOGGERS[name]() for name in spec.split(",") if name != "none"]
