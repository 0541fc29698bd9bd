"""Run folders (cnnlab.core.runlock, hooked into the Trainer): no dead ends, one writer, no overwritten user files.

Trained on scikit-learn's digits; the truth each test checks against is an uninterrupted run of the same
options in another folder (bit-identical weights on CPU), or the bytes of a file before and after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import run_cli

from cnnlab.core.runlock import LOCK_NAME, lock_run_dir
from cnnlab.core.weights import load_safetensors
from cnnlab.errors import CnnlabError
from cnnlab.training import Callback, NonFiniteLossError, train
from cnnlab.training.checkpoint import list_checkpoints

# 1437 training images of 8x8, batch 64 -> 22 steps per epoch; a checkpoint only at the end of each epoch
OPTS = dict(model="simple_cnn", data="digits", batch_size=64, lr=3e-3, augment="flip", seed=3)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs of 1 and 2 epochs: what a reused or resumed folder must end with, bit for bit."""
    root = tmp_path_factory.mktemp("ref")
    for epochs in (1, 2):
        train(**OPTS, epochs=epochs, out=str(root / f"e{epochs}"), verbose=False, plots=False)
    return root


def _same_weights(a, b):
    wa, wb = load_safetensors(a / "last.safetensors"), load_safetensors(b / "last.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _files(folder):
    """Every file below `folder`, as paths relative to it, checkpoints by kind only (their numbers differ)."""
    names = set()
    for root, _, files in os.walk(folder):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), folder)
            names.add("checkpoints/ckpt" if rel.startswith("checkpoints/ckpt-") else rel)
    return names


PRELUDE = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from cnnlab.training import Callback, train
    OPTS = __OPTS__
    class At(Callback):
        def __init__(self, epoch, step, do):
            self.at, self.do = (epoch, step), do
        def on_step_end(self, trainer, epoch, step):
            if (epoch, step) == self.at:
                self.do(trainer)
    def kill9(trainer):
        os.kill(os.getpid(), signal.SIGKILL)
    """
).replace("__OPTS__", repr(OPTS))


def _python(body: str, *args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(body), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


# ---- a folder whose run died before its first checkpoint -----------------------------------------
@pytest.mark.parametrize("how", ["rerun", "resume"])
def test_run_killed_before_its_first_checkpoint_can_be_rerun_or_resumed(reference, tmp_path, how):
    out = tmp_path / "run"
    proc = _python("train(**OPTS, epochs=1, out=sys.argv[1], verbose=False, callbacks=[At(0, 5, kill9)])", out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    assert (out / "config.json").is_file() and not list_checkpoints(out / "checkpoints")  # the dead end
    if how == "rerun":
        done = run_cli("train", "--model", "simple_cnn", "--data", "digits", "--batch-size", "64", "--lr", "3e-3",
                       "--augment", "flip", "--seed", "3", "--epochs", "1", "--quiet", "--out", str(out))
    else:
        done = run_cli("train", "--resume", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stdout.splitlines() if "before its first checkpoint" in line
            or "no checkpoint yet" in line]
    assert len(said) == 1, done.stdout  # one line says the folder starts again
    assert how == "rerun" or "from scratch" in said[0]
    _same_weights(out, reference / "e1")


class _PoisonAt(Callback):
    """From (epoch, step) on, the model's input is NaN: the loss is NaN at the next step."""

    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def on_step_end(self, trainer, epoch, step):
        if (epoch, step) == self.at:
            trainer.model.register_forward_pre_hook(lambda m, args: (args[0] * float("nan"),))


@pytest.mark.parametrize("how", ["rerun", "resume"])
def test_non_finite_loss_before_the_first_checkpoint_leaves_a_folder_that_can_be_used_again(reference, tmp_path, how):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="epoch 1 at step 4"):
        train(**OPTS, epochs=1, out=str(out), verbose=False, plots=False, callbacks=[_PoisonAt(0, 3)])
    assert not list_checkpoints(out / "checkpoints")
    if how == "rerun":
        result = train(**OPTS, epochs=1, out=str(out), verbose=False, plots=False)
    else:
        result = train(resume=str(out), verbose=False, plots=False)
    assert [h["epoch"] for h in result.history] == [1]
    _same_weights(out, reference / "e1")


# ---- one writer at a time ------------------------------------------------------------------------
def test_second_writer_is_refused_while_the_first_holds_the_folder_and_allowed_after_kill_9(reference, tmp_path):
    out, ready = tmp_path / "run", tmp_path / "ready"
    # the first writer checkpoints at step 5 of epoch 1, then stays in the middle of its run
    holder = _python("""
        def hold(trainer):
            Path(sys.argv[2]).touch()
            time.sleep(600)
        train(**OPTS, epochs=2, out=sys.argv[1], checkpoint_every=5, verbose=False, callbacks=[At(0, 7, hold)])
    """, out, ready)
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert holder.poll() is None, holder.communicate()[1]
            assert time.monotonic() < deadline, "the first writer never got to step 7"
            time.sleep(0.1)
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME}

        second = run_cli("train", "--resume", str(out), "--quiet")  # a second --resume of the same folder
        assert second.returncode == 2, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
        assert f"pid {holder.pid}" in second.stderr and str(out) in second.stderr
        with pytest.raises(CnnlabError, match=f"locked: another cnnlab process \\(pid {holder.pid}"):
            train(**OPTS, epochs=2, out=str(out), verbose=False)  # a fresh run into the same --out
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME} == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    assert holder.returncode == -signal.SIGKILL

    # the kernel dropped the lock with the process: the folder resumes from the step-5 checkpoint
    result = train(resume=str(out), verbose=False, plots=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    _same_weights(out, reference / "e2")


def test_lock_is_refused_from_another_process_and_free_once_released(tmp_path):
    out = tmp_path / "run"
    lock = lock_run_dir(out)
    probe = "from cnnlab.core.runlock import lock_run_dir; import sys; lock_run_dir(sys.argv[1]); print('got it')"
    held = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, timeout=120)
    assert held.returncode != 0 and f"pid {os.getpid()}" in held.stderr and "got it" not in held.stdout
    lock.release()
    free = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, timeout=120)
    assert free.returncode == 0 and "got it" in free.stdout, free.stderr


def test_lock_file_planted_as_a_symlink_is_not_followed(tmp_path):
    out, target = tmp_path / "run", tmp_path / "precious.txt"
    out.mkdir()
    target.write_text("keep me\n")
    (out / LOCK_NAME).symlink_to(target)
    with pytest.raises(CnnlabError, match="symbolic link"):
        train(**OPTS, epochs=1, out=str(out), verbose=False)
    assert target.read_text() == "keep me\n"
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


# ---- folders that are not cnnlab's ---------------------------------------------------------------
def test_out_at_a_folder_holding_a_users_metrics_is_refused_and_the_file_is_unchanged(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    text = '{"epoch": 1, "my_score": 0.5}\n{"epoch": 2, "my_score": 0.7}\n'
    (mine / "metrics.jsonl").write_text(text)
    proc = run_cli("train", "--model", "simple_cnn", "--data", "digits", "--epochs", "1", "--quiet", "--out", str(mine))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a cnnlab run folder" in proc.stderr
    with pytest.raises(CnnlabError, match="not a cnnlab run folder"):
        train(**OPTS, epochs=1, out=str(mine), verbose=False)
    assert (mine / "metrics.jsonl").read_text() == text
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.jsonl"]  # nothing added either

    empty = tmp_path / "empty"  # an existing empty folder is fine
    empty.mkdir()
    result = train(**OPTS, epochs=1, out=str(empty), verbose=False, plots=False)
    assert result.path == empty and (empty / "last.safetensors").is_file()


# ---- temporaries of killed atomic writes ---------------------------------------------------------
def test_stale_temporaries_are_removed_on_resume(reference, tmp_path):
    out = tmp_path / "run"
    # epoch 2, step 3: two atomic writes are in progress (one nested in the other) when kill -9 arrives
    proc = _python("""
        from cnnlab.core.files import atomic_write
        def killed_in_writes(trainer):
            run = trainer.run.path
            def inner(f):
                f.write(b"half a checkpoint")
                os.kill(os.getpid(), signal.SIGKILL)
            def outer(f):
                f.write(b'{"epoch": 1')
                atomic_write(run / "checkpoints" / "ckpt-00000099.pt", inner)
            atomic_write(run / "metrics.jsonl", outer)
        train(**OPTS, epochs=2, out=sys.argv[1], verbose=False, plots=False, callbacks=[At(1, 3, killed_in_writes)])
    """, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    clean = _files(reference / "e2") - {LOCK_NAME}  # what an uninterrupted run leaves
    left = _files(out) - clean - {LOCK_NAME}
    assert len(left) == 2 and all(os.path.basename(n).startswith(".") for n in left), left

    result = train(resume=str(out), verbose=False, plots=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert _files(out) - {LOCK_NAME} == clean
    _same_weights(out, reference / "e2")


def test_a_folder_with_finished_epochs_but_no_checkpoints_is_not_restarted(tmp_path):
    """Checkpoints removed by hand from a finished run: starting it from scratch would lose the run."""
    out = tmp_path / "run"
    train(**OPTS, epochs=1, out=str(out), verbose=False, plots=False)
    for p in list_checkpoints(out / "checkpoints"):
        p.unlink()
    weights = (out / "last.safetensors").read_bytes()
    with pytest.raises(CnnlabError, match="cannot resume .* no checkpoint"):
        train(resume=str(out), verbose=False)
    with pytest.raises(CnnlabError, match="will not overwrite .* no checkpoint"):
        train(**OPTS, epochs=1, out=str(out), verbose=False)
    assert (out / "last.safetensors").read_bytes() == weights
