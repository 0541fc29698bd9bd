"""The experiment family: one registered function per claim of the course, one output format for all.

An experiment is a thin script over the public API. It is registered with `@register_experiment` and
receives an `ExperimentContext` (output folder, quick or default size, dataset, seed, progress); it
returns an `Outcome` (table rows, plot file, whether the measurement supports the claim, and why).
The framework times it and writes, under `OUT/NAME/`:

    table.md      the claim, the table, the verdict, the command and the machine
    result.json   the same, machine-readable
    plot.png      the experiment's picture (written by the experiment through `ctx.path("plot.png")`)

`run_all` runs every registered experiment in the lecture's order and writes `OUT/lecture.md`.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.core.files import atomic_write_json, atomic_write_text
from cnnlab.errors import CnnlabError, did_you_mean

RESULT_FORMAT = "cnnlab-experiment-1"


@dataclass
class Outcome:
    """What an experiment measured. `supported`: True / False / None (inconclusive)."""

    columns: list[str]  # column keys, in display order
    rows: list[dict[str, Any]]  # one dict per row, keyed by column; floats are formatted by `fmt`
    supported: bool | None
    verdict: str  # one or two sentences that cite the measured numbers
    plot: str | None = "plot.png"  # file name under the experiment's folder, or None
    headers: dict[str, str] = field(default_factory=dict)  # column key -> display header (units)
    fmt: dict[str, str] = field(default_factory=dict)  # column key -> format spec, e.g. ".2%", ",d"
    notes: list[str] = field(default_factory=list)  # what the reader should know (sizes, caveats)


@dataclass
class ExperimentSpec:
    name: str
    title: str  # short heading, e.g. "Why convolutions"
    claim: str  # the course's claim, one sentence
    order: int  # position in the lecture
    func: Callable[[ExperimentContext], Outcome]
    default_data: str | None = "fashion-mnist"
    budget: str = ""  # expected time of the default size on 2 CPU cores, e.g. "about 4 min"


class Progress:
    """One progress line for a whole experiment: `ctx.progress.total = n`, then `ctx.progress.step("what")`."""

    def __init__(self, name: str, *, enabled: bool = True, stream=None):
        self.name, self.total, self.done = name, 0, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()

    def step(self, what: str = "", n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        total = max(self.total, self.done)
        width = 20
        filled = int(width * self.done / total) if total else width
        bar = "█" * filled + "·" * (width - filled)
        left = elapsed / self.done * (total - self.done) if self.done else 0.0
        line = f"{self.name} {bar} {self.done}/{total} {what} ({elapsed:.0f}s, ~{left:.0f}s left)"
        if self.tty:
            self.stream.write("\r" + line[:118].ljust(118))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r" + " " * 118 + "\r")
            self.stream.flush()


@dataclass
class ExperimentContext:
    """What an experiment may use. Write files only through `path()`; train quietly (`verbose=False`)."""

    name: str
    out: Path  # OUT/NAME, created
    quick: bool  # --quick: a tiny size that finishes in seconds; results are marked quick
    data: str | None  # dataset name (the experiment's default unless --data was given)
    data_dir: str | None
    seed: int
    device: str  # "auto", "cpu" or "cuda"
    progress: Progress

    def path(self, filename: str) -> Path:
        return self.out / filename


_REGISTRY: dict[str, ExperimentSpec] = {}


def register_experiment(name: str, *, title: str, claim: str, order: int, default_data: str | None = "fashion-mnist",
                        budget: str = "") -> Callable:
    """Decorator: `@register_experiment("why-conv", title=..., claim=..., order=10)` on `def run(ctx) -> Outcome`."""

    def wrap(func: Callable[[ExperimentContext], Outcome]):
        if name in _REGISTRY:
            raise ValueError(f"experiment {name!r} registered twice")
        _REGISTRY[name] = ExperimentSpec(name, title, claim, order, func, default_data, budget)
        return func

    return wrap


def _load_all() -> None:
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.name.startswith("_"):
            importlib.import_module(f"cnnlab.experiments.{info.name}")


def list_experiments() -> list[ExperimentSpec]:
    """Every registered experiment, in the lecture's order."""
    _load_all()
    return sorted(_REGISTRY.values(), key=lambda s: (s.order, s.name))


def get_experiment(name: str) -> ExperimentSpec:
    _load_all()
    if name not in _REGISTRY:
        known = [s.name for s in list_experiments()]
        raise CnnlabError(f"unknown experiment {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}, all")
    return _REGISTRY[name]


def machine_description() -> str:
    """E.g. 'Linux x86_64, 2 CPU cores, torch 2.14.1 (CPU)' — stated beside every table."""
    import torch  # noqa: PLC0415

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    return f"{platform.system()} {platform.machine()}, {cores} CPU cores, torch {torch.__version__.split('+')[0]} ({gpu})"


def _cell(value: Any, spec: str | None) -> str:
    if value is None:
        return "–"
    if spec and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def markdown_table(outcome: Outcome) -> str:
    heads = [outcome.headers.get(c, c) for c in outcome.columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for row in outcome.rows:
        lines.append("| " + " | ".join(_cell(row.get(c), outcome.fmt.get(c)) for c in outcome.columns) + " |")
    return "\n".join(lines)


def verdict_word(supported: bool | None) -> str:
    return {True: "supported", False: "not supported", None: "inconclusive"}[supported]


@dataclass
class ExperimentResult:
    """What `run_experiment` returns and writes to `result.json`."""

    name: str
    title: str
    claim: str
    command: str
    quick: bool
    seconds: float
    machine: str
    data: str | None
    seed: int
    outcome: Outcome
    format: str = RESULT_FORMAT

    def markdown(self, heading: str = "#", plot_prefix: str = "") -> str:
        o = self.outcome
        size = "quick size (numbers are illustrative only)" if self.quick else "default size"
        parts = [f"{heading} {self.title}", "", f"**Claim.** {self.claim}", "",
                 f"`{self.command}` — {size}, {self.seconds:.0f} s on {self.machine}.", "",
                 markdown_table(o), ""]
        if o.plot:
            parts += [f"![{self.title}]({plot_prefix}{o.plot})", ""]
        parts += [f"**Verdict: {verdict_word(o.supported)}{' (quick)' if self.quick else ''}.** {o.verdict}", ""]
        parts += [f"- {n}" for n in o.notes]
        return "\n".join(parts).rstrip() + "\n"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = verdict_word(self.outcome.supported)
        return d


def run_experiment(name: str, *, out: str | Path, quick: bool = False, data: str | None = None,
                   data_dir: str | None = None, seed: int = 0, device: str = "auto",
                   progress: bool = True) -> ExperimentResult:
    """Run one experiment; writes OUT/NAME/{table.md, result.json, plot.png} and returns the result."""
    spec = get_experiment(name)
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    data = data or spec.default_data
    ctx = ExperimentContext(name=name, out=folder, quick=quick, data=data, data_dir=data_dir, seed=seed,
                            device=device, progress=Progress(name, enabled=progress))
    command = f"cnnlab experiment {name}" + (f" --data {data}" if data and data != spec.default_data else "") + \
        (" --quick" if quick else "")
    start = time.perf_counter()
    try:
        outcome = spec.func(ctx)
    finally:
        ctx.progress.close()
    seconds = time.perf_counter() - start
    result = ExperimentResult(name, spec.title, spec.claim, command, quick, seconds, machine_description(), data,
                              seed, outcome)
    atomic_write_json(folder / "result.json", result.to_dict())
    atomic_write_text(folder / "table.md", result.markdown())
    return result


def lecture_markdown(results: Sequence[ExperimentResult], command: str) -> str:
    """docs/lecture.md: the course's claims in order, each with its command, table, plot and verdict."""
    quick = any(r.quick for r in results)
    head = ["# The lecture, reproduced", "",
            f"Generated by `{command}`; do not edit by hand. Machine: {results[0].machine if results else '?'}.",
            ""]
    if quick:
        head += ["**These are quick-size numbers** (`--quick`): tiny data and few steps, to show the "
                 "commands work. Run without `--quick` for the measured tables.", ""]
    head += ["| claim | verdict | time |", "|---|---|---|"]
    head += [f"| [{r.title}](#{_anchor(r.title)}) | {verdict_word(r.outcome.supported)}{' (quick)' if r.quick else ''} "
             f"| {r.seconds:.0f} s |" for r in results]
    head.append("")
    body = [r.markdown(heading="##", plot_prefix=f"{r.name}/") for r in results]
    return "\n".join(head) + "\n" + "\n".join(body)


def _anchor(title: str) -> str:
    return "".join(ch for ch in title.lower().replace(" ", "-") if ch.isalnum() or ch == "-")


def run_all(*, out: str | Path, quick: bool = False, data: str | None = None, data_dir: str | None = None,
            seed: int = 0, device: str = "auto", progress: bool = True,
            names: Sequence[str] | None = None) -> list[ExperimentResult]:
    """Every experiment (or `names`) in the lecture's order; writes OUT/lecture.md after each one."""
    specs = [get_experiment(n) for n in names] if names else list_experiments()
    command = f"cnnlab experiment all --out {out}" + (" --quick" if quick else "")
    results = []
    for spec in specs:
        results.append(run_experiment(spec.name, out=out, quick=quick, data=data, data_dir=data_dir, seed=seed,
                                      device=device, progress=progress))
        atomic_write_text(Path(out) / "lecture.md", lecture_markdown(results, command))
    return results


def read_result(folder: str | Path) -> dict[str, Any]:
    """The `result.json` of a finished experiment folder."""
    path = Path(folder) / "result.json"
    if not path.is_file():
        raise CnnlabError(f"no experiment result at {path}; run `cnnlab experiment NAME --out DIR` first")
    return json.loads(path.read_text())
