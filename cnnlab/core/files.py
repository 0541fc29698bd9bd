"""Files that survive crashes and planted links: atomic writes through safely created temporary files.

An atomic write creates a temporary file in the destination folder, writes and fsyncs it, `os.replace`s
it over the target and fsyncs the folder: a crash at any point leaves the old file or the new one,
never a truncated one.

The temporary file is created with `O_CREAT | O_EXCL | O_NOFOLLOW` under a random name
(`.<name>.<16 hex digits>.tmp`), so a file or symlink planted in the folder is never opened or followed:
its name is taken, and another name is drawn. It is created with mode 0o666 and the kernel applies the
process umask, so the new file gets the mode a plain `open(path, "w")` would give, without reading or
changing the umask. Writers that need a path instead of an open file (ONNX and TorchScript exporters)
use `atomic_path`, which gives them a path inside a fresh private folder (mkdir, 0o700) next to the
destination.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"  # every temporary name ends in this: `.<name>.<random>.tmp` (files and folders)
_TOKEN_BYTES = 8  # the random part: 16 hex digits
# every name `temp_name` makes, and only those: stale ones are cleaned when a run folder is taken over
TEMP_PATTERN = re.compile(rf"^\..+\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}{re.escape(TEMP_SUFFIX)}$")
_ATTEMPTS = 100  # names drawn before giving up: each collision means a planted or leftover entry
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) \
    | getattr(os, "O_BINARY", 0)


def temp_name(name: str) -> str:
    """A fresh temporary name for a file `name`: `.<name>.<16 random hex digits>.tmp`."""
    return f".{name}.{secrets.token_hex(_TOKEN_BYTES)}{TEMP_SUFFIX}"


def _create(folder: Path, name: str, make: Callable[[Path], Any]) -> tuple[Any, Path]:
    """`make(candidate)` under fresh temporary names until one does not exist yet; (its result, path)."""
    for _ in range(_ATTEMPTS):
        candidate = folder / temp_name(name)
        try:
            return make(candidate), candidate
        except FileExistsError:  # a planted file or link (or a leftover) holds that name: draw another
            continue
    raise FileExistsError(f"could not create a temporary file for '{name}' in '{folder}' after {_ATTEMPTS} tries")


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None] | bytes) -> Path:
    """Write `path` atomically; `write` is the bytes, or a function that writes to the open binary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create(path.parent, path.name, lambda p: os.open(p, _FLAGS, 0o666))  # 0o666 minus the umask
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, (bytes, bytearray, memoryview)):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically (values JSON cannot hold are written as strings)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write `path` through, for writers that take a file name.

        with atomic_path("model.onnx") as tmp:
            torch.onnx.export(model, args, str(tmp))

    `tmp` lies in a private folder (created 0o700 under a fresh random name beside `path`), so nothing
    planted can be at `tmp` and no one else can put anything there. When the block ends without an
    exception, the file is fsynced and renamed over `path`; in any case the private folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, private = _create(path.parent, path.name, lambda p: os.mkdir(p, 0o700))
    try:
        tmp = private / path.name
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer did not create '{tmp}'")
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory entry; without this a power cut can undo it.
    if sys.platform.startswith("win"):
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
