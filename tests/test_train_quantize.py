"""`cnnlab export --quantize int8`: ONNX Runtime static INT8, calibrated on training images only, measured
against fp32 on the test split, refused (nothing written) when it loses too much."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_cli

from cnnlab.core.run import open_run
from cnnlab.errors import CnnlabError
from cnnlab.training import quantize as quantize_module
from cnnlab.training import train
from cnnlab.training.export import export, int8_path, read_export_info
from cnnlab.training.rundata import run_data

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("q8") / "run"
    # batch norm: the INT8 path must fold it into the convolutions; a validation split, as training holds one out
    train("conv3x3-16/bn maxpool2 conv3x3-32/bn fc10", "digits", epochs=6, batch_size=64, lr=3e-3, out=str(out),
          verbose=False, plots=False)
    return out


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("q8out")
    fp32 = export(run_dir, "onnx", folder / "m.onnx", quantize="int8", calibration_images=256)
    return fp32, int8_path(fp32)


def _logits(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"images": x})[0]


def test_int8_file_holds_8_bit_weights_per_channel_and_is_smaller(exported):
    fp32, int8 = exported
    model = onnx.load(str(int8))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 3  # two convolutions and the classifier
    # per channel: every 4-D int8 weight has one scale per output channel
    scales = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in {t.name for t in int8_weights}:
            w = onnx.numpy_helper.to_array(next(t for t in int8_weights if t.name == node.input[0]))
            if w.ndim == 4:
                assert scales[node.input[1]].shape == (w.shape[0],)
                assert np.abs(w).max() <= 64  # the 7-bit range (reduce_range)
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    # the input and output stay float32 [0, 1] images -> logits: a drop-in replacement
    for v in (*model.graph.input, *model.graph.output):
        assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_recorded_accuracies_match_an_independent_pass_and_int8_tracks_fp32(run_dir, exported):
    fp32, int8 = exported
    info = read_export_info(int8)["verified"]
    ds = run_data(open_run(run_dir), open_run(run_dir).card("best"))
    x = ds.test.images.float().div(255).numpy()
    y = ds.test.labels.numpy()
    l32, l8 = _logits(fp32, x), _logits(int8, x)
    assert info["test_images"] == len(y)
    assert info["fp32_accuracy"] == pytest.approx(100 * (l32.argmax(1) == y).mean())
    assert info["int8_accuracy"] == pytest.approx(100 * (l8.argmax(1) == y).mean())
    assert info["agreement"] == pytest.approx(100 * (l32.argmax(1) == l8.argmax(1)).mean())
    # INT8 is an approximation of the same function: same class nearly everywhere, logits close in scale
    assert info["agreement"] >= 97.0
    assert np.abs(l8 - l32).mean() < 0.1 * np.abs(l32).mean()
    assert info["fp32_accuracy"] > 85.0 and abs(info["drop"]) <= 2.0


def test_calibration_reads_only_the_training_split(run_dir, tmp_path, monkeypatch):
    seen = []
    real = quantize_module.calibration_images

    def spy(split, count, seed):
        seen.append(split)
        return real(split, count, seed)

    monkeypatch.setattr(quantize_module, "calibration_images", spy)
    export(run_dir, "onnx", tmp_path / "m.onnx", quantize="int8", calibration_images=10_000)
    ds = run_data(open_run(run_dir), open_run(run_dir).card("best"))
    (split,) = seen
    # the same images as the training split (validation held out), not validation, not test
    assert len(split) == len(ds.train) and torch.equal(split.images, ds.train.images)
    assert len(split) + len(ds.val) + len(ds.test) == 1797  # scikit-learn's digits


def test_too_large_a_drop_is_refused_and_nothing_is_written(run_dir, tmp_path, monkeypatch):
    real = quantize_module.measure

    def worse(*a, **k):
        m = real(*a, **k)
        return {**m, "int8_accuracy": m["fp32_accuracy"] - 3.0}

    monkeypatch.setattr(quantize_module, "measure", worse)
    with pytest.raises(CnnlabError, match=r"drop of 3\.00 points, more than --max-drop 1"):
        export(run_dir, "onnx", tmp_path / "out" / "m.onnx", quantize="int8")
    assert not (tmp_path / "out").exists()


def test_quantize_refusals_in_python(run_dir, tmp_path):
    with pytest.raises(CnnlabError, match="with --format onnx"):
        export(run_dir, "torchscript", tmp_path / "m.pt", quantize="int8")
    with pytest.raises(CnnlabError, match="unknown quantisation 'int4'"):
        export(run_dir, "onnx", tmp_path / "m.onnx", quantize="int4")
    with pytest.raises(CnnlabError, match="max_drop must be a number"):
        export(run_dir, "onnx", tmp_path / "m.onnx", quantize="int8", max_drop=float("nan"))
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_quantize_prints_both_accuracies_and_refuses_bad_arguments(run_dir, tmp_path):
    proc = run_cli("export", str(run_dir), "--quantize", "int8", "--out", str(tmp_path / "ok" / "m.onnx"), check=True)
    out = proc.stdout
    assert "m.int8.onnx" in out and "fp32 " in out and "INT8 - fp32" in out and "smaller" in out, out
    assert (tmp_path / "ok" / "m.int8.onnx").is_file() and (tmp_path / "ok" / "m.int8.onnx.json").is_file()
    for args in (["--quantize", "int8", "--format", "torchscript"], ["--quantize", "int8", "--max-drop", "nan"],
                 ["--quantize", "int8", "--calibration-images", "0"], ["--quantize", "int4"]):
        proc = run_cli("export", str(run_dir), *args, "--out", str(tmp_path / "bad" / "m.onnx"))
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "bad").exists()
