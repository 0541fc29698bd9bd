"""Argument types with bounds: a number outside them is a usage error (one line, exit 2) before any work.

The bounds keep one argument from asking for terabytes or hours; each error states them.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from cnnlab.errors import CnnlabError


def int_in(low: int, high: int):
    """An argparse `type` accepting integers from `low` to `high` inclusive."""

    def parse(text: str) -> int:
        try:
            # ASCII digits only: int() also reads other scripts' digits ('٣' is 3), which no one types on purpose
            value = int(text) if len(text) <= 20 and text.strip().lstrip("+-").isascii() else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            shown = text if len(text) <= 24 else text[:20] + "..."
            raise argparse.ArgumentTypeError(f"expected an integer from {low:,} to {high:,}, got '{shown}'")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(low: float, high: float):
    """An argparse `type` accepting finite numbers from `low` to `high` inclusive (no nan, no inf)."""

    def parse(text: str) -> float:
        try:
            value = float(text) if len(text) <= 32 and text.isascii() else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:  # nan fails both comparisons
            shown = text if len(text) <= 24 else text[:20] + "..."
            raise argparse.ArgumentTypeError(f"expected a number from {low:g} to {high:g}, got '{shown}'")
        return value

    parse.__name__ = "number"
    return parse


IMAGE_SIDE = int_in(1, 4096)  # pixels (the training config's MAX_IMAGE_SIDE)
BATCH = int_in(1, 1 << 16)  # images per batch (the training config's MAX_BATCH)
STEPS = int_in(0, 10_000_000)  # optimizer steps
COUNT = int_in(1, 10_000)  # images or channels to draw
SEED = int_in(0, (1 << 63) - 1)  # what torch.manual_seed takes
SEEDS = int_in(1, 100)  # runs per cell of an experiment


def threads(text: str) -> int | str:
    """`--threads`: 'auto' or a whole number of threads from 1 to 1,024."""
    if text == "auto":
        return text
    try:
        return int_in(1, 1024)(text)
    except argparse.ArgumentTypeError:
        shown = text if len(text) <= 24 else text[:20] + "..."
        raise argparse.ArgumentTypeError(f"expected auto or an integer from 1 to 1,024, got '{shown}'") from None


def check_out(path: str | None, flag: str = "--out", *, folder: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written: raises `CnnlabError` naming it.

    `folder`: the path is a folder the command creates or fills (else a file). Writing is tried for real
    (an unnamed temporary file in the nearest existing folder, gone when closed): permissions, read-only
    mounts and pseudo file systems such as /proc all fail there, as they would after the work.
    """
    if path is None:
        return
    target = os.path.abspath(os.path.expanduser(str(path)))
    if folder and os.path.exists(target) and not os.path.isdir(target):
        raise CnnlabError(f"{flag} '{path}' is a file, not a folder; give a folder path (it is created if missing)")
    if not folder and os.path.isdir(target):
        raise CnnlabError(f"{flag} '{path}' is a folder; give a file path inside it")
    parent = wanted = target if folder else os.path.dirname(target)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    missing = f" ('{wanted}' does not exist)" if wanted != parent else ""
    if not os.path.isdir(parent):
        raise CnnlabError(f"{flag} '{path}': '{parent}' is a file, so nothing can be created under it; choose another path")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise CnnlabError(f"{flag} '{path}' cannot be written: {e.strerror or e} in '{parent}'{missing}; "
                          "choose a folder you can write to") from None
