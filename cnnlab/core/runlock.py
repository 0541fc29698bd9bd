"""One writer per run folder: an OS lock held while a run is written, and what a folder may be reused for.

`claim_run_dir(path, ...)` is called once by the process that writes a run folder (rank 0), before it
writes anything there. It

- refuses a folder that exists, holds files and is not a cnnlab run folder (a user's own `metrics.jsonl`
  would otherwise be overwritten); an empty folder, or one that does not exist yet, is fine;
- takes an exclusive `fcntl.flock` on `RUN/.cnnlab-run.lock` (opened with `O_NOFOLLOW`, so a planted
  link is not followed) and records its pid there. The kernel drops the lock when the process dies, even
  by `kill -9`, so a crashed run never leaves a stale lock; a second writer is refused at once, in one
  line naming the pid. The lock file stays: it is also the marker that says cnnlab made the folder;
- decides, under the lock, whether the run continues from a checkpoint, starts (again) from scratch in a
  folder whose earlier attempt died before its first checkpoint, or is refused because the folder holds
  a run that must be continued with `--resume`;
- removes temporary files that a killed atomic write left behind (no one else can be writing now).

The lock is released by `RunLock.release()` (or when the process ends).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.core.files import TEMP_PATTERN  # the atomic writer's temporary names
from cnnlab.errors import CnnlabError

try:
    import fcntl
except ImportError:  # Windows has no flock: the folder checks still apply there, the lock does not
    fcntl = None

LOCK_NAME = ".cnnlab-run.lock"  # the lock file; its presence marks a folder cnnlab created for a run


_CONFIG_KEYS = ("config", "environment")  # a legacy run folder (no lock file yet): cnnlab's config.json
_CONFIG_MAX_BYTES = 1 << 20


class RunLock:
    """An exclusive lock on one run folder, held until `release()` (or the process ends)."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor of the open file drops the flock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


@dataclass
class RunClaim:
    """What `claim_run_dir` decided. `lock` is held; `notes` are lines to show the user."""

    lock: RunLock
    resuming: bool  # continue from the newest checkpoint (else: start from scratch)
    notes: list[str] = field(default_factory=list)


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a folder cnnlab made for a run: it has the lock file, or (runs made before the
    lock existed) a config.json written by cnnlab."""
    path = Path(path)
    if os.path.lexists(path / LOCK_NAME):
        return True
    config = path / "config.json"
    try:
        if not config.is_file() or config.stat().st_size > _CONFIG_MAX_BYTES:
            return False
        record = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and all(k in record for k in _CONFIG_KEYS)


def lock_run_dir(path: str | Path) -> RunLock:
    """Create `path` if needed and lock it; a CnnlabError if it is not a run folder or is being written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CnnlabError(f"run folder '{path}' is a file, not a folder; choose another --out")
    if path.is_dir() and not is_run_dir(path) and any(path.iterdir()):
        raise CnnlabError(f"'{path}' already holds files and is not a cnnlab run folder; cnnlab writes runs only "
                          "into a new or empty folder: choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CnnlabError(f"'{path / LOCK_NAME}' is a symbolic link, which cnnlab does not follow; "
                              "remove it and try again") from None
        raise CnnlabError(f"cannot lock run folder '{path}': {e.strerror or e}; choose a folder you can write "
                          "with --out") from None
    lock = RunLock(path, fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CnnlabError(f"'{path / LOCK_NAME}' is not a regular file; remove it and try again")
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CnnlabError(_held_message(path, fd)) from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
    except BaseException:
        lock.release()
        raise
    return lock


def _held_message(path: Path, fd: int) -> str:
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode())
        pid, host = int(owner["pid"]), str(owner.get("host", "?"))
    except (OSError, ValueError, KeyError, TypeError):
        pid, host = None, None
    if pid == os.getpid() and host == socket.gethostname():
        who = f"this process (pid {pid}) is already writing it, in an earlier training that has not ended"
    elif pid is not None:
        who = f"another cnnlab process (pid {pid} on {host}) is writing it"
    else:
        who = "another cnnlab process is writing it"
    return (f"run folder '{path}' is locked: {who}; wait for that run to end (or stop it), "
            "or choose another --out")


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete what killed atomic writes left in the run folder and below (links are not followed)."""
    removed = []
    for folder, dirs, files in os.walk(path):
        for name in [*files, *dirs]:
            if not TEMP_PATTERN.match(name):
                continue
            p = Path(folder) / name
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                    dirs.remove(name)
                else:
                    p.unlink()
            except OSError:
                continue
            removed.append(p)
    return removed


def claim_run_dir(path: str | Path, *, resume: bool, has_checkpoint: Callable[[], bool],
                  restarted: bool = False) -> RunClaim:
    """Lock `path` for this process and decide how the run starts in it.

    `resume`: the user asked to continue this folder (`--resume`). `restarted`: torchrun restarted the
    process after a failure (continue if there is a checkpoint). `has_checkpoint` is asked once the lock is
    held. A folder whose earlier attempt stopped before its first checkpoint is started from scratch (said
    in `notes`); one that holds progress without `--resume` is refused.
    """
    path = Path(path)
    lock = lock_run_dir(path)
    try:
        notes = []
        removed = remove_stale_temporaries(path)
        if removed:
            notes.append(f"removed {len(removed)} temporary file(s) left by an interrupted write in '{path}'")
        started = (path / "config.json").is_file()
        if has_checkpoint():
            if not (resume or restarted):
                raise CnnlabError(f"run directory '{path}' already holds a run; continue it with --resume {path} "
                                  "or choose another --out")
            return RunClaim(lock, True, notes)
        if _recorded_epochs(path):  # finished epochs but no checkpoint: someone removed them
            what = "cannot resume" if resume else "will not overwrite"
            raise CnnlabError(f"{what} '{path}': metrics.jsonl records finished epochs but its checkpoints/ holds "
                              "no checkpoint; choose another --out")
        if resume:
            notes.append(f"'{path}' has no checkpoint yet (its earlier attempt stopped before the first one): "
                         "starting the run from scratch")
        elif started:
            notes.append(f"'{path}' holds an attempt that stopped before its first checkpoint: starting afresh in it")
        return RunClaim(lock, False, notes)
    except BaseException:
        lock.release()
        raise


def _recorded_epochs(path: Path) -> bool:
    metrics = path / "metrics.jsonl"
    try:
        return metrics.is_file() and metrics.stat().st_size > 0
    except OSError:
        return False
