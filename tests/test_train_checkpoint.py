"""Crash-safe files: atomic writes, rotation that keeps the last good checkpoint, fallback, safe loading."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from cnnlab.core import files, weights
from cnnlab.errors import CnnlabError
from cnnlab.training import checkpoint as ck


def test_atomic_write_failure_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old and good")

    def crash_while_writing(f):
        f.write(b"half of the new fi")
        raise OSError("disk full")  # the process dies mid-write

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(target, crash_while_writing)
    assert target.read_bytes() == b"old and good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]


def test_atomic_write_fsyncs_before_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    files.atomic_write(tmp_path / "f", b"data")
    assert events.index("fsync") < events.index("replace")
    assert (tmp_path / "f").read_bytes() == b"data"


def test_rotation_never_deletes_the_last_good_checkpoint_first(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    ck.save_checkpoint(folder, {"model": {"w": torch.ones(2)}}, index=1, keep=1)

    def dies_in_torch_save(obj, f, *a, **k):
        raise RuntimeError("killed while saving")

    monkeypatch.setattr(ck.torch, "save", dies_in_torch_save)
    with pytest.raises(RuntimeError):
        ck.save_checkpoint(folder, {"model": {"w": torch.zeros(2)}}, index=2, keep=1)
    assert [p.name for p in ck.list_checkpoints(folder)] == ["ckpt-00000001.pt"]
    state, _ = ck.load_latest_checkpoint(folder, log=lambda m: None)
    assert torch.equal(state["model"]["w"], torch.ones(2))


def test_rotation_keeps_the_newest(tmp_path):
    folder = tmp_path / "c"
    for i in range(1, 5):
        ck.save_checkpoint(folder, {"model": {"i": torch.tensor(i)}}, index=i, keep=2)
    assert [p.name for p in ck.list_checkpoints(folder)] == ["ckpt-00000004.pt", "ckpt-00000003.pt"]


def test_unreadable_newest_checkpoint_falls_back_and_says_so(tmp_path):
    folder = tmp_path / "c"
    ck.save_checkpoint(folder, {"model": {"w": torch.full((3,), 1.0)}}, index=1, keep=3)
    newest = ck.save_checkpoint(folder, {"model": {"w": torch.full((3,), 2.0)}}, index=2, keep=3)
    newest.write_bytes(newest.read_bytes()[:40])  # truncated, as if the disk lost its tail
    messages = []
    state, path = ck.load_latest_checkpoint(folder, log=messages.append)
    assert path.name == "ckpt-00000001.pt"
    assert torch.equal(state["model"]["w"], torch.full((3,), 1.0))
    assert any("ckpt-00000002.pt is unreadable" in m for m in messages)


class _Evil:
    """Unpickling this would run code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "ckpt-00000001.pt"
    with open(bad, "wb") as f:
        pickle.dump({"model": _Evil(marker)}, f)
    with pytest.raises(CnnlabError, match="refused to load"):
        weights.safe_torch_load(bad)
    with pytest.raises(CnnlabError, match="refused to load"):
        ck.load_latest_checkpoint(tmp_path, log=lambda m: None)
    assert not marker.exists()
    # the same through torch.save, the way a tampered checkpoint would be made
    torch.save({"model": _Evil(marker)}, bad)
    with pytest.raises(CnnlabError):
        weights.safe_torch_load(bad)
    assert not marker.exists()


def test_rng_states_load_with_weights_only(tmp_path):
    gen = torch.Generator().manual_seed(123)
    torch.manual_seed(7)
    state = ck.rng_state(gen)
    expected_global, expected_gen = torch.rand(4), torch.rand(4, generator=gen)
    path = tmp_path / "s.pt"
    torch.save({"rng": state}, path)
    loaded = torch.load(path, weights_only=True)["rng"]
    gen2 = torch.Generator()
    ck.set_rng_state(loaded, gen2)
    assert torch.equal(torch.rand(4), expected_global)
    assert torch.equal(torch.rand(4, generator=gen2), expected_gen)


def test_safetensors_roundtrip_and_corrupt_file(tmp_path):
    state = {"w": torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last), "n": torch.tensor(3)}
    path = weights.save_safetensors(tmp_path / "m.safetensors", state)
    loaded = weights.load_safetensors(path)
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["n"], state["n"])
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CnnlabError, match="cannot read weights"):
        weights.load_safetensors(path)
