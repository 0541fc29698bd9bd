"""Training throughput on a quiet and on a shared machine, by thread count and OpenMP wait policy.

    python benchmarks/threads.py [--rounds 3] [--steps 60] [--model simple_cnn] [--busy 1]

Each configuration (threads x wait policy) trains `--model` (fused, channels_last, fp32 or bf16 as
`--precision auto` would choose, fused Adam, batch 128 of random 1x28x28 images) in a fresh process,
because OpenMP reads its wait policy once, when it starts. Every round runs every configuration quiet
and then beside `--busy` competing busy processes (a Python busy loop each, what "a laptop runs
something else" looks like to the scheduler), in turns, so a slow spell of a shared machine hits all
of them. Each cell is the median over rounds of each process's median block of 10 steps.

The column that matters is "shared / quiet of the best quiet": a setting degrades gracefully when,
with one competing process on a 2-core machine, it keeps at least half of the best quiet throughput.
The `cnnlab` command runs with OMP_WAIT_POLICY=PASSIVE (cnnlab.runtime.tune_openmp) and, with
`--threads auto`, leaves the cores other processes keep busy to them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import sys, time, torch, torch.nn.functional as F
from cnnlab.layers import fuse
from cnnlab.models import resolve_model
from cnnlab.training.precision import resolve_precision
threads, steps, model_name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if threads:
    torch.set_num_threads(threads)
prec = resolve_precision("auto", "cpu")
torch.manual_seed(0)
m = fuse(resolve_model(model_name, (1, 28, 28), 10)[0]).to(memory_format=torch.channels_last)
opt = torch.optim.Adam(m.parameters(), 1e-3, fused=True)
x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (128,))
def step():
    with prec.autocast():
        out = m(x)
    loss = F.cross_entropy(out.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for _ in range(3):
    step()
blocks = []
for _ in range(max(1, steps // 10)):
    t0 = time.perf_counter()
    for _ in range(10):
        step()
    blocks.append(1280 / (time.perf_counter() - t0))
print(sorted(blocks)[len(blocks) // 2])
"""

BUSY = "while True: pass"


def run_child(threads: int, policy: str, steps: int, model: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(steps), model], env=env,
                         capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise SystemExit(f"child failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(out.stdout.strip().splitlines()[-1])


class Busy:
    """`n` competing busy processes for the duration of a `with` block."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(self.n)]
        time.sleep(0.5)  # let the scheduler see them as running
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60, help="steps per process (median block of 10)")
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--busy", type=int, default=1, help="competing busy processes in the shared column")
    ap.add_argument("--threads", default="", help="comma-separated thread counts (default 1 and all CPUs)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from cnnlab.core.machine import one_line, usable_cpus

    cpus = usable_cpus()
    counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cpus})
    configs = [(t, p) for t in counts for p in ("default", "PASSIVE")]
    print(f"machine: {one_line()}; load average at start {os.getloadavg()[0]:.1f}")
    print(f"model {args.model}, batch 128, {args.rounds} round(s), {args.busy} competing busy process(es)\n")
    quiet: dict = {c: [] for c in configs}
    shared: dict = {c: [] for c in configs}
    for _ in range(args.rounds):
        for c in configs:
            quiet[c].append(run_child(*c, args.steps, args.model))
        with Busy(args.busy):
            for c in configs:
                shared[c].append(run_child(*c, args.steps, args.model))
    best = max(statistics.median(v) for v in quiet.values())
    print("| threads | OMP wait policy | quiet images/s | shared images/s | shared / own quiet | shared / best quiet |")
    print("|---:|---|---:|---:|---:|---:|")
    for c in configs:
        q, s = statistics.median(quiet[c]), statistics.median(shared[c])
        print(f"| {c[0]} | {c[1]} | {q:,.0f} | {s:,.0f} | {s / q:.2f} | {s / best:.2f} |")
    print("\nrounds (quiet; shared): " + "; ".join(
        f"{t}/{p}: {', '.join(f'{v:,.0f}' for v in quiet[(t, p)])}; {', '.join(f'{v:,.0f}' for v in shared[(t, p)])}"
        for t, p in configs))


if __name__ == "__main__":
    main()
