"""Shared test helpers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FASHION = Path("/usr/share/datasets/fashion-mnist")  # where Debian's dataset-fashion-mnist puts the files
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason=f"Fashion-MNIST not installed at {FASHION}")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run `cnnlab ARGS...` in a fresh interpreter, as a user would; returns the completed process."""
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlab", *args], capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"cnnlab {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def check_experiment_files(folder: Path) -> dict:
    """The files of a `--quick` experiment run in `folder`: a quick result.json with a claim and a verdict,
    a real PNG plot and a table.md with the verdict line. Returns the parsed result.json."""
    saved = json.loads((folder / "result.json").read_text())
    assert saved["quick"] is True and saved["verdict"] in ("supported", "contradicted", "inconclusive")
    assert saved["claim"] and saved["outcome"]["verdict"]
    png = (folder / "plot.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 1000
    assert "**Verdict:" in (folder / "table.md").read_text()
    return saved


class Crash(Exception):
    """Raised by `StopAt` to simulate a crash mid-run."""


class StopAt:
    """A training callback that raises `Crash` when the run reaches (0-based epoch, step)."""

    def __init__(self, epoch: int, step: int):
        self.at = (epoch, step)

    def on_step_end(self, trainer, epoch, step):
        if (epoch, step) == self.at:
            raise Crash
