"""Weight averaging: the EMA callback against torch's AveragedModel, its files and resume after kill -9;
`cnnlab average` (SWA over checkpoints) against a hand-computed mean and hand-computed batch-norm statistics."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnnlab.core.weights import load_safetensors
from cnnlab.data import load_dataset
from cnnlab.errors import CnnlabError
from cnnlab.training import Callback, TrainConfig, Trainer, evaluate, train
from cnnlab.training.averaging import EMA, average_checkpoints
from cnnlab.training.checkpoint import list_checkpoints
from cnnlab.training.run import build_model

# A small net with batch norm (so there are running statistics to average), on digits' 8x8 images.
SPEC = "conv3x3-16/bn relu maxpool2 conv3x3-32/bn relu maxpool2 fc10"
# 1,295 training images after the 10% validation hold-out; batch 64 -> 20 steps per epoch.
OPTS = dict(model=SPEC, data="digits", batch_size=64, lr=3e-3, seed=5, val_fraction=0.1, ema=0.9,
            early_stop=5, schedule="plateau", plateau_patience=0, keep_checkpoints=3, precision="fp32",
            eval_test_every_epoch=True)  # the EMA is tested where the raw model is: every epoch here


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """Three uninterrupted epochs with EMA, early stopping and the plateau schedule (their state all
    travels in the checkpoints); the resume test must reproduce it bit for bit."""
    out = tmp_path_factory.mktemp("ema") / "run"
    result = train(**OPTS, epochs=3, out=str(out), verbose=False)
    return out, result


def _warmed_up_ema(decay):
    """The EMA update with TensorFlow's warm-up, written out: after n updates, decay min(decay, (1+n)/(10+n))."""
    def update(averaged, current, n_averaged):
        n = int(n_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(averaged, current, n_averaged)
    return update


class _TorchEMA(Callback):
    """Reference: torch's own AveragedModel with its EMA update, fed the raw weights after every step."""

    def on_fit_start(self, trainer):
        self.ref = AveragedModel(trainer.model, multi_avg_fn=_warmed_up_ema(0.3), use_buffers=True)

    def on_step_end(self, trainer, epoch, step):
        self.ref.update_parameters(trainer.model)


def test_ema_computes_what_torch_averaged_model_computes():
    # decay 0.3: the warm-up's (1+n)/(10+n) is below it for the first two updates, above it from the third
    cfg = TrainConfig(model=SPEC, data="digits", batch_size=128, max_steps=7, ema=0.3, precision="fp32")
    reference = _TorchEMA()
    trainer = Trainer(cfg, save=False, evaluate=False, quiet=True, callbacks=[reference])
    trainer.fit()
    ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMA))
    assert ema.updates == 7
    assert [ema.decay_at(n) for n in (1, 2, 3, 100_000)] == [2 / 11, 3 / 12, 0.3, 0.3]
    ours, theirs, raw = ema.module.state_dict(), reference.ref.module.state_dict(), trainer.model.state_dict()
    for key, value in ours.items():
        if value.is_floating_point():  # weights and running statistics: the same lerps, bit for bit
            assert torch.equal(value, theirs[key]), key
        else:  # num_batches_tracked: copied from the model (AveragedModel would average the counter)
            assert torch.equal(value, raw[key]), key
    # the running statistics are averaged, not copied: they lag the model's
    assert not torch.equal(ours["features.1.running_mean"], raw["features.1.running_mean"])
    # and the EMA leaves training alone: the same run without it ends with the same raw weights, bit for bit
    plain = Trainer(dataclasses.replace(cfg, ema=None), save=False, evaluate=False, quiet=True)
    plain.fit()
    _same(plain.model.state_dict(), raw)


def test_ema_files_records_and_eval(ema_run):
    out, result = ema_run
    assert {"ema.safetensors", "ema.json"} <= {p.name for p in out.iterdir()}
    for record in result.history:
        for key in ("val_loss", "val_accuracy", "ema_val_loss", "ema_val_accuracy"):
            assert isinstance(record[key], float), key
        # the test split is evaluated per epoch only with --eval-test-every-epoch: the EMA's test figure is there
        # only where the raw model's was (the chosen epoch's record gets the raw weights' one test figure later)
        assert record["ema_test_accuracy"] is None or record["test_accuracy"] is not None
    last = result.history[-1]
    card = json.loads((out / "ema.json").read_text())
    assert card["epoch"] == 3 and card["accuracy"] == last["ema_val_accuracy"]
    # independent: rebuild the net, load ema.safetensors, normalise by hand, count hits in fp32
    model = build_model(SPEC, (1, 8, 8), 10)
    model.load_state_dict(load_safetensors(out / "ema.safetensors"))
    model.eval()
    ds = load_dataset("digits")
    x = (ds.test.images.float() / 255 - card["mean"][0]) / card["std"][0]
    with torch.no_grad():
        logits = model(x)
    assert float((logits.argmax(1) == ds.test.labels).double().mean()) == pytest.approx(last["ema_test_accuracy"], abs=1e-9)
    assert float(F.cross_entropy(logits, ds.test.labels)) == pytest.approx(last["ema_test_loss"], rel=1e-4)
    shown = run_cli("eval", str(out), "--weights", "ema", check=True).stdout
    assert shown.startswith("weights: ema")
    assert f"\naccuracy {100 * last['ema_test_accuracy']:.2f}% on 360 images" in shown


@pytest.mark.slow
def test_resume_after_kill_9_gives_bit_identical_raw_and_ema_weights(ema_run, tmp_path):
    ref, reference = ema_run
    out = tmp_path / "run"
    code = textwrap.dedent("""
        import os, signal, sys
        from cnnlab.training import Callback, train
        class Kill(Callback):
            def on_step_end(self, trainer, epoch, step):
                if (epoch, step) == (1, 13):
                    os.kill(os.getpid(), signal.SIGKILL)
        train(**__OPTS__, epochs=3, out=sys.argv[1], checkpoint_every=5, verbose=False, callbacks=[Kill()])
    """).replace("__OPTS__", repr(OPTS))
    # killed in epoch 2 at step 13; the newest checkpoint is step 10 of that epoch (global step 30)
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert list_checkpoints(out / "checkpoints")[0].name == "ckpt-00000030.pt"
    saved = torch.load(list_checkpoints(out / "checkpoints")[0], weights_only=True)
    assert saved["callbacks"]["EMA"]["updates"] == 30 and "PlateauSchedule" in saved["callbacks"]
    result = train(resume=str(out), verbose=False)
    _same(load_safetensors(out / "last.safetensors"), load_safetensors(ref / "last.safetensors"))
    _same(load_safetensors(out / "ema.safetensors"), load_safetensors(ref / "ema.safetensors"))
    drop = ("seconds", "train_seconds", "images_per_second")
    assert ([{k: v for k, v in r.items() if k not in drop} for r in result.history]
            == [{k: v for k, v in r.items() if k not in drop} for r in reference.history])


def test_average_last_3_is_the_mean_with_batch_norm_statistics_recomputed(ema_run):
    out, _ = ema_run
    ckpts = list_checkpoints(out / "checkpoints")[:3]
    proc = run_cli("average", str(out), "--last", "3", "--batch-size", "4096", "--device", "cpu", check=True)
    assert f"averaged 3 checkpoints ({', '.join(p.name for p in reversed(ckpts))})" in proc.stdout
    assert "recomputed on 1,295 training images" in proc.stdout
    swa = load_safetensors(out / "swa.safetensors")
    states = [torch.load(p, weights_only=True)["model"] for p in ckpts]
    for key in ("features.0.weight", "features.1.weight", "features.4.weight", "classifier.1.bias"):
        torch.testing.assert_close(swa[key], torch.stack([s[key] for s in states]).mean(0), rtol=1e-6, atol=1e-7)

    # Batch-norm statistics by hand: one batch holds the whole training split, so each layer's running mean
    # and (unbiased) variance are those of its input over all images, the earlier layers normalising with
    # the batch's own (biased) statistics as they do in training mode.
    ds = load_dataset("digits", val_fraction=0.1, seed=5)
    card = json.loads((out / "swa.json").read_text())
    x = (ds.train.images.float() / 255 - card["mean"][0]) / card["std"][0]  # (1295, 1, 8, 8)
    for conv, bn in (("features.0", "features.1"), ("features.4", "features.5")):
        y = F.conv2d(x, swa[f"{conv}.weight"], padding=1)  # (N, C, H, W)
        mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=True)
        torch.testing.assert_close(swa[f"{bn}.running_mean"], mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(swa[f"{bn}.running_var"], var, rtol=1e-4, atol=1e-5)
        y = (y - mean.view(1, -1, 1, 1)) / (y.var((0, 2, 3), unbiased=False).view(1, -1, 1, 1) + 1e-5).sqrt()
        y = y * swa[f"{bn}.weight"].view(1, -1, 1, 1) + swa[f"{bn}.bias"].view(1, -1, 1, 1)
        x = F.max_pool2d(F.relu(y), 2)
    # what `cnnlab eval RUN --weights swa` reads is what `cnnlab average` printed for the test split
    swa_line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("swa:"))
    assert f"test accuracy {100 * evaluate(out, which='swa').accuracy:.2f}%" in swa_line


def test_average_refuses_more_checkpoints_than_the_run_kept(ema_run):
    out, _ = ema_run
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(CnnlabError, match=r"keeps 3 checkpoints .*fewer than --last 4; train with --keep-checkpoints 4"):
        average_checkpoints(out, last=4)
    assert sorted(p.name for p in out.iterdir()) == before
