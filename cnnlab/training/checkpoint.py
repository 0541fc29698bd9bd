"""Resume state that survives crashes: checkpoint rotation with fallback, and RNG states as tensors.

- Atomic: each checkpoint is written with `cnnlab.core.files.atomic_write`; a crash at any point leaves
  either the old file or the new one, never a truncated one.
- Rotation: the new checkpoint is in place before the oldest is deleted, so the last good one is never
  removed first; resume tries the newest and falls back to older ones if it is unreadable.
- Safe loading: checkpoints are read with `cnnlab.core.weights.safe_torch_load` (`weights_only=True`),
  which refuses pickles that would import or call arbitrary Python. RNG states are saved as uint8 tensors for that.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cnnlab.core.files import atomic_write
from cnnlab.core.weights import safe_torch_load
from cnnlab.errors import CnnlabError

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")


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
        with contextlib.suppress(OSError):
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
