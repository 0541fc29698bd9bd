"""Export a trained run to ONNX or TorchScript, normalisation included.

The exported model takes float images `(N, C, H, W)` in [0, 1] (the batch size is free) and returns
logits `(N, K)`; the training mean/std are baked in as its first operation, so a deployment needs only
the classes, written beside it as `<file>.json`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from cnnlab.core.files import atomic_path, atomic_write_json
from cnnlab.errors import CnnlabError
from cnnlab.train.run import load_model

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


class Normalized(nn.Module):
    """`model((x - mean) / std)`: images in [0, 1] -> logits."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def exportable(run: str | Path, which: str = "best") -> tuple[Normalized, dict]:
    """The run's model wrapped with its normalisation (eval mode, fp32, CPU), and its card as a dict."""
    model, card = load_model(run, which)
    return Normalized(model, card.mean, card.std).eval(), card.to_dict()


def export(run: str | Path, format: str = "onnx", out: str | Path | None = None, *, which: str = "best",
           opset: int = 17) -> Path:
    """Write the exported model (`RUN/export/<which>.onnx` by default) and `<file>.json`; returns its path."""
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise CnnlabError(f"unknown export format '{format}'; choose onnx or torchscript")
    wrapped, card = exportable(run, which)
    path = Path(out) if out else Path(run) / "export" / f"{which}{FORMATS[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, *card["input_size"])
    with atomic_path(path) as tmp:  # exporters write to a path: a private temporary one, renamed into place
        if fmt == "onnx":
            _export_onnx(wrapped, example, tmp, opset)
        else:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still widely deployed
                traced = torch.jit.trace(wrapped, example)
            traced.save(str(tmp))
    info = {"input": {"shape": ["N", *card["input_size"]], "dtype": "float32", "range": [0.0, 1.0],
                      "normalisation": "included"}, "output": "logits (N, K)", **card}
    atomic_write_json(path.with_name(path.name + ".json"), info)
    return path


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    kwargs = dict(input_names=["images"], output_names=["logits"], opset_version=opset)
    with warnings.catch_warnings():
        # The TorchScript-based exporter needs no extra package (the torch.export one needs onnxscript);
        # it is deprecated but still the dependable path for plain CNNs.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False,
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, **kwargs)
        except TypeError:  # a torch without the legacy exporter
            batch = torch.export.Dim("batch")
            torch.onnx.export(model, (example,), str(path), dynamic_shapes=({0: batch},), **kwargs)


def read_export_info(path: str | Path) -> dict:
    return json.loads(Path(str(path) + ".json").read_text())
