"""Errors meant for people.

A `CnnlabError` is bad input (an unknown model, a malformed spec, a missing file): the CLI prints its
message as one line on stderr and exits with code 2, without a traceback unless `--debug` is given.
Messages say what was wrong, the value received, and what would work.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnlabError(ValueError):
    """Invalid user input; the message is one self-contained line."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ` (did you mean 'x'?)` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def positive_int(label: str, value: object) -> int:
    """`value` if it is an int >= 1 (bools refused), else a `CnnlabError` naming `label` and the value."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CnnlabError(f"{label} must be a positive integer, got {value!r}")
    return value
