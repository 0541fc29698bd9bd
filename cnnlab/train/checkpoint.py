"""Files that survive crashes: atomic writes, checkpoint rotation with fallback, and safe loading.

- Atomic: write a temporary file in the same folder, fsync it, `os.replace` it over the target, fsync
  the folder. A crash at any point leaves either the old file or the new one, never a truncated one.
- Rotation: the new checkpoint is in place before the oldest is deleted, so the last good one is never
  removed first; resume tries the newest and falls back to older ones if it is unreadable.
- Safe loading: weights are read only with safetensors or `torch.load(weights_only=True)`, which refuses
  pickles that would import or call arbitrary Python. RNG states are saved as uint8 tensors for that.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.runtime import new_file_mode

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")


# ---- atomic writes -----------------------------------------------------------------------------
def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None] | bytes) -> Path:
    """Write `path` atomically; `write` is the bytes, or a function that writes to the open file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, (bytes, bytearray)):
                f.write(write)
            else:
                write(f)
            f.flush()
            # mkstemp creates the file 0600; give it the mode a plain open() would (0666 minus umask)
            os.fchmod(f.fileno(), new_file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory entry; without this a power cut can undo it.
    if sys.platform.startswith("win"):
        return
    with _suppress():
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


# ---- safe loading ------------------------------------------------------------------------------
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
    from safetensors.torch import load_file  # noqa: PLC0415

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError for truncated/corrupt files
        raise CnnlabError(f"cannot read weights '{path}': {e}; the file is damaged or not safetensors") from None


def save_safetensors(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save  # noqa: PLC0415

    # safetensors stores dense row-major tensors; channels_last parameters are copied to that layout.
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return atomic_write(path, save(tensors, metadata=metadata))


# ---- checkpoints -------------------------------------------------------------------------------
def checkpoint_path(folder: str | Path, index: int) -> Path:
    return Path(folder) / f"ckpt-{index:08d}.pt"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoints in `folder`, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(folder: str | Path, state: dict[str, Any], index: int, keep: int = 2) -> Path:
    """Write `ckpt-<index>.pt` atomically, then delete all but the newest `keep` checkpoints."""
    def write(f):
        torch.save(state, f)

    path = atomic_write(checkpoint_path(folder, index), write)
    for old in list_checkpoints(folder)[max(1, keep):]:
        with _suppress():
            old.unlink()
    return path


def load_latest_checkpoint(folder: str | Path, log: Callable[[str], None] = print) -> tuple[dict[str, Any], Path]:
    """The newest readable checkpoint in `folder`; unreadable newer ones are reported and skipped."""
    candidates = list_checkpoints(folder)
    if not candidates:
        raise CnnlabError(f"no checkpoint to resume from in '{folder}' (expected ckpt-*.pt files)")
    failures = []
    for path in candidates:
        try:
            state = safe_torch_load(path)
            if not isinstance(state, dict) or "model" not in state:
                raise ValueError("not a cnnlab checkpoint")
        except CnnlabError:
            raise  # a pickle that would run code is an attack or a mistake, not damage: do not fall back
        except Exception as e:  # truncated or corrupted file: fall back to the previous one
            failures.append(path)
            log(f"checkpoint {path.name} is unreadable ({type(e).__name__}: {str(e)[:100]}); trying the previous one")
            continue
        if failures:
            log(f"resuming from the older checkpoint {path.name}")
        return state, path
    raise CnnlabError(f"every checkpoint in '{folder}' is unreadable: {', '.join(p.name for p in failures)}")


# ---- RNG states as tensors (so weights_only loading accepts them) --------------------------------
def rng_state(aug_generator: torch.Generator | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if aug_generator is not None:
        state["aug"] = aug_generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], aug_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if aug_generator is not None and "aug" in state:
        aug_generator.set_state(state["aug"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
