"""The C-kernel loader (cnnlab.layers._native) never loads a library another user planted: not from a folder
another user owns or can write, not from a file another user owns or can write, not through a link. Each
refusal is reported in one line. A control run shows the planted library is loadable (its constructor runs)
where the checks pass, so the refusals are what keeps it out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.layers import _native

pytestmark = pytest.mark.skipif(_native._compiler() is None or sys.platform not in ("linux", "darwin"),
                                reason="needs a C compiler")

_PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(getenv("PLANTED_MARKER"), "w");
    if (f) fclose(f);
}
"""
_LOAD = "from cnnlab.layers import _native; _native.library(); print(_native.status())"
OTHER_UID = 12345


def _python(tmp: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp / "tmpdir"), "PLANTED_MARKER": str(tmp / "planted-ran"), **env}
    (tmp / "tmpdir").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-c", _LOAD], capture_output=True, text=True, timeout=300, env=env)


def _plant(tmp: Path, folder: Path) -> Path:
    """Build the real kernel into `folder` (to learn the file name the loader computes), then put a library
    with a visible side effect under that name."""
    run = _python(tmp, CNNLAB_NATIVE_CACHE=str(folder))
    assert "C kernels on" in run.stdout, run.stderr
    (target,) = folder.glob("maxpool2x2-*.so")
    src = tmp / "planted.c"
    src.write_text(_PLANTED)
    evil = tmp / "planted.so"
    subprocess.run([_native._compiler(), "-shared", "-fPIC", "-o", str(evil), str(src)], check=True)
    shutil.copyfile(evil, target)
    return target


def _refused(run: subprocess.CompletedProcess, tmp: Path, reason: str) -> None:
    assert run.returncode == 0, run.stderr
    assert not (tmp / "planted-ran").exists(), "the planted library was loaded"
    lines = [line for line in run.stderr.splitlines() if "not loading from" in line]
    assert len(lines) == 1 and reason in lines[0], run.stderr


def test_control_a_planted_library_in_ones_own_folder_does_run(tmp_path):
    folder = tmp_path / "cache"
    _plant(tmp_path, folder)
    run = _python(tmp_path, CNNLAB_NATIVE_CACHE=str(folder))
    assert (tmp_path / "planted-ran").exists()  # loaded (then found lacking the kernels, removed, rebuilt)
    assert "C kernels on" in run.stdout


def test_a_world_writable_folder_is_not_loaded_from(tmp_path):
    folder = tmp_path / "cache"
    _plant(tmp_path, folder)
    folder.chmod(0o777)
    run = _python(tmp_path, CNNLAB_NATIVE_CACHE=str(folder))
    _refused(run, tmp_path, "can be written by other users (mode 777)")
    assert "C kernels on" in run.stdout  # built again in the private temporary folder instead


def test_a_group_writable_file_is_not_loaded(tmp_path):
    folder = tmp_path / "cache"
    _plant(tmp_path, folder).chmod(0o775)
    _refused(_python(tmp_path, CNNLAB_NATIVE_CACHE=str(folder)), tmp_path, "can be written by other users (mode 775)")


def test_a_link_is_not_followed(tmp_path):
    folder = tmp_path / "cache"
    target = _plant(tmp_path, folder)
    target.unlink()
    target.symlink_to(tmp_path / "planted.so")
    _refused(_python(tmp_path, CNNLAB_NATIVE_CACHE=str(folder)), tmp_path, "without following links")


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_a_foreign_file_in_ones_own_folder_is_not_loaded(tmp_path):
    folder = tmp_path / "cache"
    os.chown(_plant(tmp_path, folder), OTHER_UID, OTHER_UID)
    _refused(_python(tmp_path, CNNLAB_NATIVE_CACHE=str(folder)), tmp_path, f"is owned by uid {OTHER_UID}")


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_a_library_planted_in_the_shared_temporary_folder_is_ignored(tmp_path):
    """The case of issue 15: the user cache cannot be written, so the loader falls back to
    $TMPDIR/cnnlab-native-<uid>/, which another user created first and filled."""
    shared = tmp_path / "tmpdir" / f"cnnlab-native-{os.getuid()}"
    target = _plant(tmp_path, shared)
    os.chown(target, OTHER_UID, OTHER_UID)
    os.chown(shared, OTHER_UID, OTHER_UID)
    run = _python(tmp_path, CNNLAB_NATIVE_CACHE="/dev/null/cannot-be-a-folder")
    _refused(run, tmp_path, f"the folder {shared} is owned by uid {OTHER_UID}, not by you")
    assert f"C kernels off: not loading from {shared}" in run.stdout  # status() says why


def test_cnnlab_native_build_builds_once_and_says_so(tmp_path):
    env = {**os.environ, "CNNLAB_NATIVE_CACHE": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "cnnlab.cli.main", "native", "build"]
    first = subprocess.run(cli, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("C kernels on") and first.stderr.count("compiling the C max-pool kernel") == 1
    second = subprocess.run(cli, capture_output=True, text=True, timeout=300, env=env)
    assert second.stdout == first.stdout and "compiling" not in second.stderr
    imported = subprocess.run([sys.executable, "-c", "import sys, cnnlab.cli.cmd_native; print('torch' in sys.modules)"],
                              capture_output=True, text=True, timeout=60)
    assert imported.stdout.strip() == "False"  # `cnnlab --help` stays free of torch
