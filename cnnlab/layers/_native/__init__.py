"""cnnlab's C kernels: compiled with the system C compiler when first asked for, cached, loaded with ctypes.

Only `maxpool2x2.c` for now (see `cnnlab.layers.maxpool2x2`). Nothing here is required: without a C
compiler, on a platform where the build or the load fails, or with `CNNLAB_NATIVE=0`, `library()` returns
None and the callers use PyTorch's operators, which compute the same values.

`library()` builds and loads; only explicit requests call it (`cnnlab.fuse`, `cnnlab native build`), never
a forward pass, which asks `loaded()`. A build says so in one line on stderr.

The shared library is built once per source, compiler and platform into `$CNNLAB_NATIVE_CACHE` (default
`<user cache>/cnnlab/native`; if that cannot be written, `$TMPDIR/cnnlab-native-<uid>`), written under a
temporary name and renamed into place, so processes that build at the same time (DDP ranks) never load a
half-written file. A library is loaded only from a folder that is the current user's and that no one else
can write, and only if the file is a regular file (not a link) owned by the user and writable by no one
else: the temporary folder is shared and the file name computable, so a library planted there by another
user is ignored and reported in one line (`status()` says why).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
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
_state: dict = {"done": False, "lib": None, "simd": 0, "why": "not loaded yet"}


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


class _Unsafe(Exception):
    """A folder or file another user owns or can write: never loaded from."""


def _check_owned(st: os.stat_result, what: str, path: Path) -> None:
    uid = os.getuid()
    if st.st_uid != uid:
        raise _Unsafe(f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {uid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _Unsafe(f"{what} {path} can be written by other users (mode {stat.S_IMODE(st.st_mode):o})")


def _safe_folder(out_dir: Path) -> Path:
    """Create `out_dir` (mode 0o700) if missing; its real path, after checking it is a folder of this
    user's that no one else can write. Raises _Unsafe (or OSError when it cannot be created)."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    real = Path(os.path.realpath(out_dir))  # a user's own link (~/.cache -> /data/...) is followed, then checked
    st = os.lstat(real)
    if not stat.S_ISDIR(st.st_mode):
        raise _Unsafe(f"{real} is not a folder")
    _check_owned(st, "the folder", real)
    return real


def _check_file(path: Path) -> bool:
    """False if there is no file at `path`; True if it is a regular file (not a link) of this user's that no
    one else can write; otherwise raises _Unsafe."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return False
    except OSError as e:  # ELOOP: a symbolic link
        raise _Unsafe(f"{path} cannot be opened without following links ({e.strerror})") from e
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _Unsafe(f"{path} is not a regular file")
    _check_owned(st, "the file", path)
    return True


def _build(cc: str, out_dir: Path) -> tuple[Path | None, str]:
    """Compile the source into out_dir (or find it there); (path, "") or (None, why). Raises _Unsafe for a
    folder or an existing file that another user owns or can write."""
    source = _SOURCE.read_bytes()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"the C compiler {cc} does not run ({e})"
    out_dir = _safe_folder(out_dir)
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(flags).encode(),
                                         platform.machine().encode(), platform.system().encode()])).hexdigest()[:16]
        path = out_dir / f"maxpool2x2-{key}.so"
        if _check_file(path):
            return path, ""
        print(f"cnnlab: compiling the C max-pool kernel with {cc} into {out_dir} (once per compiler)",
              file=sys.stderr, flush=True)
        fd, tmp = tempfile.mkstemp(suffix=".so.part", dir=out_dir)
        os.close(fd)
        try:
            run = subprocess.run([cc, *flags, "-o", tmp, str(_SOURCE)], capture_output=True, text=True, timeout=120)
            if run.returncode == 0:
                os.chmod(tmp, 0o755)  # whatever the umask: writable by its owner only
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
    import torch  # noqa: F401, PLC0415  (torch's libgomp must be loaded first, so the kernels share its threads)

    why = ""
    for out_dir in (native_cache_dir(), Path(tempfile.gettempdir()) / f"cnnlab-native-{os.getuid()}"):
        for _ in range(2):  # a damaged file found in the cache is removed and built again, once
            try:
                path, why = _build(cc, out_dir)
            except _Unsafe as e:  # someone else's folder or file: never loaded, and said so
                why = f"not loading from {out_dir}: {e}"
                print(f"cnnlab: {why}", file=sys.stderr, flush=True)
                path = None
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
    """The loaded kernels, built and loaded on the first call; None where they cannot be (see `status()`)."""
    if not _state["done"]:
        with _lock:
            if not _state["done"]:
                lib, _state["why"] = _load()
                _state["simd"] = int(lib.cnnlab_maxpool2x2_simd()) if lib is not None else 0
                _state["lib"], _state["done"] = lib, True
    return _state["lib"]


def loaded() -> ctypes.CDLL | None:
    """The kernels if `library()` has loaded them, else None; never builds or loads anything."""
    return _state["lib"]


def simd_loaded() -> bool:
    """Whether the kernels are loaded and their AVX-512 or AVX2 loops run on this CPU (a plain Python flag,
    so that torch.compile and torch.export can read it while tracing)."""
    return bool(_state["simd"])


def simd_level() -> int:
    """2: the AVX-512 loops run (bf16 and fp32); 1: the AVX2 loops (fp32 only); 0: none (portable C)."""
    return int(_state["simd"])


def status() -> str:
    """One line: whether the C kernels are loaded, and if not, why (never builds or loads them)."""
    lib = loaded()
    if not _state["done"]:
        return "C kernels not loaded (cnnlab.fuse or `cnnlab native build` loads them)"
    if lib is None:
        return f"C kernels off: {_state['why']}"
    simd = {2: "AVX-512", 1: "AVX2 (fp32)"}.get(simd_level(), "portable C")
    threads = "OpenMP (torch's threads)" if lib.cnnlab_maxpool2x2_openmp() else "one thread"
    return f"C kernels on: 2x2 max-pool in {simd}, {threads}"


def reset() -> None:
    """Forget the loaded library (tests: rebuild under other settings)."""
    with _lock:
        _state.update(done=False, lib=None, simd=0, why="not loaded yet")
