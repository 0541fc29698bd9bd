"""A library call changes nothing process-wide (issue 14, item 4).

A fresh interpreter imports cnnlab, runs an augmentation pipeline, trains on digits (which writes a run
folder with its figures) and draws its worst errors (`cnnlab.show_errors`); before and after, it measures:

- malloc: whether glibc serves a 64 MiB block with its own mmap (`mallinfo2().hblks` goes up by one while
  it is held). glibc's default threshold adapts but never beyond 32 MiB, so a 64 MiB block is always
  mmapped unless someone raised M_MMAP_THRESHOLD (what `cnnlab.runtime.tune_allocator` does).
- matplotlib's backend: MPLBACKEND is set to "svg" (not Agg) and must stay; pyplot is never imported.
- the umask: set to 0o027 first, read from /proc/self/status (reading it with os.umask would change it),
  and the files cnnlab wrote get mode 0o640, as a plain open() would give them.
- module types: every module keeps its type, and every cnnlab module is a plain `types.ModuleType`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(r'''
    import ctypes, json, os, sys, tempfile, types
    from pathlib import Path

    os.umask(0o027)

    def umask():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                  "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def big_block_is_mmapped():
        before = libc.mallinfo2().hblks
        p = libc.malloc(64 << 20)
        held = libc.mallinfo2().hblks
        libc.free(p)
        return held == before + 1

    def module_types():
        return {name: f"{type(m).__module__}.{type(m).__qualname__}" for name, m in list(sys.modules.items())
                if m is not None}

    import matplotlib
    state = {"before": {"mmapped": big_block_is_mmapped(), "backend": matplotlib.get_backend(), "umask": umask(),
                        "pyplot": "matplotlib.pyplot" in sys.modules}}
    types_before = module_types()

    import torch
    import cnnlab
    pipeline = cnnlab.parse_pipeline("lecture")
    pipeline(torch.rand(16, 1, 28, 28), torch.Generator().manual_seed(0))
    out = Path(tempfile.mkdtemp()) / "run"
    run = cnnlab.train(model="simple_cnn", data="digits", epochs=1, batch_size=256, out=str(out), verbose=False)
    cnnlab.show_errors(out, count=4, out=out / "errors.png")  # a matplotlib figure, through the public API

    types_after = module_types()
    state["after"] = {"mmapped": big_block_is_mmapped(), "backend": matplotlib.get_backend(), "umask": umask(),
                      "pyplot": "matplotlib.pyplot" in sys.modules}
    state["modes"] = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    state["changed_types"] = {n: [types_before[n], t] for n, t in types_after.items()
                              if n in types_before and types_before[n] != t}
    state["new_cnnlab_types"] = {n: t for n, t in types_after.items()
                                 if n not in types_before and (n == "cnnlab" or n.startswith("cnnlab."))}
    print("STATE " + json.dumps(state))
''')

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="measures glibc malloc and /proc")


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "CNNLAB_NO_MALLOC_TUNING", "MPLBACKEND")}
    env.update(MPLBACKEND="svg", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
               XDG_CACHE_HOME=str(tmp_path_factory.mktemp("cache")))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("STATE ")]
    return json.loads(line[len("STATE "):])


@glibc
def test_malloc_settings_are_left_alone(state):
    assert state["before"]["mmapped"] is True  # the probe works: glibc's default serves 64 MiB with mmap
    assert state["after"]["mmapped"] is True, "a library call raised glibc's mmap threshold (tune_allocator)"


@glibc
def test_matplotlib_backend_is_left_alone(state):
    assert state["before"]["backend"] == "svg"
    assert state["after"]["backend"] == "svg"
    assert state["after"]["pyplot"] is False  # figures are drawn without pyplot's global figure manager


@glibc
def test_umask_is_left_alone_and_files_get_its_mode(state):
    assert state["before"]["umask"] == state["after"]["umask"] == 0o027
    modes = state["modes"]
    assert {"config.json", "last.safetensors", "last.json", "curves.png", "errors.png"} <= set(modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o640} == {}


@glibc
def test_module_types_are_left_alone(state):
    assert state["changed_types"] == {}
    new = state["new_cnnlab_types"]
    assert "cnnlab.training" in new, "the probe did not train"  # the package that once swapped its own type
    assert all(t == "builtins.module" for t in new.values()), new
