"""DDP under torchrun with 2 gloo processes on CPU: identical weights on both ranks, the accuracy of one
process with the same global batch, and a rank that dies is restarted and the run continues."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cnnlab.core.weights import load_safetensors
from cnnlab.training import train

# fp32 and no augmentation: two half-batches averaged by DDP are then the same gradient as one batch
OPTS = dict(model="simple_cnn", data="digits", epochs=3, batch_size=64, lr=3e-3, precision="fp32", augment="none", seed=5)

WORKER = textwrap.dedent(
    """
    import os, sys, torch
    from cnnlab.training import Callback, train
    OPTS, out, fail = %r, sys.argv[1], sys.argv[2] == "fail"
    rank, attempt = int(os.environ["RANK"]), int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))

    class DieOnce(Callback):
        def on_step_end(self, trainer, epoch, step):
            if fail and attempt == 0 and rank == 1 and (epoch, step) == (1, 3):
                os._exit(17)  # a crash in epoch 2, after the epoch-1 checkpoint

    result = train(**OPTS, out=out, quiet=rank != 0, progress=False, callbacks=[DieOnce()])
    torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, f"{out}/rank{rank}.pt")
    print(f"rank {rank} attempt {attempt} done")
    """
)


def _torchrun(tmp_path, out, *, fail: bool) -> subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(WORKER % (OPTS,))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--max-restarts={1 if fail else 0}", str(script), str(out), "fail" if fail else "ok"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CNNLAB_DDP_TIMEOUT": "60"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "run"
    proc = _torchrun(tmp, out, fail=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(ddp_run):
    r0 = torch.load(ddp_run / "rank0.pt", weights_only=True)
    r1 = torch.load(ddp_run / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    cfg = json.loads((ddp_run / "config.json").read_text())
    assert cfg["world_size"] == 2


@pytest.mark.slow
def test_ddp_accuracy_equals_one_process_with_the_same_global_batch(ddp_run, tmp_path):
    single = train(**OPTS, out=str(tmp_path / "single"), verbose=False)
    ddp = [json.loads(x) for x in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    assert len(ddp) == 3
    # the same validation figures, so the same chosen epoch, whose test accuracy is the result
    for a, b in zip(ddp, single.history, strict=True):
        assert abs(a["val_accuracy"] - b["val_accuracy"]) <= 1.01 / 142
    chosen = [r for r in ddp if r.get("chosen")]
    assert [r["epoch"] for r in chosen] == [single.best_epoch]
    assert abs(chosen[0]["test_accuracy"] - single.test_accuracy) <= 0.005
    assert single.test_accuracy > 0.8


@pytest.mark.slow
@pytest.mark.long
def test_rank_that_dies_is_restarted_and_the_run_continues(ddp_run, tmp_path):
    out = tmp_path / "run"
    proc = _torchrun(tmp_path, out, fail=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "rank 1 attempt 1 done" in proc.stdout or (out / "rank1.pt").exists()
    assert "resuming" in proc.stdout
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # resumed from the epoch-1 checkpoint, it ends exactly where the uninterrupted DDP run ended
    for which in ("last", "best"):  # best: the chosen epoch's weights, kept across the restart
        a, b = load_safetensors(out / f"{which}.safetensors"), load_safetensors(ddp_run / f"{which}.safetensors")
        for k in a:
            assert torch.equal(a[k], b[k]), (which, k)
