"""benchmarks/gpu_check.sh, the script a lent GPU machine runs, is ready: valid bash, and its --dry-run
passes on a CPU machine (it prints each step's command and runs none)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, capture_output=True, timeout=30)


def test_dry_run_passes_and_names_every_step():
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for step in ("machine", "CUDA tests", "throughput on CUDA", "time to 94% Fashion-MNIST on CUDA"):
        assert f"=== {step}" in out.stdout
    assert "--device cuda" in out.stdout and "fashion-mnist-94-fast" in out.stdout
    assert "OK (nothing was run)" in out.stdout


def test_an_unknown_option_is_one_line_and_exit_2():
    out = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--bogus" in out.stderr
