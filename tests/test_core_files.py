"""cnnlab.core.files: atomic writes never follow a planted link, leave nothing behind on failure, and give
new files the mode a plain open() gives, without touching the umask (issue 15, class 2; issue 14, item 4)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import cnnlab.core.files as files
from cnnlab.core.files import atomic_path, atomic_write, atomic_write_json, atomic_write_text
from cnnlab.core.run import ModelCard, RunDir
from cnnlab.models import create_model
from cnnlab.training.export import export

posix = pytest.mark.skipif(sys.platform.startswith("win"), reason="symlinks and umask are POSIX")


def _umask() -> int:
    """The process umask as the kernel reports it (Linux), without setting it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    pytest.skip("no Umask line in /proc/self/status")


@pytest.fixture
def outside(tmp_path):
    """A file outside the destination folder that a planted link points at."""
    target = tmp_path / "outside" / "precious.txt"
    target.parent.mkdir()
    target.write_text("do not touch")
    return target


@pytest.fixture
def predictable(monkeypatch):
    """Make the next temporary names known in advance: each call of temp_name returns the next of
    `names`, then fresh random names. Returns the list, to be filled by the test."""
    names: list[str] = []
    real = files.temp_name

    def fake(name: str) -> str:
        return names.pop(0) if names else real(name)

    monkeypatch.setattr(files, "temp_name", fake)
    return names


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(files.TEMP_SUFFIX))


@posix
@pytest.mark.parametrize("dangling", [False, True])
def test_atomic_write_never_follows_a_planted_link(tmp_path, outside, predictable, dangling):
    folder = tmp_path / "run"
    folder.mkdir()
    target = outside.parent / "new.txt" if dangling else outside  # a dangling link would create a file there
    planted = [f".out.json.{i:016x}.tmp" for i in range(3)]
    for name in planted:
        (folder / name).symlink_to(target)
    predictable.extend(planted)  # the writer's first three names are all taken by links
    atomic_write_text(folder / "out.json", "new content")
    assert (folder / "out.json").read_text() == "new content"
    assert not (folder / "out.json").is_symlink()
    assert outside.read_text() == "do not touch"
    assert not (outside.parent / "new.txt").exists()
    assert all((folder / name).is_symlink() for name in planted)  # left alone, not followed or removed


@posix
def test_atomic_path_never_follows_a_planted_link(tmp_path, outside, predictable):
    folder = tmp_path / "export"
    folder.mkdir()
    planted = ".best.onnx.0000000000000000.tmp"
    (folder / planted).symlink_to(outside.parent)  # a link to a folder: writing "into" it would escape
    predictable.append(planted)
    with atomic_path(folder / "best.onnx") as tmp:
        assert tmp.parent.name != planted and not tmp.exists()
        assert stat.S_IMODE(tmp.parent.stat().st_mode) == 0o700 and not tmp.parent.is_symlink()
        tmp.write_bytes(b"onnx bytes")  # what an exporter does with the path it is given
    assert (folder / "best.onnx").read_bytes() == b"onnx bytes"
    assert sorted(p.name for p in outside.parent.iterdir()) == ["precious.txt"]
    assert outside.read_text() == "do not touch"
    assert _leftovers(folder) == [planted]  # only the planted link: the private folder is gone


@posix
@pytest.mark.filterwarnings("ignore::FutureWarning")  # TorchScript is deprecated upstream
def test_export_does_not_follow_a_link_at_its_old_fixed_temporary_name(tmp_path, outside):
    # the old export wrote through RUN/export/.<name>.partial: a run folder with a link there overwrote `outside`
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=10, in_channels=1)
    card = ModelCard("simple_cnn", {}, 10, [str(i) for i in range(10)], (1, 28, 28), (0.5,), (0.25,), "test", 1)
    run = RunDir(tmp_path / "run")
    run.save_weights("best", model, card)
    (run.path / "export").mkdir()
    (run.path / "export" / ".best.pt.partial").symlink_to(outside)
    path = export(run.path, "torchscript")
    assert path == run.path / "export" / "best.pt" and path.stat().st_size > 0 and not path.is_symlink()
    assert outside.read_text() == "do not touch"
    assert _leftovers(run.path / "export") == []


def test_a_failing_write_leaves_no_temporary_and_the_old_file(tmp_path):
    path = atomic_write_text(tmp_path / "metrics.jsonl", "old\n")

    def broken(f):
        f.write(b"half a line")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old\n"
    assert _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError, match="exporter failed"), atomic_path(tmp_path / "m.onnx") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("exporter failed")
    assert not (tmp_path / "m.onnx").exists()
    assert _leftovers(tmp_path) == []


def test_a_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "m.onnx"):
        pass
    assert list(tmp_path.iterdir()) == []


@posix
def test_new_files_get_the_mode_of_a_plain_open_and_the_umask_is_never_touched(tmp_path, monkeypatch):
    real_umask = os.umask
    old = real_umask(0o027)  # the test sets it; the code under test must not
    try:
        def forbidden(*_):
            raise AssertionError("os.umask called: reading the umask means changing it, process-wide")

        monkeypatch.setattr(os, "umask", forbidden)
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        with atomic_path(tmp_path / "b.onnx") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"x")
        with open(tmp_path / "c.json", "w") as f:  # what the user expects: the same as this
            f.write("{}")
        monkeypatch.undo()
        assert _umask() == 0o027
    finally:
        real_umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"a.json": 0o640, "b.onnx": 0o640, "c.json": 0o640}


def test_the_same_weights_give_the_same_bytes_in_every_process(tmp_path):
    # safetensors orders metadata differently from process to process; cnnlab's files must not differ
    code = ("import sys, torch; from cnnlab.core.weights import save_safetensors\n"
            "state = {'b': torch.arange(6.0).view(2, 3), 'a': torch.ones(4, dtype=torch.bfloat16)}\n"
            "save_safetensors(sys.argv[1], state, metadata={k: str(i) for i, k in enumerate('format model epoch x y'.split())})\n")
    blobs = set()
    for i in range(4):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{i}.safetensors")], check=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        blobs.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    loaded = load_file(str(tmp_path / "0.safetensors"))
    assert torch.equal(loaded["b"], torch.arange(6.0).view(2, 3)) and loaded["a"].dtype == torch.bfloat16
    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "0", "model": "1", "epoch": "2", "x": "3", "y": "4"}
