"""Data-parallel training across processes (PyTorch DDP), started by `torchrun` or `cnnlab train --nproc N`.

Under torchrun each process sees RANK, WORLD_SIZE and LOCAL_RANK in its environment; `init()` joins the
process group (gloo on CPU, NCCL on GPU). Each rank trains on its own shard of every epoch's batches,
DDP averages the gradients, so all ranks hold identical weights; only rank 0 writes files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    restart: int = 0  # torchrun's restart count: > 0 after a failed rank was restarted

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """What torchrun told this process (a single process when launched without it)."""
    def read(name: str, default: int) -> int:
        return int(os.environ.get(name, default))

    return DistInfo(read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0), read("TORCHELASTIC_RESTART_COUNT", 0))


def init(device: torch.device) -> DistInfo:
    """Join the process group if launched by torchrun with more than one process."""
    info = env_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        # A dead peer must end a collective with an error, not a hang: bounded wait (seconds, settable).
        timeout = timedelta(seconds=float(os.environ.get("CNNLAB_DDP_TIMEOUT", 600)))
        kwargs = {}
        if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
            # Keys prefixed by torchrun's attempt number: after a restart, gloo must not read the addresses
            # the dead attempt published (seen here as "connectFullMesh failed ... Connection refused").
            agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
            base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), info.world_size,
                                 is_master=info.rank == 0 and not agent_store, timeout=timeout)
            kwargs = {"store": dist.PrefixStore(f"cnnlab/attempt{info.restart}", base),
                      "rank": info.rank, "world_size": info.world_size}
        dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    return info


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """Each process on one machine drives its own GPU (`cuda:LOCAL_RANK`)."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (e.g. the run directory name, which contains a timestamp)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    """Run `cnnlab ARGV` in `nproc` processes on this machine through torchrun; returns its exit code."""
    if not isinstance(nproc, int) or nproc < 1:
        raise CnnlabError(f"nproc must be a positive integer, got {nproc!r}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--max-restarts={max_restarts}", "-m", "cnnlab", *argv]
    env = dict(os.environ)
    # Each process gets its share of the cores; torchrun's default of 1 thread wastes the rest.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)
