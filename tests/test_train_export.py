"""A finished run used three ways: eval (CLI), predict (image files), export (ONNX via onnxruntime, TorchScript)."""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from torch import nn

from cnnlab.core.run import open_run
from cnnlab.data import load_dataset
from cnnlab.errors import CnnlabError
from cnnlab.training import train
from cnnlab.training.export import Normalized, export, exportable, read_export_info
from cnnlab.training.predict import predict
from cnnlab.training.run import load_model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "run"
    train("simple_cnn", "digits", epochs=2, batch_size=64, lr=3e-3, out=str(out), verbose=False)
    return out


def _reference_probs(run_dir, images_uint8):
    """Softmax of the run's model computed by hand, in fp32, from the card's normalisation."""
    model, card = load_model(run_dir, "best")
    x = (images_uint8.float() / 255 - torch.tensor(card.mean).view(1, -1, 1, 1)) / torch.tensor(card.std).view(1, -1, 1, 1)
    with torch.no_grad():
        return torch.softmax(model(x), 1), card


def test_onnx_matches_pytorch(run_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = export(run_dir, "onnx", tmp_path / "m.onnx")
    wrapped, _ = exportable(run_dir)
    x = torch.rand(7, 1, 8, 8)  # a batch size the export never saw: the batch axis is dynamic
    with torch.no_grad():
        expected = wrapped(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # and the export includes the normalisation: same as the hand-built reference on [0, 1] images
    images = (x * 255).round().to(torch.uint8)
    ref, _ = _reference_probs(run_dir, images)
    (logits,) = session.run(None, {"images": (images.float() / 255).numpy()})
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), ref.numpy(), atol=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated upstream
def test_torchscript_matches_pytorch(run_dir, tmp_path):
    path = export(run_dir, "torchscript", tmp_path / "m.pt")
    loaded = torch.jit.load(str(path))
    wrapped, _ = exportable(run_dir)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), wrapped(x))


def test_export_refuses_unknown_format(run_dir):
    with pytest.raises(CnnlabError, match="unknown export format 'tflite'"):
        export(run_dir, "tflite")


def test_predict_converts_any_image_like_the_training_data(run_dir, tmp_path):
    ds = load_dataset("digits")
    img = ds.test.images[0, 0]  # (8, 8) uint8
    gray = tmp_path / "digit.png"
    Image.fromarray(img.numpy(), mode="L").save(gray)
    # the same digit as a 32x32 RGB JPEG-free PNG: predict must convert it to 8x8 grayscale itself
    big = tmp_path / "digit_rgb.png"
    Image.fromarray(img.numpy(), mode="L").resize((32, 32), Image.Resampling.NEAREST).convert("RGB").save(big)
    ref, card = _reference_probs(run_dir, img.view(1, 1, 8, 8))
    (p,) = predict(run_dir, [gray], top_k=3)
    top_class, top_prob = p.top[0]
    assert top_class == card.classes[int(ref.argmax())]
    assert top_prob == pytest.approx(float(ref.max()), abs=1e-5)
    assert [prob for _, prob in p.top] == sorted((prob for _, prob in p.top), reverse=True)
    (q,) = predict(run_dir, [big], top_k=3)
    # PIL's bilinear downscale of a nearest-neighbour 4x upscale returns close to the original pixels
    assert q.top[0][0] == top_class


def test_predict_with_flip_tta_averages_image_and_mirror(run_dir, tmp_path):
    ds = load_dataset("digits")
    img = ds.test.images[5, 0]
    path = tmp_path / "digit.png"
    Image.fromarray(img.numpy(), mode="L").save(path)
    plain, card = _reference_probs(run_dir, img.view(1, 1, 8, 8))
    mirrored, _ = _reference_probs(run_dir, img.flip(1).view(1, 1, 8, 8))
    ref = (plain + mirrored) / 2
    (p,) = predict(run_dir, [path], top_k=10, tta="flip")
    got = torch.tensor([dict(p.top)[c] for c in card.classes])
    torch.testing.assert_close(got, ref[0], rtol=0, atol=1e-5)
    (q,) = predict(run_dir, [path], top_k=10)  # the run was trained without tta: none by default
    torch.testing.assert_close(torch.tensor([dict(q.top)[c] for c in card.classes]), plain[0], rtol=0, atol=1e-5)


def test_predict_refuses_a_non_image(run_dir, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    with pytest.raises(CnnlabError, match="cannot read image"):
        predict(run_dir, [bad])


@pytest.mark.slow
def test_cli_eval_predict_export(run_dir, tmp_path):
    proc = run_cli("eval", str(run_dir), check=True)
    assert "accuracy" in proc.stdout and "confusion matrix" in proc.stdout
    metrics = open_run(run_dir).read_metrics()
    [best] = [m["test_accuracy"] for m in metrics if m.get("chosen")]  # the test set, evaluated once on them
    assert f"accuracy {100 * best:.2f}%" in proc.stdout  # the same test set, the same best weights
    img = tmp_path / "d.png"
    Image.fromarray(load_dataset("digits").test.images[1, 0].numpy(), mode="L").save(img)
    proc = run_cli("predict", str(run_dir), str(img), "--top-k", "2", check=True)
    assert proc.stdout.startswith(str(img)) and proc.stdout.count("%") == 2
    proc = run_cli("export", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "x.pt"), check=True)
    assert (tmp_path / "x.pt").exists() and (tmp_path / "x.pt.json").exists()
    proc = run_cli("eval", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "run directory not found" in proc.stderr


# ------------------------------------------------------------ checked exports, non-finite weights (issue 15, 8)
class _TracedDiffers(nn.Module):
    """Branches on the batch size, which tracing freezes: the export computes another function than eager
    PyTorch for every batch but the traced one (2), as a wrongly exported model would."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        logits = self.fc(x.flatten(1))
        return logits if x.shape[0] == 2 else logits + 1.0


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the frozen branch is the point
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_that_differs_from_pytorch_is_refused(run_dir, tmp_path, monkeypatch, fmt):
    export_module = importlib.import_module("cnnlab.training.export")  # `cnnlab.training.export` is also the function
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    _, card = exportable(run_dir)
    monkeypatch.setattr(export_module, "exportable", lambda run, which: (Normalized(_TracedDiffers(), [0.5], [0.25]), card))
    with pytest.raises(CnnlabError, match=r"differs from PyTorch by up to 1 in the logits of 4 images .*nothing was written"):
        export(run_dir, fmt, tmp_path / "out" / "m.bin")
    assert list(tmp_path.iterdir()) == []  # no file, no .json, no temporary, not even the folder


def test_export_to_an_opset_onnx_runtime_cannot_run_is_refused(run_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(CnnlabError, match=r"cannot run the exported model \(opset 1\): .*NOT_IMPLEMENTED.*--opset 17"):
        export(run_dir, "onnx", tmp_path / "deep" / "m.onnx", opset=1)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CnnlabError, match=r"cannot export this model to ONNX opset 99"):
        export(run_dir, "onnx", tmp_path / "m.onnx", opset=99)
    assert list(tmp_path.iterdir()) == []


def test_export_records_its_check(run_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = export(run_dir, "onnx", tmp_path / "m.onnx")
    check = read_export_info(path)["verified"]
    assert check["with"] == f"ONNX Runtime {ort.__version__}" and check["batch"] == 4
    assert 0 <= check["max_abs_diff"] < 1e-4 <= check["tolerance"]


def _poisoned_run(run_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the run whose best weights hold an inf in one tensor and a NaN in a later one; returns the
    copy and the name of the first bad tensor in state-dict order."""
    from safetensors.torch import load_file, save_file  # noqa: PLC0415

    copy = tmp_path / "diverged"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export", "ckpt-*"))
    state = load_file(str(copy / "best.safetensors"))  # stored sorted by name: take the model's order
    names = [n for n in load_model(run_dir)[0].state_dict() if state[n].is_floating_point()]
    first, later = names[1], names[-1]
    state[first].view(-1)[3] = float("inf")
    state[later].view(-1)[0] = float("nan")
    save_file(state, str(copy / "best.safetensors"), metadata={"format": "cnnlab-weights-v1"})
    return copy, first


def test_non_finite_weights_are_refused_in_python(run_dir, tmp_path):
    from cnnlab.training.evaluate import evaluate  # noqa: PLC0415

    bad, first = _poisoned_run(run_dir, tmp_path)
    img = tmp_path / "d.png"
    Image.fromarray(load_dataset("digits").test.images[1, 0].numpy(), mode="L").save(img)
    pattern = rf"weights '.*best\.safetensors' hold non-finite values: tensor '{re.escape(first)}' has 1 inf"
    for call in (lambda: evaluate(bad, device="cpu"), lambda: predict(bad, [img]), lambda: exportable(bad),
                 lambda: export(bad, "torchscript", tmp_path / "x.pt")):
        with pytest.raises(CnnlabError, match=pattern):
            call()
    assert not (tmp_path / "x.pt").exists()
    evaluate(bad, which="last", device="cpu")  # the other weights of the run are still usable


@pytest.mark.slow
def test_cli_export_check_and_refusals(run_dir, tmp_path):
    """What a user sees: the checked difference, and one line, exit 2, for each refusal."""
    pytest.importorskip("onnxruntime")
    proc = run_cli("export", str(run_dir), "--out", str(tmp_path / "ok" / "m.onnx"), check=True)
    m = re.search(r"checked with ONNX Runtime \S+ against PyTorch on 4 images: largest absolute difference in "
                  r"the logits (\S+) \(tolerance", proc.stdout)
    assert m and float(m.group(1)) < 1e-4, proc.stdout
    proc = run_cli("export", str(run_dir), "--opset", "1", "--out", str(tmp_path / "old" / "m.onnx"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "opset 1" in proc.stderr and not (tmp_path / "old").exists()
    bad, first = _poisoned_run(run_dir, tmp_path)
    img = tmp_path / "d.png"
    Image.fromarray(load_dataset("digits").test.images[1, 0].numpy(), mode="L").save(img)
    for args in (["eval", str(bad)], ["predict", str(bad), str(img)], ["export", str(bad)]):
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "best.safetensors" in lines[0] and f"'{first}'" in lines[0], (args, proc.stderr)
        assert "%" not in proc.stdout  # no accuracy, no probabilities
    assert not (bad / "export").exists()
