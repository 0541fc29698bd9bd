"""cnnlab's C kernels: compiled on first use with the system C compiler, cached, loaded with ctypes.

Only `maxpool2x2.c` for now (see `cnnlab.layers.maxpool2x2`). Nothing here is required: without a C
compiler, on a platform where the build or the load fails, or with `CNNLAB_NATIVE=0`, `library()` returns
None and the callers use PyTorch's operators, which compute the same values.

The shared library is built once per source, compiler and platform into `$CNNLAB_NATIVE_CACHE` (default
`<user cache>/cnnlab/native`), written under a temporary name and renamed into place, so processes that
build at the same time (DDP ranks) never load a half-written file. A build takes well under a second.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from cnnlab.core.paths import native_cache_dir

_SOURCE = Path(__file__).with_name("maxpool2x2.c")
_ENV_OFF = "CNNLAB_NATIVE"
# -fopenmp: the kernels split a batch over OpenMP threads. Loaded after torch, `libgomp.so.1` resolves to
# the copy torch already loaded (same soname), so they run on torch's own thread pool.
_FLAG_SETS = (["-O3", "-fPIC", "-shared", "-fopenmp"], ["-O3", "-fPIC", "-shared"])

_lock = threading.Lock()
_state: dict = {"done": False, "lib": None, "why": "not loaded yet"}


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


def _build(cc: str, out_dir: Path) -> tuple[Path | None, str]:
    """Compile the source into out_dir (or find it there); (path, "") or (None, why)."""
    source = _SOURCE.read_bytes()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"the C compiler {cc} does not run ({e})"
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(flags).encode(),
                                         platform.machine().encode(), platform.system().encode()])).hexdigest()[:16]
        path = out_dir / f"maxpool2x2-{key}.so"
        if path.is_file():
            return path, ""
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so.part", dir=out_dir)
        os.close(fd)
        try:
            run = subprocess.run([cc, *flags, "-o", tmp, str(_SOURCE)], capture_output=True, text=True, timeout=120)
            if run.returncode == 0:
                os.replace(tmp, path)
                return path, ""
            errors.append(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}")
        except (OSError, subprocess.SubprocessError) as e:
            errors.append(str(e))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return None, f"{cc} could not build {_SOURCE.name}: {errors[-1]}"


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.cnnlab_maxpool2x2_forward.argtypes = [c_int, ptr, ptr, ptr, i64, i64, i64, i64, i64, c_int, c_int]
    lib.cnnlab_maxpool2x2_backward.argtypes = [c_int, ptr, ptr, ptr, i64, i64, i64, i64, i64, c_int]
    for name in ("cnnlab_maxpool2x2_forward", "cnnlab_maxpool2x2_backward", "cnnlab_maxpool2x2_simd",
                 "cnnlab_maxpool2x2_openmp"):
        getattr(lib, name).restype = c_int
    return lib


def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get(_ENV_OFF, "") == "0":
        return None, f"off ({_ENV_OFF}=0)"
    if platform.system() not in ("Linux", "Darwin"):
        return None, f"not built on {platform.system()}"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set CC, or install gcc or clang)"
    import torch  # noqa: F401  (torch's libgomp must be loaded first, so the kernels share its threads)

    why = ""
    for out_dir in (native_cache_dir(), Path(tempfile.gettempdir()) / f"cnnlab-native-{os.getuid()}"):
        for _ in range(2):  # a damaged file found in the cache is removed and built again, once
            try:
                path, why = _build(cc, out_dir)
            except OSError as e:  # an unwritable cache directory: try the next one
                path, why = None, f"cannot write {out_dir} ({e})"
            if path is None:
                break
            try:
                return _declare(ctypes.CDLL(str(path))), ""
            except (OSError, AttributeError) as e:
                path.unlink(missing_ok=True)
                why = f"cannot load {path} ({e})"
    return None, why


def library() -> ctypes.CDLL | None:
    """The loaded kernels, built on the first call; None where they cannot be (see `status()`)."""
    if not _state["done"]:
        with _lock:
            if not _state["done"]:
                _state["lib"], _state["why"] = _load()
                _state["done"] = True
    return _state["lib"]


def status() -> str:
    """One line: whether the C kernels are in use, and if not, why."""
    lib = library()
    if lib is None:
        return f"C kernels off: {_state['why']}"
    simd = "AVX-512" if lib.cnnlab_maxpool2x2_simd() else "portable C"
    threads = "OpenMP (torch's threads)" if lib.cnnlab_maxpool2x2_openmp() else "one thread"
    return f"C kernels on: 2x2 max-pool in {simd}, {threads}"


def reset() -> None:
    """Forget the loaded library (tests: rebuild under other settings)."""
    with _lock:
        _state.update(done=False, lib=None, why="not loaded yet")
