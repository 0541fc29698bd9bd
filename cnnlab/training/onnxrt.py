"""ONNX Runtime, the optional runtime that checks and runs ONNX exports: one loader, one session factory."""

from __future__ import annotations

from pathlib import Path

from cnnlab.errors import CnnlabError


def onnxruntime():
    """The `onnxruntime` module; CnnlabError with the install command when it is missing."""
    try:
        import onnxruntime as ort  # noqa: PLC0415 - optional: the `export` extra
    except ImportError:
        raise CnnlabError("an ONNX export is checked with ONNX Runtime, which is not installed: "
                          "pip install 'cnnlab[export]' (or export with --format torchscript)") from None
    return ort


def session(path: str | Path, threads: int | None = None):
    """A CPU inference session for the ONNX file `path` (only errors on ONNX Runtime's log: its opset
    warnings would print on stderr); `threads` intra-op threads, else ONNX Runtime's default."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
