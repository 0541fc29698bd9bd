"""`compare_runs(runs)`: several training runs side by side, the options that differ, and their curves in one PNG.

Reads only what the runs recorded (config.json, metrics.jsonl, best.json): nothing is evaluated again, so
comparing is instant and needs no dataset. A k-fold folder (`cnnlab train --folds K`: folds.json and
fold-1..K) stands for its sub-runs.

    >>> from cnnlab.inspect.compare import compare_runs
    >>> c = compare_runs(["runs/plain", "runs/weighted"], out="compare.png")
    >>> print(c.table())
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.core.figures import plot_curves_overlay
from cnnlab.core.run import RunDir, open_run
from cnnlab.errors import CnnlabError

MAX_RUNS = 20  # one colour each (tab10 repeats after 10), one column each in the table
# top-level entries of config.json worth comparing beside the options (the rest is provenance)
SETUP = ("device", "precision", "channels_last", "world_size")
NOT_OPTIONS = ("out",)  # differs between any two runs by construction


@dataclass
class RunRecord:
    """One run as the comparison sees it."""

    label: str  # the shortest path suffix that tells it from the others
    path: Path
    options: dict[str, Any]  # config.json's options plus SETUP
    history: list[dict[str, Any]]
    results: dict[str, Any]


@dataclass
class Comparison:
    """What `compare_runs` found; `table()` is what `cnnlab compare` prints."""

    runs: list[RunRecord]
    differing: dict[str, list[Any]]  # option -> its value in each run, for the options that differ
    figure: Path | None = None
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        labels = [r.label for r in self.runs]
        lines = ["runs:"] + [f"  {r.label}: {r.path}" for r in self.runs]
        if self.differing:
            rows = [[name, *(_show(v) for v in values)] for name, values in self.differing.items()]
            lines += ["", "options that differ:", *_grid(["option", *labels], rows)]
        else:
            lines += ["", "options: the same in every run"]
        names = list(dict.fromkeys(k for r in self.runs for k in r.results))
        rows = [[name, *(_show(r.results.get(name), name) for r in self.runs)] for name in names]
        lines += ["", "results (last epoch unless named best):", *_grid(["", *labels], rows)]
        if self.figure is not None:
            lines += ["", f"curves: {self.figure}"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _show(v: Any, name: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and ("accuracy" in name or name.endswith("f1")):
        return f"{100 * v:.2f}%"
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (dict, list, bool)) else str(v)


def _grid(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return ["  " + fmt.format(*headers)] + ["  " + fmt.format(*r) for r in rows]


def expand_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The run folders named by `paths`, a k-fold folder replaced by its fold-1..K (in order)."""
    out = []
    for p in paths:
        p = Path(p)
        if (p / "folds.json").is_file() and not (p / "config.json").is_file():
            subs = [d for d in p.iterdir() if d.is_dir() and re.fullmatch(r"fold-\d+", d.name)]
            out += sorted(subs, key=lambda d: int(d.name.split("-")[1]))
        else:
            out.append(p)
    return out


def run_labels(paths: list[Path]) -> list[str]:
    """The shortest path suffixes (1, 2, ... parts) that are all different."""
    parts = [p.resolve().parts for p in paths]
    for n in range(1, max(len(x) for x in parts) + 1):
        labels = ["/".join(x[-n:]) for x in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _results(run: RunDir, history: list[dict[str, Any]]) -> dict[str, Any]:
    last = history[-1] if history else {}
    best = run.card("best") if (run.path / "best.json").is_file() else None
    return {
        "epochs": last.get("epoch"),
        "train_loss": last.get("train_loss"), "train_accuracy": last.get("train_accuracy"),
        "val_loss": last.get("val_loss"), "val_accuracy": last.get("val_accuracy"),
        "test_loss": last.get("test_loss"), "test_accuracy": last.get("test_accuracy"),
        "best_epoch": best.epoch if best else None, "best_accuracy": best.accuracy if best else None,
        "seconds": round(sum(h.get("seconds") or 0 for h in history), 1) if history else None,
    }


def compare_runs(runs: Sequence[str | Path], out: str | Path | None = None) -> Comparison:
    """Compare finished runs (at least two, k-fold folders expanded); with `out`, draw their curves there (PNG)."""
    paths = expand_runs(runs)
    if len(paths) < 2:
        raise CnnlabError(f"compare needs at least two runs, got {len(paths)}: give two or more run folders "
                          "(or one k-fold folder)")
    if len(paths) > MAX_RUNS:
        raise CnnlabError(f"compare takes at most {MAX_RUNS} runs (one column each), got {len(paths)}")
    if out is not None and Path(out).suffix.lower() != ".png":
        raise CnnlabError(f"the curves are a PNG image: --out must end in .png, got '{out}'")
    labels = run_labels(paths)
    records, notes = [], []
    for label, path in zip(labels, paths, strict=True):
        run = open_run(path)
        meta = run.read_config() if run.exists() else {}
        options = {k: v for k, v in meta.get("config", {}).items() if k not in NOT_OPTIONS}
        options.update({k: meta[k] for k in SETUP if k in meta})
        history = run.read_metrics()
        if not history:
            notes.append(f"{label} recorded no epoch (no metrics.jsonl)")
        records.append(RunRecord(label, path, options, history, _results(run, history)))
    names = list(dict.fromkeys(k for r in records for k in r.options))
    differing = {n: [r.options.get(n) for r in records] for n in names
                 if len({json.dumps(r.options.get(n), sort_keys=True) for r in records}) > 1}
    figure = None
    if out is not None:
        with_history = [r for r in records if r.history]
        if with_history:
            figure = Path(out)
            plot_curves_overlay([r.history for r in with_history], [r.label for r in with_history], figure,
                                title=f"{len(with_history)} runs compared")
    return Comparison(records, differing, figure, notes)
