"""The epoch progress bar: drawn only on a terminal, paced so that it rarely reads the device, erased at the
end of the epoch. (In Jupyter it is tqdm's widget: tests/test_notebook.py runs a real kernel.)"""

from __future__ import annotations

import io

from cnnlab.training.progress import ProgressBar, format_seconds, in_notebook


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _counting(stats):
    calls = []

    def stats_fn():
        calls.append(1)
        return stats

    return stats_fn, calls


def test_no_bar_and_no_device_reads_off_a_terminal():
    log = io.StringIO()  # a log file or a pipe
    bar = ProgressBar(10, "epoch 1/1", stream=log, interval=0.0)
    stats_fn, calls = _counting((2.3, 0.1))
    for step in range(1, 11):
        bar.update(step, 64 * step, stats_fn)
    bar.message("a warning")
    bar.close()
    assert log.getvalue() == "a warning\n" and calls == []
    assert not in_notebook()  # pytest is no Jupyter kernel


def test_redraws_are_paced_and_the_last_step_is_always_drawn():
    term = Terminal()
    bar = ProgressBar(10, "epoch 2/3", stream=term, interval=3600)
    stats_fn, calls = _counting((0.25, 0.875))
    for step in range(1, 11):
        bar.update(step, 128 * step, stats_fn)
    assert len(calls) == 2  # the first step, then nothing for an hour, except the epoch's last step
    last = term.getvalue().split("\r")[-1]
    assert last.startswith("epoch 2/3:") and "10/10" in last
    assert "loss 0.2500" in last and "acc 87.50%" in last and "img/s" in last


def test_the_bar_is_erased_when_the_epoch_ends():
    term = Terminal()
    bar = ProgressBar(4, "epoch 1/1", stream=term, interval=0.0)
    for step in range(1, 5):
        bar.update(step, 32 * step, lambda: (1.0, 0.5))
    drawn = len(term.getvalue())
    bar.close()
    bar.close()  # twice is harmless (the Trainer closes on interrupt and at the end)
    erased = term.getvalue()[drawn:]
    assert erased.strip(" \r") == "" and erased.endswith("\r")  # blanks over the line, cursor back at its start
    assert len(erased) - 2 >= len(term.getvalue()[:drawn].split("\r")[-1])  # covers the whole last line


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 59.4, 61, 3599, 3600, 3725)] == ["0:00", "0:59", "1:01", "59:59",
                                                                          "1:00:00", "1:02:05"]
