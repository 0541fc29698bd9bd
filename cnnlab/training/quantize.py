"""INT8 inference on the CPU: static quantisation of an exported ONNX model with ONNX Runtime.

`cnnlab export RUN --format onnx --quantize int8` first writes and checks the fp32 export
(`cnnlab.training.export`), then quantises it with ONNX Runtime's static quantiser:
- the graph is pre-processed first (`quant_pre_process`: shape inference and ONNX Runtime's graph
  optimisations, which fold batch norm into the convolutions), as ONNX Runtime's documentation asks;
- weights become int8, symmetric, one scale per output channel (per-channel quantisation keeps
  convolutions whose filters differ in scale, the usual case after batch-norm folding, accurate);
- activations become uint8 with a scale and zero point per tensor, calibrated by the min/max range each
  tensor takes on `calibration_images` images drawn (seeded) from the run's **training** split, never
  validation or test;
- the format is QDQ (QuantizeLinear/DequantizeLinear pairs around each quantised operator), which ONNX
  Runtime fuses into integer kernels on any x86-64 or ARM CPU; the input and output stay float32, so the
  INT8 file is a drop-in replacement for the fp32 one (same input, same logits up to rounding).
- weights are quantised to 7 bits (`reduce_range`): x86 CPUs without VNNI (the AVX2 class) multiply
  uint8 by int8 with VPMADDUBSW, whose pairwise 16-bit sums saturate with full-range 8-bit weights;
  ONNX Runtime's documentation names the reduced range as the remedy. On such a CPU the full range cost
  the `fashion-mnist` recipe's net over 3 points of test accuracy, the 7-bit range nothing (figures in
  docs/export.md), and a file must run correctly on every CPU it is copied to.

Both files are then measured on the run's test split through ONNX Runtime: top-1 accuracy, the images on
which the two agree, and images/s over that pass. An INT8 model whose accuracy falls more than
`max_drop` points below the fp32 model's is refused (nothing is written): static quantisation with
too few or unrepresentative calibration images can lose far more than the usual fraction of a point.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.core.machine import cpu_class
from cnnlab.errors import CnnlabError
from cnnlab.training.onnxrt import session

CALIBRATION_IMAGES = 512  # training images whose activation ranges set the INT8 scales
MAX_DROP = 1.0  # accuracy points the INT8 model may lose against fp32 before the export is refused
EVAL_BATCH = 256


@dataclass
class Quantized:
    """What `quantize_int8` measured; `to_dict()` is the INT8 file's `.json` "verified" entry."""

    calibration: str  # which images set the activation ranges
    test_images: int
    fp32_accuracy: float  # top-1 on the run's test split, percent
    int8_accuracy: float
    agreement: float  # percent of test images on which fp32 and INT8 predict the same class
    fp32_bytes: int
    int8_bytes: int
    fp32_images_per_s: float  # one pass over the test split at EVAL_BATCH, this machine
    int8_images_per_s: float
    threads: int
    cpu_class: str  # the speed figures hold for this instruction-set class (cnnlab.core.machine)
    scheme: str = ("QDQ; weights int8 symmetric per output channel (7-bit range); activations uint8 per tensor "
                   "(min/max calibration); input and output float32")

    @property
    def drop(self) -> float:
        return self.fp32_accuracy - self.int8_accuracy

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop": self.drop}


def calibration_images(split, count: int, seed: int) -> np.ndarray:
    """`count` images (all if fewer) drawn without replacement from `split` with `seed`, as float32 in [0, 1]."""
    n = len(split)
    if n == 0:
        raise CnnlabError("cannot calibrate INT8 ranges on an empty training split (0 images)")
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(count, n)]
    images, _ = next(split.subset(pick.sort().values).batches(len(pick), shuffle=False))
    return (images.float() / 255.0).numpy()


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol: `get_next()` gives {input name: batch} until None."""

    def __init__(self, images: np.ndarray, batch: int = 64):
        self._batches = iter([{"images": images[i:i + batch]} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # called by some ONNX Runtime versions; one pass is all a min/max calibration needs
        pass


def quantize_file(fp32: Path, out: Path, images: np.ndarray, work: Path) -> None:
    """Write the INT8 QDQ model of the ONNX file `fp32` to `out`, ranges calibrated on `images`."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # noqa: PLC0415
        from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415
    except ImportError as e:
        raise CnnlabError(f"INT8 quantisation needs ONNX Runtime's quantisation tools ({e}): "
                          "pip install 'cnnlab[export]'") from None
    prepared = work / "prepared.onnx"
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), _Reader(images), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    except Exception as e:  # noqa: BLE001 - the quantiser raises its own and onnx's types
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnlabError(f"ONNX Runtime could not quantise the model to INT8: {text[:200]}") from None


def run_split(session, split, batch: int = EVAL_BATCH) -> tuple[np.ndarray, float]:
    """Predicted classes of every image of `split` through `session`, and images/s over the pass
    (the first batch, which warms the session up, is not timed)."""
    predictions, seconds, timed = [], 0.0, 0
    for i, (images, _) in enumerate(split.batches(batch, shuffle=False)):
        x = (images.float() / 255.0).numpy()
        start = time.perf_counter()
        (logits,) = session.run(None, {"images": x})
        if i:
            seconds += time.perf_counter() - start
            timed += len(x)
        predictions.append(logits.argmax(1))
    return np.concatenate(predictions), (timed / seconds if seconds > 0 else float("nan"))


def measure(fp32: Path, int8: Path, test, threads: int) -> dict[str, Any]:
    """Accuracy, agreement and images/s of both files on the test split."""
    labels = np.concatenate([y.numpy() for _, y in test.batches(EVAL_BATCH, shuffle=False)])
    p32, s32 = run_split(session(fp32, threads), test)
    p8, s8 = run_split(session(int8, threads), test)
    return {"test_images": len(labels), "fp32_accuracy": 100.0 * float((p32 == labels).mean()),
            "int8_accuracy": 100.0 * float((p8 == labels).mean()), "agreement": 100.0 * float((p32 == p8).mean()),
            "fp32_images_per_s": s32, "int8_images_per_s": s8, "threads": threads, "cpu_class": cpu_class()}


def quantize_int8(fp32: Path, out: Path, ds, work: Path, *, count: int = CALIBRATION_IMAGES, seed: int = 0,
                  max_drop: float = MAX_DROP) -> Quantized:
    """Quantise the exported fp32 ONNX file `fp32` into `out` (calibrated on `count` images of `ds.train`),
    measure both on `ds.test`, and refuse (CnnlabError, `out` removed) when INT8 loses more than
    `max_drop` accuracy points. `work` is a private scratch folder."""
    if len(ds.test) == 0:
        raise CnnlabError("the run's test split is empty: the INT8 model's accuracy cannot be measured")
    images = calibration_images(ds.train, count, seed)
    quantize_file(fp32, out, images, work)
    threads = torch.get_num_threads()
    result = Quantized(f"{len(images):,} images of the training split (seed {seed})", fp32_bytes=fp32.stat().st_size,
                       int8_bytes=out.stat().st_size, **measure(fp32, out, ds.test, threads))
    if not result.drop <= max_drop:
        out.unlink(missing_ok=True)
        raise CnnlabError(f"the INT8 model reaches {result.int8_accuracy:.2f}% on the test split against fp32's "
                          f"{result.fp32_accuracy:.2f}% (a drop of {result.drop:.2f} points, more than --max-drop "
                          f"{max_drop:g}); nothing was written: calibrate on more images (--calibration-images) "
                          "or deploy the fp32 file")
    return result
