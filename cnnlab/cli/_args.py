"""Argument types with bounds: a number outside them is a usage error (one line, exit 2) before any work.

The bounds keep one argument from asking for terabytes or hours; each error states them.
"""

from __future__ import annotations

import argparse


def int_in(low: int, high: int):
    """An argparse `type` accepting integers from `low` to `high` inclusive."""

    def parse(text: str) -> int:
        try:
            value = int(text) if len(text) <= 20 else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            shown = text if len(text) <= 24 else text[:20] + "..."
            raise argparse.ArgumentTypeError(f"expected an integer from {low:,} to {high:,}, got '{shown}'")
        return value

    parse.__name__ = "integer"
    return parse


IMAGE_SIDE = int_in(1, 4096)  # pixels (the training config's MAX_IMAGE_SIDE)
BATCH = int_in(1, 1 << 16)  # images per batch (the training config's MAX_BATCH)
STEPS = int_in(0, 10_000_000)  # optimizer steps
COUNT = int_in(1, 10_000)  # images or channels to draw
SEED = int_in(0, (1 << 63) - 1)  # what torch.manual_seed takes
