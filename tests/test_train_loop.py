"""The training loop on scikit-learn's digits: run directory, resume after kill -9 / SIGTERM, NaN guard."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import run_cli

from cnnlab.core.weights import load_safetensors
from cnnlab.data import load_dataset
from cnnlab.models import create_model
from cnnlab.training import Callback, NonFiniteLossError, train
from cnnlab.training.checkpoint import list_checkpoints

# Small and quick: 1437 training images of 8x8, 142 held out for validation, batch 64 -> 20 steps per epoch.
OPTS = dict(model="simple_cnn", data="digits", batch_size=64, lr=3e-3, augment="flip", seed=3)


def _weights(run_dir, which="last"):
    return load_safetensors(run_dir / f"{which}.safetensors")


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """Three uninterrupted epochs; the resume tests must reproduce its weights bit for bit."""
    out = tmp_path_factory.mktemp("ref") / "run"
    result = train(**OPTS, epochs=3, out=str(out), verbose=False)
    return out, result


def test_run_directory_holds_everything(reference_run):
    out, result = reference_run
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.jsonl", "best.safetensors", "best.json", "last.safetensors", "last.json",
            "curves.png", "confusion.png", "checkpoints"} <= names
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seed"] == 3 and cfg["config"]["lr"] == 3e-3 and cfg["environment"]["torch"] == torch.__version__
    assert cfg["selection"]["chosen_by"] == "val" and cfg["config"]["val_fraction"] == 0.1
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second"):
        assert all(isinstance(r[key], float) for r in lines), key
    # the test set: evaluated once, on the chosen epoch's weights, recorded on that epoch only
    chosen = [r for r in lines if r.get("chosen")]
    assert [r["epoch"] for r in chosen] == [result.best_epoch]
    assert [r["test_accuracy"] is None for r in lines] == [r["epoch"] != result.best_epoch for r in lines]
    assert chosen[0]["test_accuracy"] == result.test_accuracy and chosen[0]["val_accuracy"] == result.val_accuracy
    assert result.val_accuracy == max(r["val_accuracy"] for r in lines) == result.best_accuracy
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list_checkpoints(out / "checkpoints")) == 2  # rotation keeps two


def test_recorded_accuracy_matches_a_plain_fp32_evaluation(reference_run):
    """Independent check: rebuild the model by hand, load best.safetensors, count hits in a naive loop."""
    out, _ = reference_run
    card = json.loads((out / "best.json").read_text())
    model = create_model("simple_cnn", num_classes=10, in_channels=1, input_size=(8, 8))
    model.load_state_dict(_weights(out, "best"))
    model.eval()
    ds = load_dataset("digits")
    x = (ds.test.images.float() / 255 - card["mean"][0]) / card["std"][0]
    with torch.no_grad():
        hits = int((model(x).argmax(1) == ds.test.labels).sum())
    # the run evaluates in bf16 where the CPU has it: allow two images of 360 to flip
    assert card["extra"]["chosen_by"] == "val" and card["accuracy"] == card["extra"]["val_accuracy"]
    assert abs(hits / len(ds.test) - card["extra"]["test_accuracy"]) <= 2 / len(ds.test) + 1e-9
    assert card["extra"]["test_accuracy"] > 0.8  # it did learn: chance is 0.1


def test_flip_tta_averages_the_probabilities_of_image_and_mirror():
    """Reference: softmax of a model on each image and on its mirror, averaged by hand. The model is a
    random linear map of the pixels, so mirroring changes its answers a lot (a test that could not fail
    otherwise: a model trained with flips hardly cares)."""
    import torch.nn.functional as F
    from torch import nn

    from cnnlab.core.preprocess import Preprocess
    from cnnlab.training.evaluate import evaluate_split
    from cnnlab.training.precision import resolve_precision

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    ds = load_dataset("digits")
    x = (ds.test.images.float() / 255 - ds.mean[0]) / ds.std[0]
    with torch.no_grad():
        p_plain = model(x).softmax(1)
        p_tta = (p_plain + model(torch.flip(x, dims=[3])).softmax(1)) / 2
    prec = resolve_precision("fp32", "cpu", channels_last=False)
    prep = Preprocess(ds.mean, ds.std, prec.device, channels_last=False)
    r = evaluate_split(model, ds.test, prep, prec, 10, tta="flip")
    plain = evaluate_split(model, ds.test, prep, prec, 10)
    assert torch.equal(r.confusion.sum(0), torch.bincount(p_tta.argmax(1), minlength=10))
    assert r.loss == pytest.approx(float(F.nll_loss(p_tta.log(), ds.test.labels)), rel=1e-5)
    assert plain.loss == pytest.approx(float(F.nll_loss(p_plain.log(), ds.test.labels)), rel=1e-5)
    assert abs(r.loss - plain.loss) > 0.01 and not torch.equal(r.confusion, plain.confusion)


@pytest.mark.parametrize("mode, views", [("shift", 5), ("flip-shift", 10)])
def test_shift_tta_averages_the_probabilities_of_the_shifted_views(mode, views):
    """Reference: each view built by hand (zero-pad the uint8 pixels by one, cut the 8x8 window one pixel
    off centre; flipped views from the mirrored image), softmaxes averaged."""
    import torch.nn.functional as F
    from torch import nn

    from cnnlab.core.preprocess import Preprocess
    from cnnlab.training.evaluate import evaluate_split
    from cnnlab.training.precision import resolve_precision

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    ds = load_dataset("digits")
    raw = ds.test.images.float()
    bases = [raw, raw.flip(3)] if mode == "flip-shift" else [raw]
    padded = [F.pad(b, (1, 1, 1, 1)) for b in bases]  # zero = black, as crop:N:mode=zero fills
    windows = [(1, 1), (0, 1), (2, 1), (1, 0), (1, 2)]  # (top, left) of the 8x8 cut: centre, then 4 shifts
    inputs = [p[:, :, top:top + 8, left:left + 8] for p in padded for top, left in windows]
    assert len(inputs) == views
    with torch.no_grad():
        probs = torch.stack([model((v / 255 - ds.mean[0]) / ds.std[0]).softmax(1) for v in inputs]).mean(0)
    prec = resolve_precision("fp32", "cpu", channels_last=False)
    prep = Preprocess(ds.mean, ds.std, prec.device, channels_last=False)
    r = evaluate_split(model, ds.test, prep, prec, 10, tta=mode)
    assert torch.equal(r.confusion.sum(0), torch.bincount(probs.argmax(1), minlength=10))
    assert r.loss == pytest.approx(float(F.nll_loss(probs.log(), ds.test.labels)), rel=1e-5)


def test_eval_every_skips_epochs_but_always_evaluates_the_last(tmp_path, capsys):
    out = tmp_path / "run"
    result = train(**OPTS, epochs=3, eval_every=2, out=str(out))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_accuracy"] is None for r in lines] == [True, False, False]
    assert lines[0]["val_loss"] is None and isinstance(lines[0]["train_loss"], float)
    assert "(evaluated every 2 epochs)" in capsys.readouterr().out
    # best is chosen among the evaluated epochs only, and the curves are drawn from them
    assert result.best_epoch in (2, 3)
    assert result.best_accuracy == max(lines[1]["val_accuracy"], lines[2]["val_accuracy"])
    assert lines[result.best_epoch - 1]["test_accuracy"] == result.test_accuracy
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = run_cli("report", str(out), "--out", str(tmp_path / "r.html"), check=True)
    assert html.returncode == 0 and (tmp_path / "r.html").stat().st_size > 0


def test_eval_takes_tta_from_the_run_unless_told(reference_run):
    from cnnlab.training.evaluate import evaluate

    out, result = reference_run
    # best.safetensors: the epoch validation chose, trained without tta; its test figure was recorded
    assert evaluate(out).accuracy == pytest.approx(result.test_accuracy, abs=2 / 360)
    flipped = evaluate(out, tta="flip")
    shown = run_cli("eval", str(out), "--tta", "flip", check=True).stdout
    assert f"accuracy {100 * flipped.accuracy:.2f}%" in shown
    assert "--tta" in run_cli("train", "--help", check=True).stdout


def _script(body: str) -> str:
    return textwrap.dedent(
        """
        import os, signal, sys
        from cnnlab.training import Callback, train
        OPTS = __OPTS__
        class Stop(Callback):
            def __init__(self, epoch, step, sig):
                self.at, self.sig = (epoch, step), sig
            def on_step_end(self, trainer, epoch, step):
                if (epoch, step) == self.at:
                    os.kill(os.getpid(), self.sig)
        """
    ).replace("__OPTS__", repr(OPTS)) + textwrap.dedent(body)


@pytest.mark.slow
def test_resume_after_kill_9_equals_uninterrupted(reference_run, tmp_path):
    ref, _ = reference_run
    out = tmp_path / "run"
    # killed with SIGKILL in epoch 2 at step 13; the last checkpoint is step 10 of that epoch
    code = _script("""
        train(**OPTS, epochs=3, out=sys.argv[1], checkpoint_every=5, verbose=False,
              callbacks=[Stop(1, 13, signal.SIGKILL)])
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (out / "metrics.jsonl").read_text().count("\n") > 1  # only epoch 1 finished
    result = train(resume=str(out), verbose=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    _assert_same_weights(_weights(out), _weights(ref))
    _assert_same_weights(_weights(out, "best"), _weights(ref, "best"))


@pytest.mark.slow
def test_sigterm_checkpoints_then_resume_equals_uninterrupted(reference_run, tmp_path):
    ref, _ = reference_run
    out = tmp_path / "run"
    code = _script("""
        from cnnlab.training import TrainingInterrupted
        try:
            train(**OPTS, epochs=3, out=sys.argv[1], verbose=False, callbacks=[Stop(2, 4, signal.SIGTERM)])
        except TrainingInterrupted as e:
            print(e)
            sys.exit(128 + e.signum)
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "epoch 3 at step 4" in proc.stdout
    # the checkpoint written on SIGTERM is the newest: global step 2 * 20 + 4
    assert list_checkpoints(out / "checkpoints")[0].name == "ckpt-00000044.pt"
    proc = run_cli("train", "--resume", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout and "step 4" in proc.stdout
    _assert_same_weights(_weights(out), _weights(ref))
    _assert_same_weights(_weights(out, "best"), _weights(ref, "best"))  # the chosen epoch's, kept across the stop
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


class _PoisonAt(Callback):
    """From (epoch, step) on, the model's input is NaN: the loss becomes NaN at the next step."""

    def __init__(self, epoch, step):
        self.at = (epoch, step)
        self.snapshot = None

    def on_step_end(self, trainer, epoch, step):
        if (epoch, step) == self.at:
            self.snapshot = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            trainer.model.register_forward_pre_hook(lambda m, args: (args[0] * float("nan"),))


def test_non_finite_loss_stops_before_the_optimizer_step(tmp_path):
    poison = _PoisonAt(1, 5)
    with pytest.raises(NonFiniteLossError, match="epoch 2 at step 6") as err:
        train(**OPTS, epochs=3, out=str(tmp_path / "run"), verbose=False, callbacks=[poison])
    assert "last good checkpoint kept" in str(err.value)
    # the weights are those of the last good step: the NaN never reached them
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["ckpt-00000020.pt"]  # end of epoch 1, nothing newer
    saved = torch.load(ckpts[0], weights_only=True)
    assert saved["epoch"] == 1 and all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_non_finite_loss_leaves_weights_untouched(tmp_path):
    poison = _PoisonAt(0, 3)
    model = create_model("simple_cnn", num_classes=10, in_channels=1, input_size=(8, 8))
    with pytest.raises(NonFiniteLossError):
        train(model, "digits", **{k: v for k, v in OPTS.items() if k not in ("model", "data")}, epochs=1,
              out=str(tmp_path / "run"), verbose=False, callbacks=[poison])
    now = model.state_dict()
    for k, v in poison.snapshot.items():
        assert torch.equal(now[k], v), k


def test_cli_non_finite_loss_exits_non_zero(tmp_path):
    proc = run_cli("train", "--model", "simple_cnn", "--data", "digits", "--epochs", "1", "--lr", "1e30",
                   "--optimizer", "sgd", "--schedule", "constant", "--precision", "fp32", "--out", str(tmp_path / "r"))
    assert proc.returncode == 1, proc.stderr
    assert "non-finite loss" in proc.stderr and "epoch 1 at step" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_existing_run_directory_is_not_overwritten(reference_run):
    out, _ = reference_run
    proc = run_cli("train", "--data", "digits", "--out", str(out))
    assert proc.returncode == 2 and "already holds a run" in proc.stderr


@pytest.mark.slow
def test_bf16_accuracy_matches_fp32_within_noise(tmp_path):
    from cnnlab.training.precision import cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16")
    acc = {}
    for prec in ("fp32", "bf16"):
        r = train(**{**OPTS, "augment": "none"}, epochs=4, precision=prec, out=str(tmp_path / prec), verbose=False)
        acc[prec] = r.test_accuracy
    assert acc["fp32"] > 0.85
    assert abs(acc["bf16"] - acc["fp32"]) <= 0.03, acc
