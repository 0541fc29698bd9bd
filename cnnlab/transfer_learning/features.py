"""Feature extraction on the fastest path, cached on disk.

Extraction runs in large batches under `torch.inference_mode()`, with channels_last memory format and
bf16 autocast where the device supports it natively (see `cnnlab.training.precision`); features are stored
as float32. The cache key is a SHA-256 of everything that determines the numbers: the backbone's weights
digest, the cut layer and pooling, the images and labels, the input adaptation (size, channels,
normalisation) and the precision. Change any of them and the key changes: a miss, never a stale hit.
Files are written atomically (`<cache>/<key>.safetensors`), so an interrupted run leaves no half file.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.core.paths import feature_cache_dir
from cnnlab.core.weights import load_safetensors, save_safetensors
from cnnlab.layers.fusion import fuse
from cnnlab.training.precision import resolve_precision

CACHE_VERSION = "features-v1"


def data_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of the images (N, C, H, W) and labels (N,) bytes, with their shapes and dtypes."""
    h = hashlib.sha256()
    for t in (images, labels):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class Features:
    """`x` float32 (N, D) features, `y` int64 (N,) labels; `cached` says whether they came from disk."""

    x: torch.Tensor
    y: torch.Tensor
    cached: bool
    seconds: float
    key: str


def _precision(device: torch.device, precision: str):
    return resolve_precision(precision, device, channels_last=True)


@torch.inference_mode()
def extract(body: nn.Module, adapter: nn.Module, images: torch.Tensor, *, batch_size: int = 256,
            device: str | torch.device = "cpu", precision: str = "auto") -> torch.Tensor:
    """Run `adapter` then `body` on uint8 images (N, C, H, W) in batches -> float32 (N, D) on the CPU."""
    device = torch.device(device)
    prec = _precision(device, precision)
    body = fuse(body, inplace=True, keep=getattr(body, "observed", ()), kernel=device.type == "cpu").to(device).eval()
    adapter = adapter.to(device)
    outs = []
    for start in range(0, len(images), batch_size):
        x = adapter(images[start:start + batch_size].to(device))
        if prec.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with prec.autocast():
            y = body(x)
        outs.append(y.float().cpu())
    return torch.cat(outs) if outs else torch.empty(0, 0)


def cached_features(body: nn.Module, adapter, images: torch.Tensor, labels: torch.Tensor, *,
                    weights_id: str, layer: str, pool: str = "flatten", cache_dir: str | Path | None = None,
                    batch_size: int = 256, device: str | torch.device = "cpu", precision: str = "auto",
                    use_cache: bool = True) -> Features:
    """Features of `images` at the cut, from the cache when the same computation was done before."""
    device = torch.device(device)
    prec_name = _precision(device, precision).name
    parts = [CACHE_VERSION, weights_id, layer, pool, data_digest(images, labels), adapter.key(), prec_name]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    path = Path(cache_dir).expanduser() if cache_dir is not None else feature_cache_dir()
    file = path / f"{key[:32]}.safetensors"
    t0 = time.perf_counter()
    if use_cache and file.is_file():
        try:
            d = load_safetensors(file)
            return Features(d["x"], d["y"], True, time.perf_counter() - t0, key)
        except Exception:  # a damaged cache entry is recomputed, never trusted
            pass
    x = extract(body, adapter, images, batch_size=batch_size, device=device, precision=precision)
    y = labels.detach().to("cpu", torch.int64)
    if use_cache:
        save_safetensors(file, {"x": x, "y": y}, metadata={"format": CACHE_VERSION, "layer": layer})
    return Features(x, y, False, time.perf_counter() - t0, key)
