"""Shared test helpers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch


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
