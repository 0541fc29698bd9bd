"""The per-epoch progress bar (tqdm) and the time format of the per-epoch summary.

In a terminal the bar is tqdm's one-line text bar on stderr, erased when the epoch ends (the Trainer
then prints the epoch's summary line); in a Jupyter kernel it is tqdm's notebook widget
(`tqdm.auto` chooses; the widget needs ipywidgets), left in place, green, when the epoch ends. Output
that is neither (a log file, a pipe) gets no bar. The line reads

    epoch 1/3:  40%|████▍     | 4/10 [00:01<00:02, loss 2.2031, acc 21.50%, 5,120 img/s]

and, while other processes keep at least half a CPU busy (`cnnlab.core.machine.CpuShare`: /proc/stat's
busy time less this process's own, over the last few seconds), it adds e.g. `shared: others use 1.0 of
2 CPUs`: the images/s are then not the machine's, and `--threads auto` may help.

The bar redraws at most every `interval` seconds: reading the running loss and accuracy is the only
host synchronisation it causes, so it happens at that rate, not per step.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm as text_tqdm
from tqdm.auto import tqdm as auto_tqdm  # tqdm.notebook.tqdm inside a Jupyter kernel with ipywidgets

from cnnlab.core.machine import CpuShare

# tqdm's default layout without its batches/s (the postfix gives images/s, which means more)
_LAYOUT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def in_notebook() -> bool:
    """Whether tqdm.auto chose its Jupyter widget (we run in a Jupyter kernel that has ipywidgets)."""
    notebook = sys.modules.get("tqdm.notebook")  # imported by tqdm.auto only inside a Jupyter kernel
    return notebook is not None and issubclass(auto_tqdm, notebook.tqdm)


class ProgressBar:
    """`bar.update(step, images, stats_fn)` per step; `stats_fn()` returns (loss, accuracy) and is only
    called on redraw. `stream`: where a text bar goes (default stderr; only drawn if it is a terminal);
    when it is not given and we run in Jupyter, the bar is tqdm's notebook widget."""

    def __init__(self, total: int, prefix: str, *, enabled: bool = True, stream: TextIO | None = None,
                 interval: float = 0.25):
        self.stream = stream or sys.stderr
        self.widget = enabled and stream is None and in_notebook()
        self.enabled = enabled and (self.widget or (hasattr(self.stream, "isatty") and self.stream.isatty()))
        self.total, self.interval = max(1, total), interval
        self.start = time.perf_counter()
        self.last_draw = -math.inf  # the first update draws
        self.images = 0
        # the last few seconds; the whole epoch. job=True: the other ranks of a torchrun job are not a neighbour
        self._share, self._epoch_share = CpuShare(job=True), CpuShare(job=True)
        self._share_at, self._shared = self.start, ""
        self._bar: text_tqdm | None = None
        if self.enabled:
            # redraws are paced here (they read the device); tqdm draws each one it is given
            cls = auto_tqdm if self.widget else text_tqdm
            self._bar = cls(total=self.total, desc=prefix, bar_format=_LAYOUT, mininterval=0, miniters=1,
                            leave=self.widget, **({} if self.widget else {"file": self.stream}))

    def update(self, step: int, images: int, stats_fn: Callable[[], tuple[float, float]]) -> None:
        """`step`: batches done in this epoch; `images`: images seen so far in this epoch (this process)."""
        self.images = images
        now = time.perf_counter()
        if self._bar is None or (now - self.last_draw < self.interval and step < self.total):
            return
        self.last_draw = now
        loss, acc = stats_fn()
        elapsed = now - self.start
        rate = images / elapsed if elapsed > 0 else 0.0
        if now - self._share_at >= 2.0:  # a window of a few seconds: shorter ones are all noise
            self._share_at, self._shared = now, self._share.note()
        shared = f", {self._shared}" if self._shared else ""
        self._bar.set_postfix_str(f"loss {loss:.4f}, acc {100 * acc:5.2f}%, {rate:,.0f} img/s{shared}", refresh=False)
        self._bar.update(step - self._bar.n)

    def message(self, text: str) -> None:
        """Print `text` on a line of its own above the bar (which is redrawn at the next update)."""
        if self._bar is not None and not self.widget:
            self._bar.write(text, file=self.stream)  # clears the bar's line, writes, redraws the bar
            self.last_draw = -math.inf
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def epoch_note(self) -> str:
        """'' if the machine was quiet since the bar was made, else e.g. 'shared: others use 1.0 of 2 CPUs'."""
        return self._epoch_share.note()

    def close(self) -> None:
        """A text bar is erased; a widget stays, marked done."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
