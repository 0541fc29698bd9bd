"""The experiment family: one registered function per claim of the course, one output format for all.

An experiment is a thin script over the public API. It is registered with `@register_experiment` and
receives an `ExperimentContext` (output folder, size, dataset, seeds, progress); it runs every cell once
per seed in `ctx.seeds`, selects weights on a validation split held out of its training images (never
on test), and returns an `Outcome` (table rows with mean ± std and 95% intervals over the seeds, plot
file, the checks of `cnnlab.core.stats` that decide the verdict, the rule, and why).
The framework times it and writes, under `OUT/NAME/`:

    table.md      the claim, the table, the verdict, the command and the machine
    result.json   the same, machine-readable
    plot.png      the experiment's picture (written by the experiment through `ctx.path("plot.png")`)

`run_all` runs every registered experiment in the lecture's order and writes `OUT/lecture.md`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import pkgutil
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cnnlab.core.files import atomic_write_json, atomic_write_text
from cnnlab.core.stats import RULE, Check, Interval, format_interval
from cnnlab.errors import CnnlabError, did_you_mean

RESULT_FORMAT = "cnnlab-experiment-2"
SIZES = ("quick", "default", "large")
DEFAULT_SEEDS = {"quick": 1, "default": 3, "large": 5}  # seeds per cell unless --seeds says otherwise


@dataclass
class Outcome:
    """What an experiment measured. `supported`: True (supported) / False (contradicted) / None (inconclusive).

    A cell may hold a summary dict (`cnnlab.core.stats.Interval.to_dict()`): it is shown as
    'mean ± std [95% interval]' in the column's format. `checks` are the parts of the claim that decided
    `supported` (see `cnnlab.core.stats.combine`); `rule` is the rule they follow, printed with the verdict.
    """

    columns: list[str]  # column keys, in display order
    rows: list[dict[str, Any]]  # one dict per row, keyed by column; floats are formatted by `fmt`
    supported: bool | None
    verdict: str  # one or two sentences that cite the measured numbers
    plot: str | None = "plot.png"  # file name under the experiment's folder, or None
    headers: dict[str, str] = field(default_factory=dict)  # column key -> display header (units)
    fmt: dict[str, str] = field(default_factory=dict)  # column key -> format spec, e.g. ".2%", ",d"
    notes: list[str] = field(default_factory=list)  # what the reader should know (sizes, caveats)
    checks: list[Check] = field(default_factory=list)  # the parts of the claim, each decided by its interval
    rule: str = RULE  # how `checks` decide the verdict


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
    seed: int  # the first seed
    device: str  # "auto", "cpu" or "cuda"
    progress: Progress
    seeds: tuple[int, ...] = ()  # every cell runs once per seed: seed, seed + 1, ...
    size: str = "default"  # "quick", "default" or "large"

    def __post_init__(self):
        if not self.seeds:
            self.seeds = (self.seed,)
        if self.quick:
            self.size = "quick"

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
    if isinstance(value, dict) and "mean" in value:  # a summary over seeds
        return format_interval(value, spec or ".4g")
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
    """The verdict's key in result.json: supported, contradicted or inconclusive."""
    return {True: "supported", False: "contradicted", None: "inconclusive"}[supported]


def verdict_text(supported: bool | None, quick: bool) -> str:
    """As printed: 'inconclusive' says at which budget (the quick size, or this one)."""
    if supported is None:
        return "inconclusive at quick size" if quick else "inconclusive at this budget"
    return verdict_word(supported) + (" (quick)" if quick else "")


def checks_table(checks: Sequence[Check]) -> str:
    """The parts of the claim: the paired difference over seeds, its 95% interval and the outcome."""
    lines = ["| part of the claim | difference: mean ± std [95% interval] | outcome |", "|---|---|---|"]
    for c in checks:
        shown = format_interval(c.interval.to_dict(), c.spec) if c.interval is not None else "exact"
        if c.detail:
            shown += f"; {c.detail}"
        lines.append(f"| {c.label} | {shown} | {c.outcome} |")
    return "\n".join(lines)


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
    seeds: list[int] = field(default_factory=list)
    size: str = "default"
    cpu_seconds: float = 0.0  # CPU time of this process (all threads): what a busy machine does not inflate
    format: str = RESULT_FORMAT

    def markdown(self, heading: str = "#", plot_prefix: str = "") -> str:
        o = self.outcome
        size = "quick size (numbers are illustrative only)" if self.quick else f"{self.size} size"
        n = len(self.seeds) or 1
        seeds = f"{n} seed{'s' if n != 1 else ''} ({', '.join(map(str, self.seeds or [self.seed]))})"
        parts = [f"{heading} {self.title}", "", f"**Claim.** {self.claim}", "",
                 f"`{self.command}` — {size}, {seeds}, {self.seconds:.0f} s wall ({self.cpu_seconds:.0f} s CPU) "
                 f"on {self.machine}.", "",
                 markdown_table(o), ""]
        if n > 1:
            parts += ["Cells: mean ± standard deviation over the seeds [95% t-interval of the mean].", ""]
        if o.plot:
            parts += [f"![{self.title}]({plot_prefix}{o.plot})", ""]
        if o.checks:
            parts += [checks_table(o.checks), ""]
        parts += [f"**Verdict: {verdict_text(o.supported, self.quick)}.** {o.verdict}", ""]
        if o.checks:
            parts += [f"*Rule.* {o.rule}", ""]
        parts += [f"- {n}" for n in o.notes]
        return "\n".join(parts).rstrip() + "\n"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = verdict_word(self.outcome.supported)
        d["outcome"]["checks"] = [c.to_dict() for c in self.outcome.checks]
        return d


def resolve_size(quick: bool, size: str | None, seeds: int | None) -> tuple[str, int]:
    """(size, seeds): --quick is the quick size; seeds default to 1 at quick size, 3 at default, 5 large."""
    size = "quick" if quick else (size or "default")
    if size not in SIZES:
        raise CnnlabError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        raise CnnlabError(f"seeds must be a positive integer, got {seeds!r}")
    return size, seeds or DEFAULT_SEEDS[size]


def _options(size: str, n_seeds: int) -> str:
    flag = " --quick" if size == "quick" else f" --size {size}" if size != "default" else ""
    return flag + (f" --seeds {n_seeds}" if n_seeds != DEFAULT_SEEDS[size] else "")


def run_experiment(name: str, *, out: str | Path, quick: bool = False, data: str | None = None,
                   data_dir: str | None = None, seed: int = 0, device: str = "auto",
                   progress: bool = True, seeds: int | None = None, size: str | None = None) -> ExperimentResult:
    """Run one experiment; writes OUT/NAME/{table.md, result.json, plot.png} and returns the result.

    Every cell runs `seeds` times (seed, seed + 1, ...; default 3, 1 with `quick`, 5 at size "large").
    """
    spec = get_experiment(name)
    size, n_seeds = resolve_size(quick, size, seeds)
    quick = size == "quick"
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    data = data or spec.default_data
    seed_list = tuple(range(seed, seed + n_seeds))
    ctx = ExperimentContext(name=name, out=folder, quick=quick, data=data, data_dir=data_dir, seed=seed,
                            device=device, progress=Progress(name, enabled=progress), seeds=seed_list, size=size)
    command = f"cnnlab experiment {name}" + (f" --data {data}" if data and data != spec.default_data else "") + \
        _options(size, n_seeds)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        outcome = spec.func(ctx)
    finally:
        ctx.progress.close()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    result = ExperimentResult(name, spec.title, spec.claim, command, quick, seconds, machine_description(), data,
                              seed, outcome, list(seed_list), size, round(cpu, 1))
    atomic_write_json(folder / "result.json", result.to_dict())
    atomic_write_text(folder / "table.md", result.markdown())
    return result


def lecture_markdown(results: Sequence[ExperimentResult], command: str, preface: Sequence[str] = ()) -> str:
    """docs/lecture.md: the course's claims in order, each with its command, table, plot and verdict."""
    quick = any(r.quick for r in results)
    total = sum(r.seconds for r in results)
    cpu = sum(r.cpu_seconds for r in results)
    head = ["# The lecture, reproduced", "",
            f"Generated by `{command}`; do not edit by hand. Machine: {results[0].machine if results else '?'}. "
            f"Total wall time {total / 60:.1f} min ({total:.0f} s); CPU time {cpu / 60:.1f} min.", ""]
    head += [*preface, *([""] if preface else [])]
    if results and not quick:
        n_seeds = max(len(r.seeds) or 1 for r in results)
        head += [f"**Size.** {results[0].size} size: every cell trained {n_seeds} times (seeds "
                 f"{', '.join(map(str, results[0].seeds))}) on small class-balanced subsets of the data (each "
                 "section's notes give its images and epochs), 10% of the training images held out as the "
                 "validation split that chooses epochs, budgets and depths; the test images are evaluated once, "
                 "on the chosen weights. For more data and epochs run `cnnlab experiment all --size large` "
                 "(5 seeds; meant for a GPU or a long run); `--seeds N` changes the seeds at any size.", ""]
    if quick:
        head += ["**These are quick-size numbers** (`--quick`): tiny data, few steps and one seed, to show the "
                 "commands work; every verdict is inconclusive at quick size unless the interval rule decides. "
                 "Run without `--quick` for the measured tables.", ""]
    head += ["| claim | verdict | wall time | CPU time |", "|---|---|---|---|"]
    head += [f"| [{r.title}](#{_anchor(r.title)}) | {verdict_text(r.outcome.supported, r.quick)} "
             f"| {r.seconds:.0f} s | {r.cpu_seconds:.0f} s |" for r in results]
    head.append("")
    if results and any(r.outcome.checks for r in results):
        head += [f"**How verdicts are decided.** {RULE}", ""]
    body = [r.markdown(heading="##", plot_prefix=f"{r.name}/") for r in results]
    return "\n".join(head) + "\n" + "\n".join(body)


def _anchor(title: str) -> str:
    return "".join(ch for ch in title.lower().replace(" ", "-") if ch.isalnum() or ch == "-")


def run_all(*, out: str | Path, quick: bool = False, data: str | None = None, data_dir: str | None = None,
            seed: int = 0, device: str = "auto", progress: bool = True,
            names: Sequence[str] | None = None, seeds: int | None = None, size: str | None = None,
            preface: Sequence[str] = ()) -> list[ExperimentResult]:
    """Every experiment (or `names`) in the lecture's order; writes OUT/lecture.md after each one.

    `preface`: lines printed under the lecture's heading (e.g. where and how busy the machine was).
    """
    specs = [get_experiment(n) for n in names] if names else list_experiments()
    size, n_seeds = resolve_size(quick, size, seeds)
    command = f"cnnlab experiment all --out {out}" + _options(size, n_seeds)
    results = []
    for spec in specs:
        results.append(run_experiment(spec.name, out=out, data=data, data_dir=data_dir, seed=seed,
                                      device=device, progress=progress, seeds=n_seeds, size=size))
        atomic_write_text(Path(out) / "lecture.md", lecture_markdown(results, command, preface))
    return results


def result_from_dict(d: dict[str, Any]) -> ExperimentResult:
    """An `ExperimentResult` back from its result.json (`to_dict()`), checks and intervals included."""
    def interval(iv: dict[str, Any] | None) -> Interval | None:
        if iv is None:
            return None
        nan = float("nan")
        return Interval(iv["n"], nan if iv["mean"] is None else iv["mean"], nan if iv["std"] is None else iv["std"],
                        -math.inf if iv["low"] is None else iv["low"], math.inf if iv["high"] is None else iv["high"],
                        iv.get("confidence", 0.95))

    o = dict(d["outcome"])
    def spec(c: dict[str, Any]) -> str:  # files written before checks stored their format: accuracies, else 3 decimals
        return c.get("spec") or ("+.3f" if "loss" in c["label"] or "log10" in c["label"] else "+.2%")

    o["checks"] = [Check(c["label"], c["outcome"], interval(c["interval"]), c.get("threshold", 0.0),
                         c.get("detail", ""), spec(c)) for c in o.get("checks", [])]
    outcome = Outcome(**{f.name: o[f.name] for f in fields(Outcome) if f.name in o})
    keep = {f.name: d[f.name] for f in fields(ExperimentResult) if f.name in d and f.name != "outcome"}
    return ExperimentResult(**keep, outcome=outcome)


def write_lecture(out: str | Path, preface: Sequence[str] = ()) -> list[ExperimentResult]:
    """Rebuild OUT/lecture.md from the result.json of every experiment already run under OUT, in the
    lecture's order (`cnnlab experiment lecture`): after re-running one experiment, or after running
    several as separate processes. Returns the results it found."""
    results = [result_from_dict(read_result(Path(out) / s.name)) for s in list_experiments()
               if (Path(out) / s.name / "result.json").is_file()]
    if not results:
        raise CnnlabError(f"no experiment results under {out}; run `cnnlab experiment NAME --out {out}` first")
    atomic_write_text(Path(out) / "lecture.md", lecture_markdown(results, f"cnnlab experiment lecture --out {out}",
                                                                 preface))
    return results


def read_result(folder: str | Path) -> dict[str, Any]:
    """The `result.json` of a finished experiment folder."""
    path = Path(folder) / "result.json"
    if not path.is_file():
        raise CnnlabError(f"no experiment result at {path}; run `cnnlab experiment NAME --out DIR` first")
    return json.loads(path.read_text())
