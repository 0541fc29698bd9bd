"""What this machine supports, detected rather than assumed: device, bf16/fp16 autocast, channels_last.

bf16 autocast on a CPU pays only where the CPU has native bf16 instructions (AVX512-BF16 or AMX, used
through oneDNN); elsewhere it is emulated and slower than fp32, so `auto` falls back to fp32 there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Precision:
    """The numeric setup of a run: where it runs and in which dtype the matmuls/convolutions run."""

    device: torch.device
    dtype: torch.dtype  # autocast dtype; float32 means no autocast
    channels_last: bool
    grad_scaling: bool  # fp16 needs loss scaling against underflow; bf16 has fp32's exponent range

    @property
    def name(self) -> str:
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        """Context manager for the forward pass; a no-op in fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def cpu_supports_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16 or AMX), so bf16 autocast is a speed-up."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
        return "AVX512" in capability and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CnnlabError(f"device '{device}' requested but no CUDA GPU is available; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise CnnlabError(f"unknown device '{device}'; choose one of: auto, cpu, cuda")
    return torch.device(device)


def resolve_precision(precision: str = "auto", device: str | torch.device = "auto", channels_last: bool = True) -> Precision:
    """Turn `auto|fp32|bf16|fp16` into what this machine will actually run; refuse what it cannot."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    on_cuda = dev.type == "cuda"
    bf16_ok = torch.cuda.is_bf16_supported() if on_cuda else cpu_supports_bf16()
    if precision == "auto":
        dtype = torch.bfloat16 if bf16_ok else (torch.float16 if on_cuda else torch.float32)
    elif precision == "fp32":
        dtype = torch.float32
    elif precision == "bf16":
        if not bf16_ok:
            where = "this GPU" if on_cuda else f"this CPU ({torch.backends.cpu.get_cpu_capability()}, no native bf16)"
            raise CnnlabError(f"precision bf16 requested but {where} does not support it; use --precision auto or fp32")
        dtype = torch.bfloat16
    elif precision == "fp16":
        if not on_cuda:
            raise CnnlabError("precision fp16 needs a CUDA GPU (CPUs are slow at fp16); use --precision auto, bf16 or fp32")
        dtype = torch.float16
    else:
        raise CnnlabError(f"unknown precision '{precision}'; choose one of: auto, fp32, bf16, fp16")
    return Precision(dev, dtype, bool(channels_last), grad_scaling=dtype == torch.float16)
