"""The zoo's table (`cnnlab models`): parameters and MACs of every registered model, kept in the user cache.

The numbers are fixed by the code: tracing the whole zoo on the meta device needs torch and its Python
decompositions (seconds), so it is done once per version of the code that decides them and read back after
that without importing torch. The cache key covers cnnlab's version, torch's version and the bytes of every
source file that builds or counts a model (`models/`, `layers/`, the tracer and the summary): editing any of
them, or upgrading torch, traces again. The file is JSON (nothing in it runs); one that does not parse or does
not have the table's shape is traced anew and rewritten.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import json
from pathlib import Path

from cnnlab.core.files import atomic_write_json
from cnnlab.core.paths import cache_dir
from cnnlab.errors import CnnlabError, did_you_mean
from cnnlab.version import __version__

_PACKAGE = Path(__file__).resolve().parent.parent  # cnnlab/
_SOURCES = ("models/**/*.py", "layers/**/*.py", "layers/**/*.c", "inspect/tracer.py", "inspect/layer_summary.py")
_FIELDS = {"name": str, "family": str, "params": int, "macs": int, "input_size": list, "num_classes": int, "paper": str}


def cache_path() -> Path:
    """Where the table of this code and this torch lives (a new key for each version of either)."""
    digest = hashlib.sha256(f"cnnlab {__version__}\0torch {_torch_version()}\0".encode())
    for path in sorted(p for pattern in _SOURCES for p in _PACKAGE.glob(pattern)):
        digest.update(str(path.relative_to(_PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return cache_dir("zoo") / f"models-{digest.hexdigest()[:20]}.json"


def zoo_stats(pattern: str = "*") -> list[dict]:
    """`cnnlab.inspect.model_stats(pattern)`, read from the user cache when this code traced it before.

    A cache that cannot be written (a read-only home) only costs the trace next time."""
    path = cache_path()
    rows = _read(path)
    if rows is None:
        # torch and the zoo load only here, on a cache miss: `cnnlab models` otherwise runs without them
        from cnnlab.inspect.layer_summary import model_stats  # noqa: PLC0415

        rows = model_stats("*")
        try:
            atomic_write_json(path, rows)
        except OSError:
            pass
    names = [r["name"] for r in rows]
    matching = [r for r in rows if fnmatch.fnmatch(r["name"], pattern)]
    if not matching:
        raise CnnlabError(f"no registered model matches '{pattern}'{did_you_mean(pattern, names)}; "
                          "`cnnlab models` lists them all")
    return matching


def format_models(stats: list[dict]) -> str:
    """`model_stats()` as an aligned table."""
    head = ("Model", "Params", "MACs", "Input", "Classes", "Paper")
    rows = [
        (d["name"], f"{d['params']:,}", human(d["macs"]), "x".join(map(str, d["input_size"])), str(d["num_classes"]),
         d["paper"])
        for d in stats
    ]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    right = {1, 2, 4}

    def line(row) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return "\n".join([line(head), *(line(r) for r in rows)])


def human(n: float) -> str:
    """1234567 -> '1.23 M' (decimal prefixes, as MAC counts are quoted)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def _torch_version() -> str:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:  # a source build without metadata: ask torch itself
        import torch  # noqa: PLC0415

        return torch.__version__


def _read(path: Path) -> list[dict] | None:
    """The cached table, or None when there is none or it is not a table of the expected shape."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(rows, list) and rows and all(
        isinstance(r, dict) and r.keys() == _FIELDS.keys()
        and all(isinstance(r[k], t) and not isinstance(r[k], bool) for k, t in _FIELDS.items())
        for r in rows)
    return rows if ok else None
