"""The machine a run is on, and how much of it the run gets: CPU model, instruction-set class, cores,
a measured matmul peak, and whether other processes are competing for the cores.

- `describe()`: a dict for config.json and benchmark headers (model, class, flags, cores, threads).
- `cpu_class()`: the instruction-set class that decides CPU speed: "AMX", "AVX512-BF16", "AVX-512",
  "AVX2", "NEON" or "baseline", read from /proc/cpuinfo's flags (Linux) with torch's own answer
  (`torch.backends.cpu.get_cpu_capability()`) as the fallback elsewhere.
- `matmul_peak(dtype)`: GFLOP/s of a large square matmul in that dtype, the yardstick a training step's
  achieved GFLOP/s is divided by.
- `CpuShare`: how much CPU the other processes took since the last reading (from /proc/stat less this
  process's own CPU time, and with `job=True` less the sibling workers of a torchrun job), so a progress
  line can say when the machine is contended.

Nothing here changes a process-wide setting, and importing it imports no torch (the CLI reads it).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

_FLAG_CLASSES = (  # first match wins: the most capable class
    ("AMX", ("amx_bf16", "amx_tile")),
    ("AVX512-BF16", ("avx512_bf16",)),
    ("AVX-512", ("avx512f",)),
    ("AVX2", ("avx2",)),
    ("NEON", ("asimd", "neon")),
)


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo ({} where there is none)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("hardware") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    info = _cpuinfo()
    return set((info.get("flags") or info.get("features") or "").split())


def cpu_class(flags: set[str] | None = None) -> str:
    """The instruction-set class: AMX, AVX512-BF16, AVX-512, AVX2, NEON or baseline."""
    flags = cpu_flags() if flags is None else flags
    for name, needed in _FLAG_CLASSES:
        if any(f in flags for f in needed):
            return name
    import torch  # noqa: PLC0415  (this module stays importable without torch: the CLI reads it at start)

    capability = torch.backends.cpu.get_cpu_capability()  # no /proc/cpuinfo (macOS, Windows)
    if capability.startswith("AVX512"):
        return "AVX-512"
    if capability == "AVX2":
        return "AVX2"
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "NEON"
    return "baseline"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def describe() -> dict[str, Any]:
    """The machine as config.json and the benchmarks record it."""
    import torch  # noqa: PLC0415

    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "cpu_class": cpu_class(flags),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "asimd", "sve"))),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def one_line(d: dict[str, Any] | None = None) -> str:
    d = describe() if d is None else d
    return (f"{d['cpu_model']}; class {d['cpu_class']} (torch capability {d['torch_capability']}); "
            f"{d['usable_cpus']} usable of {d['logical_cpus']} logical CPUs; torch threads {d['torch_threads']}")


def matmul_peak(dtype=None, n: int = 2048, seconds: float = 1.0, device: str = "cpu") -> float:
    """GFLOP/s of the fastest of repeated `n`x`n` matmuls in `dtype` on `device` (2 n^3 FLOP each), over
    about `seconds` after one warm-up. The best, not the median: it is the machine's limit we want."""
    import torch  # noqa: PLC0415

    dtype = torch.float32 if dtype is None else dtype
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    out = torch.empty(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    torch.mm(a, b, out=out)
    sync()
    best, end = float("inf"), time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        t = time.perf_counter() - t0
        best = min(best, t)
        if time.perf_counter() > end:
            break
    return 2 * n ** 3 / best / 1e9


def _busy_jiffies() -> int | None:
    """All CPUs' busy time (user, nice, system, irq, softirq, steal) in clock ticks, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)  # idle (3) and iowait (4) left out


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (which may hold spaces): state, ppid, ..."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def job_siblings() -> list[int]:
    """The other worker processes of this torchrun job on this machine (the same parent, the torchrun agent),
    when LOCAL_WORLD_SIZE says there are several; [] otherwise or without /proc."""
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    except ValueError:
        return []
    if local <= 1 or not os.path.isdir("/proc"):
        return []
    me, parent, out = os.getpid(), os.getppid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            fields = _stat_fields(int(entry))
            if fields and len(fields) > 1 and fields[1] == str(parent):
                out.append(int(entry))
    return out


def _cpu_ticks(pid: int) -> int | None:
    """User + system CPU time of process `pid`, in clock ticks (None once it is gone)."""
    fields = _stat_fields(pid)
    return int(fields[11]) + int(fields[12]) if fields and len(fields) > 12 else None


class CpuShare:
    """Between two `read()`s: the CPUs other processes kept busy (in cores), and this process's CPU time
    over the wall time (its cores). Linux reads /proc/stat; elsewhere `others` falls back to the load
    average less this process's cores.

    `job=True` counts the sibling workers of a torchrun job (`job_siblings()`) as this process, not as
    others: ranks of one training run are not a neighbour competing for the CPUs. Thread choices want the
    opposite (a sibling rank does take a core), so `others_busy` keeps the default `job=False`."""

    def __init__(self, job: bool = False) -> None:
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.cpus = usable_cpus()
        self._siblings = job_siblings() if job else []
        self._last = self._now()

    def _now(self) -> tuple[float, float, int | None, dict[int, int]]:
        t = os.times()
        ticks = {pid: v for pid in self._siblings if (v := _cpu_ticks(pid)) is not None}
        return time.perf_counter(), t.user + t.system, _busy_jiffies(), ticks

    def read(self) -> tuple[float, float]:
        """(other processes' cores, this process's cores: with `job=True` its sibling workers' too) since the
        previous read (or construction)."""
        wall0, cpu0, busy0, ticks0 = self._last
        now = self._last = self._now()
        wall, mine = now[0] - wall0, now[1] - cpu0
        if wall <= 0:
            return 0.0, 0.0
        siblings = sum(now[3][pid] - ticks0[pid] for pid in now[3] if pid in ticks0) / self._tick / wall
        mine_cores = mine / wall + siblings
        if busy0 is not None and now[2] is not None:
            others = (now[2] - busy0) / self._tick / wall - mine_cores
        elif hasattr(os, "getloadavg"):
            others = os.getloadavg()[0] - mine_cores
        else:
            others = 0.0
        return max(0.0, others), mine_cores

    def note(self, threshold: float = 0.5) -> str:
        """'' on a quiet machine, else e.g. 'shared: others use 1.0 of 2 CPUs' (reads, so resets the window)."""
        others, _ = self.read()
        return f"shared: others use {others:.1f} of {self.cpus} CPUs" if others >= threshold else ""


def others_busy(seconds: float = 0.3) -> float:
    """Cores other processes kept busy over the next `seconds` (this process idles meanwhile)."""
    share = CpuShare()
    time.sleep(seconds)
    return share.read()[0]


def threads_for(others: float, cpus: int | None = None) -> int:
    """Threads that leave the cores others keep busy to them: the usable CPUs less the busy ones
    (rounded to the nearest core), at least 1. With 2 CPUs and one competing busy process: 1."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, min(cpus, cpus - int(others + 0.5)))
