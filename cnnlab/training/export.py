"""Export a trained run to ONNX or TorchScript, normalisation included.

The exported model takes float images `(N, C, H, W)` in [0, 1] (the batch size is free) and returns
logits `(N, K)`; the training mean/std are baked in as its first operation, so a deployment needs only
the classes, written beside it as `<file>.json`. A run calibrated by `cnnlab calibrate` exports its logits
divided by the temperature, so their softmax is the calibrated probability (the top class is unchanged).

Every export is checked before it is kept: the file is loaded the way a deployment would load it (ONNX
Runtime for ONNX, `torch.jit.load` for TorchScript) and run on a batch of `VERIFY_BATCH` random images
(a batch size the export was not traced with, so the free batch axis is exercised too), and its logits
are compared with PyTorch's. A file that does not load (e.g. an opset ONNX Runtime does not implement)
or whose logits differ by more than `tolerance` is refused with one line, and nothing is written; the
largest difference is recorded under "verified" in `<file>.json`. Weights holding NaN or infinity are
refused before anything is exported.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from cnnlab.core.files import atomic_path, atomic_write_json
from cnnlab.core.run import open_run
from cnnlab.errors import CnnlabError
from cnnlab.training.onnxrt import onnxruntime, session
from cnnlab.training.quantize import CALIBRATION_IMAGES, MAX_DROP, quantize_int8
from cnnlab.training.run import load_model
from cnnlab.training.rundata import run_data

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
VERIFY_BATCH = 4  # images run through the exported file and through PyTorch (the export traces a batch of 2)


def tolerance(reference: torch.Tensor) -> float:
    """Largest absolute logit difference accepted: 1e-3 relative to the logits' scale. Another runtime's
    fp32 kernels sum in another order (differences ~1e-6 of the scale); a wrong graph differs by far more."""
    return 1e-3 * (1.0 + float(reference.abs().max()))


class Normalized(nn.Module):
    """`model((x - mean) / std) / temperature`: images in [0, 1] -> logits (calibrated when the run's card
    holds a temperature from `cnnlab calibrate`: their softmax is then the calibrated probability)."""

    def __init__(self, model: nn.Module, mean, std, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.temperature = float(temperature)  # a constant of the traced graph; 1.0 adds no operation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model((x - self.mean) / self.std)
        return logits if self.temperature == 1.0 else logits / self.temperature


def exportable(run: str | Path, which: str = "best") -> tuple[Normalized, dict]:
    """The run's model wrapped with its normalisation (eval mode, fp32, CPU), and its card as a dict."""
    model, card = load_model(run, which)
    return Normalized(model, card.mean, card.std, card.temperature).eval(), card.to_dict()


def int8_path(path: str | Path) -> Path:
    """Where the INT8 file goes beside the fp32 export `path`: `best.onnx` -> `best.int8.onnx`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.int8{path.suffix or '.onnx'}")


def export(run: str | Path, format: str = "onnx", out: str | Path | None = None, *, which: str = "best",
           opset: int = 17, quantize: str | None = None, calibration_images: int = CALIBRATION_IMAGES,
           max_drop: float = MAX_DROP, data_dir: str | Path | None = None) -> Path:
    """Write the exported model (`RUN/export/<which>.onnx` by default) and `<file>.json`, once the file
    has been loaded and checked against PyTorch (module docstring); returns its path.

    `quantize="int8"` (ONNX only) also writes `int8_path(path)` and its `.json`: the static INT8 model
    of `cnnlab.training.quantize`, calibrated on `calibration_images` training images of the run and
    measured against the fp32 file on the run's test split (refused beyond `max_drop` points)."""
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise CnnlabError(f"unknown export format '{format}'; choose onnx or torchscript")
    if quantize not in (None, "none", "int8"):
        raise CnnlabError(f"unknown quantisation '{quantize}'; the one offered is int8 (with --format onnx)")
    quantize = None if quantize == "none" else quantize
    if quantize and fmt != "onnx":
        raise CnnlabError("--quantize int8 goes through ONNX Runtime: use it with --format onnx")
    if quantize and not (isinstance(calibration_images, int) and calibration_images >= 1):
        raise CnnlabError(f"calibration_images must be a whole number >= 1, got {calibration_images!r}")
    if quantize and not (isinstance(max_drop, (int, float)) and 0 <= max_drop <= 100):  # nan fails too
        raise CnnlabError(f"max_drop must be a number of accuracy points from 0 to 100, got {max_drop!r}")
    if fmt == "onnx":
        onnxruntime()  # before any work: without it the export cannot be checked
    wrapped, card = exportable(run, which)
    data = None
    if quantize:  # the data before any file: a run whose data cannot be rebuilt writes nothing
        run_dir = open_run(run)
        data = run_data(run_dir, run_dir.card(which), data_dir=data_dir)
    path = Path(out) if out else Path(run) / "export" / f"{which}{FORMATS[fmt]}"
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # folders to remove on failure
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, *card["input_size"])
    try:
        with atomic_path(path) as tmp:  # exporters write to a path: a private temporary one, renamed into place
            if fmt == "onnx":
                _export_onnx(wrapped, example, tmp, opset)
            else:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still widely deployed
                    traced = torch.jit.trace(wrapped, example)
                traced.save(str(tmp))
            verified = verify_export(tmp, fmt, wrapped, tuple(card["input_size"]), opset)
            if quantize:
                int8 = int8_path(path)
                with atomic_path(int8) as tmp8:
                    quantized = quantize_int8(tmp, tmp8, data, tmp.parent, count=calibration_images,
                                              max_drop=max_drop)
    except BaseException:
        for folder in made:  # only the folders this call created, and only while empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    info = {"input": {"shape": ["N", *card["input_size"]], "dtype": "float32", "range": [0.0, 1.0],
                      "normalisation": "included"}, "output": _output(card["temperature"]), **card, "verified": verified}
    if quantize:
        atomic_write_json(int8.with_name(int8.name + ".json"),
                          {**info, "verified": quantized.to_dict(), "quantized": "int8", "fp32_file": path.name})
    atomic_write_json(path.with_name(path.name + ".json"), info)
    return path


def _output(temperature: float) -> str:
    if temperature == 1.0:
        return "logits (N, K)"
    return f"logits (N, K) divided by the calibrated temperature {temperature:.4g}: their softmax is calibrated"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def verify_export(file: Path, fmt: str, model: nn.Module, input_size: tuple[int, int, int], opset: int) -> dict:
    """Load `file` as a deployment would, run it and `model` on the same `VERIFY_BATCH` images in [0, 1],
    and return {"with", "batch", "max_abs_diff", "tolerance"}; CnnlabError if it does not load or differs."""
    x = torch.rand((VERIFY_BATCH, *input_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
    if fmt == "onnx":
        runtime = f"ONNX Runtime {onnxruntime().__version__}"
        try:
            (got,) = session(file).run(None, {"images": x.numpy()})
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types (Fail, NotImplemented, ...)
            raise CnnlabError(f"{runtime} cannot run the exported model (opset {opset}): {_first_line(e)}; "
                              "export with an opset it implements, e.g. --opset 17 (the default)") from None
        got = torch.from_numpy(got)
    else:
        runtime = f"torch.jit.load (torch {torch.__version__})"
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                got = torch.jit.load(str(file))(x)
        except Exception as e:  # noqa: BLE001 - TorchScript raises RuntimeError and friends
            raise CnnlabError(f"the exported TorchScript file does not load and run: {_first_line(e)}") from None
    if tuple(got.shape) != tuple(reference.shape):
        raise CnnlabError(f"the exported model returns shape {tuple(got.shape)} for a batch of {VERIFY_BATCH}, "
                          f"PyTorch {tuple(reference.shape)}; nothing was written")
    diff = float((got.float() - reference).abs().max())
    tol = tolerance(reference)
    if not diff <= tol:  # also catches NaN
        raise CnnlabError(f"the exported model differs from PyTorch by up to {diff:.3g} in the logits of "
                          f"{VERIFY_BATCH} images (tolerance {tol:.3g}); nothing was written")
    return {"with": runtime, "batch": VERIFY_BATCH, "max_abs_diff": diff, "tolerance": tol}


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    kwargs = dict(input_names=["images"], output_names=["logits"], opset_version=opset)
    with warnings.catch_warnings():
        # The TorchScript-based exporter needs no extra package (the torch.export one needs onnxscript);
        # it is deprecated but still the dependable path for plain CNNs.
        warnings.simplefilter("ignore")
        try:
            try:
                torch.onnx.export(model, (example,), str(path), dynamo=False,
                                  dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, **kwargs)
            except TypeError:  # a torch without the legacy exporter
                batch = torch.export.Dim("batch")
                torch.onnx.export(model, (example,), str(path), dynamic_shapes=({0: batch},), **kwargs)
        except (RuntimeError, ValueError) as e:  # e.g. "Unsupported onnx_opset_version: 25"
            raise CnnlabError(f"torch {torch.__version__} cannot export this model to ONNX opset {opset}: "
                              f"{_first_line(e)}; try the default, --opset 17") from None


def read_export_info(path: str | Path) -> dict:
    return json.loads(Path(str(path) + ".json").read_text())
