"""cnnlab.core.machine: the CPU class from its flags, the thread choice, the CPU share of other processes;
cnnlab.runtime.tune_openmp; `cnnlab train --threads`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from cnnlab.core import machine


@pytest.mark.parametrize("flags, expected", [
    # flag names as Linux prints them in /proc/cpuinfo (arch/x86/include/asm/cpufeatures.h, arm64 hwcaps)
    ({"sse2", "avx", "avx2", "fma"}, "AVX2"),  # AMD Zen 3, Intel Alder Lake
    ({"avx2", "avx512f", "avx512bw", "avx512vl"}, "AVX-512"),  # Intel Skylake-SP
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512-BF16"),  # AMD Zen 4/5, Intel Cooper Lake
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "AMX"),  # Intel Sapphire Rapids
    ({"fp", "asimd", "evtstrm"}, "NEON"),  # aarch64
])
def test_cpu_class_from_flags(flags, expected):
    assert machine.cpu_class(flags) == expected


def test_describe_names_this_machine():
    d = machine.describe()
    assert d["cpu_class"] in ("AMX", "AVX512-BF16", "AVX-512", "AVX2", "NEON", "baseline")
    assert d["logical_cpus"] == os.cpu_count() and 1 <= d["usable_cpus"] <= os.cpu_count()
    assert d["torch_threads"] >= 1 and d["cpu_model"]


@pytest.mark.parametrize("others, cpus, expected", [(0.0, 2, 2), (0.3, 2, 2), (1.0, 2, 1), (0.9, 2, 1),
                                                    (3.0, 2, 1), (1.0, 8, 7), (2.6, 8, 5)])
def test_threads_leave_the_busy_cores_to_others(others, cpus, expected):
    assert machine.threads_for(others, cpus) == expected


def test_matmul_peak_counts_2n3_flop():
    gflops = machine.matmul_peak(n=256, seconds=0.05)
    assert 0.1 < gflops < 1e5  # a plausible CPU rate; the benchmark prints the real figure


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc/stat")
def test_a_busy_neighbour_is_seen_and_our_own_work_is_not_counted_as_others():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        share = machine.CpuShare()
        time.sleep(1.0)
        others, mine = share.read()
    finally:
        busy.kill()
        busy.wait()
    assert others >= 0.5 and mine < 0.3  # the neighbour kept about one core busy; we slept


SIBLING = """import time
from cnnlab.core import machine
job, plain = machine.CpuShare(job=True), machine.CpuShare()
time.sleep(1.0)
print(len(machine.job_siblings()), job.read()[0], plain.read()[0])
"""


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc/stat")
def test_the_other_ranks_of_a_torchrun_job_are_not_counted_as_a_neighbour():
    """Two children of this process with LOCAL_WORLD_SIZE=2 stand for two ranks under torchrun: one busy, one
    measuring. The measuring one sees the busy rank as its job's (job=True) and as a neighbour (job=False)."""
    env = {**os.environ, "LOCAL_WORLD_SIZE": "2"}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"], env=env)
    try:
        time.sleep(0.3)
        out = subprocess.run([sys.executable, "-c", SIBLING], env=env, capture_output=True, text=True, check=True,
                             timeout=120).stdout.split()
    finally:
        busy.kill()
        busy.wait()
    siblings, job_others, plain_others = int(out[0]), float(out[1]), float(out[2])
    assert siblings >= 1  # the busy rank (and any other child of this pytest process)
    assert plain_others - job_others >= 0.3, out  # about one core moved from "others" to "this job"
    # outside torchrun nothing is a sibling
    no_job = {k: v for k, v in os.environ.items() if k != "LOCAL_WORLD_SIZE"}
    out = subprocess.run([sys.executable, "-c", "from cnnlab.core import machine; print(machine.job_siblings())"],
                         env=no_job, capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    assert out == "[]"


PROBE = "import os, sys\nfrom cnnlab.runtime import tune_openmp, openmp_status\n{pre}print(tune_openmp(), os.environ.get('OMP_WAIT_POLICY'), openmp_status(), sep='|')"


def _probe(pre: str = "", **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME",
                                                               "CNNLAB_NO_OMP_TUNING")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(pre=pre)], env={**clean, **env}, capture_output=True,
                         text=True, check=True, timeout=120)
    return out.stdout.strip().split("|")


def test_tune_openmp_sets_passive_only_before_torch_and_only_if_the_user_did_not_choose():
    assert _probe()[:2] == ["True", "PASSIVE"]
    assert _probe(OMP_WAIT_POLICY="ACTIVE")[:2] == ["False", "ACTIVE"]
    assert _probe(CNNLAB_NO_OMP_TUNING="1")[:2] == ["False", "None"]
    late = _probe(pre="import torch\n")
    assert late[:2] == ["False", "None"] and "torch was imported" in late[2]


@pytest.mark.parametrize("bad", ["0", "two"])
def test_threads_option_refuses_bad_values_in_one_line(bad):
    out = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--threads", bad], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--threads" in out.stderr
