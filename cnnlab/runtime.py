"""Process-wide settings, applied only when asked: `cnnlab` (the CLI) calls `tune_allocator()` at start;
a library call never does. Use it in your own program with `cnnlab.runtime.tune_allocator()`.

`tune_allocator()`: glibc's malloc serves blocks above its mmap threshold (128 KiB to 32 MiB, adjusted
as blocks are freed) with fresh `mmap`s and trims the heap top when more than the trim threshold is free.
Tensor code that allocates and frees image-sized buffers in a loop (a 3x224x224 float32 image is 588 KiB)
then pays a page fault per 4 KiB page on every new buffer. Raising both thresholds keeps freed memory in
the process for reuse: measured 1.4-1.6x more augmented 3x224x224 images per second on 2 cores
(benchmarks/augment.py). Intel's PyTorch guides reach the same end by preloading jemalloc or tcmalloc;
this needs no extra library. The cost is that up to `retain_bytes` of freed memory stays mapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt(3) parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_ENV_OPT_OUT = "CNNLAB_NO_MALLOC_TUNING"
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD")

_state: dict[str, object] = {"done": False, "applied": False, "why": "not tried"}


def tune_allocator(retain_bytes: int = 256 << 20) -> bool:
    """Raise glibc malloc's mmap and trim thresholds to `retain_bytes` (once per process; later calls
    return the first answer). Does nothing, and returns False, on non-glibc systems, when the user has
    set malloc environment variables or preloads another allocator, or when CNNLAB_NO_MALLOC_TUNING=1.
    Returns True if the thresholds were raised. `allocator_status()` says which case applied."""
    if _state["done"]:
        return bool(_state["applied"])
    _state["done"] = True
    if os.environ.get(_ENV_OPT_OUT, "") not in ("", "0"):
        _state["why"] = f"off ({_ENV_OPT_OUT} is set)"
        return False
    given = [name for name in _USER_SETTINGS if os.environ.get(name)]
    if given:
        _state["why"] = f"left as configured ({', '.join(given)} set)"
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _state["why"] = "not glibc: allocator left alone"
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(libc.mallopt(param, value) == 1 for param, value in (
            (_M_MMAP_THRESHOLD, retain_bytes), (_M_TRIM_THRESHOLD, retain_bytes), (_M_TOP_PAD, 64 << 20)))
    except (OSError, AttributeError) as e:
        _state["why"] = f"mallopt unavailable ({e})"
        return False
    _state["applied"] = ok
    _state["why"] = (f"glibc malloc keeps up to {retain_bytes >> 20} MiB of freed memory for reuse" if ok
                     else "mallopt refused the settings")
    return ok


def allocator_status() -> str:
    """One line for logs: what `tune_allocator` did in this process."""
    return str(_state["why"])


# ---- OpenMP threads ---------------------------------------------------------------------------------
_OMP_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
_omp_state: dict[str, object] = {"why": "not tried"}


def tune_openmp() -> bool:
    """Make idle OpenMP threads sleep at once (`OMP_WAIT_POLICY=PASSIVE`) instead of spinning first.

    By default GNU OpenMP (torch's thread pool on Linux) spins up to 300,000 times waiting for the next
    parallel region. On a machine another busy process shares, a spinning thread takes the core from the
    process that the other thread waits for, and training with all cores collapsed (benchmarks/threads.py,
    docs/performance.md). Only environment variables set before OpenMP starts take effect, so this must
    run before torch is imported; it does nothing (and says so in `openmp_status()`) when torch is already
    imported or the user has set OMP_WAIT_POLICY, GOMP_SPINCOUNT or KMP_BLOCKTIME. Opt out with
    CNNLAB_NO_OMP_TUNING=1. The `cnnlab` command calls it at start; a library call never does."""
    import sys  # noqa: PLC0415

    if os.environ.get("CNNLAB_NO_OMP_TUNING", "") not in ("", "0"):
        _omp_state["why"] = "off (CNNLAB_NO_OMP_TUNING is set)"
        return False
    given = [name for name in _OMP_SETTINGS if os.environ.get(name)]
    if given:
        _omp_state["why"] = f"left as configured ({', '.join(given)} set)"
        return False
    if "torch" in sys.modules:
        _omp_state["why"] = "torch was imported before: OpenMP's wait policy is already fixed"
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    _omp_state["why"] = "idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE)"
    return True


def openmp_status() -> str:
    return str(_omp_state["why"])


def set_threads(threads: int) -> None:
    """torch's intra-op threads for this process (`torch.set_num_threads`): the CLI's `--threads`."""
    import torch  # noqa: PLC0415

    torch.set_num_threads(int(threads))
