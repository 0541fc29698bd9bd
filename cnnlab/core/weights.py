"""Reading and writing tensors without running code: safetensors, and `torch.load(weights_only=True)`.

Weights are read only with safetensors or `torch.load(weights_only=True)`, which refuses pickles that
would import or call arbitrary Python; safetensors files are written atomically (`cnnlab.core.files`).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from cnnlab.core.files import atomic_write
from cnnlab.errors import CnnlabError


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)`; a file that needs arbitrary Python objects is refused, unrun."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnlabError(
            f"refused to load '{path}': it contains Python objects that could run code when unpickled "
            f"({first[:160]}); cnnlab reads only tensors (safetensors or torch.save of plain state dicts)"
        ) from None


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, on the CPU; a damaged file is one `CnnlabError` line."""
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError for truncated/corrupt files
        raise CnnlabError(f"cannot read weights '{path}': {e}; the file is damaged or not safetensors") from None


def save_safetensors(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write `state` to `path` as safetensors, atomically."""
    # safetensors stores dense row-major tensors; channels_last parameters are copied to that layout.
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return atomic_write(path, _sorted_metadata(save(tensors, metadata=metadata)))


def _sorted_metadata(blob: bytes) -> bytes:
    """The same file with its metadata keys sorted: safetensors writes them in an order that changes from
    process to process (a Rust HashMap), so the same weights would otherwise give different bytes."""
    n = int.from_bytes(blob[:8], "little")  # the format: 8-byte header length, JSON header, tensor data
    header = json.loads(blob[8:8 + n])
    if "__metadata__" not in header:
        return blob
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # the same keys and values in another order: never longer, but never risk the data offset
        return blob
    return blob[:8] + text.ljust(n) + blob[8 + n:]  # padded with spaces to the old length, as the format allows
