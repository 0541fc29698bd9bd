"""A one-line progress bar per epoch (loss, accuracy, images/s, time left) and the per-epoch summary.

The bar redraws at most every `interval` seconds and only on a terminal; reading the running loss is
the only host synchronisation it causes, so it happens at that rate, not per step.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    """`bar.update(step, stats_fn)` per step; `stats_fn()` returns (loss, accuracy) and is only called on redraw."""

    def __init__(self, total: int, prefix: str, *, enabled: bool = True, stream: TextIO | None = None,
                 interval: float = 0.25, width: int = 24):
        self.stream = stream or sys.stderr
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total, self.prefix, self.interval, self.width = max(1, total), prefix, interval, width
        self.start = time.perf_counter()
        self.last_draw = 0.0
        self.drawn = False  # a bar is on the current line
        self.images = 0

    def update(self, step: int, images: int, stats_fn) -> None:
        """`step`: batches done in this epoch; `images`: images seen so far in this epoch (this process)."""
        self.images = images
        now = time.perf_counter()
        if not self.enabled or (now - self.last_draw < self.interval and step < self.total):
            return
        self.last_draw = now
        loss, acc = stats_fn()
        elapsed = now - self.start
        rate = images / elapsed if elapsed > 0 else 0.0
        left = elapsed / step * (self.total - step) if step else 0.0
        filled = int(self.width * step / self.total)
        bar = "█" * filled + "·" * (self.width - filled)
        self.stream.write(
            f"\r{self.prefix} {bar} {step}/{self.total} loss {loss:.4f} acc {100 * acc:5.2f}% "
            f"{rate:,.0f} img/s left {format_seconds(left)} "
        )
        self.stream.flush()
        self.drawn = True

    def message(self, text: str) -> None:
        """Print `text` on a line of its own above the bar (which is redrawn at the next update), instead
        of appending it to the bar's line."""
        if self.drawn:
            self._erase()
            self.last_draw = 0.0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._erase()
            self.stream.flush()
        self.drawn = False

    def _erase(self) -> None:
        """Blank the bar's line and return to its start."""
        self.stream.write("\r" + " " * 110 + "\r")
        self.drawn = False
