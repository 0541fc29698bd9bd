"""`build_report(run)`: one self-contained HTML page about a training run (or several, compared).

Everything is inside the file: images as base64 `data:` URIs, CSS in a `<style>` block, no scripts,
fonts or links to anything outside, so it opens offline, can be mailed, and renders the same anywhere.
Every text that comes from the run folder (config.json, metrics.jsonl, the model card, file names) is
HTML-escaped where it is placed: table cells are escaped by `_table` itself, and only the few fragments
this module builds (`_Html`) go in as markup, so a planted `<script>` is shown, never run.

Sections: the run at a glance, the configuration, learning curves with the per-epoch table, the
confusion matrix and per-class accuracy of the chosen weights on the test split (evaluated again, in
float32 on the CPU), the first layer's kernels, the most confident errors, and the gradient norms per
layer when the run recorded them (`cnnlab train --monitor-gradients` writes gradients.jsonl/.png).
A section whose input is missing (dataset not found, no convolution) says why instead of failing.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.core.figures import plot_confusion, plot_curves
from cnnlab.core.files import atomic_write_text
from cnnlab.core.run import open_run
from cnnlab.errors import CnnlabError, positive_int
from cnnlab.inspect.compare import compare_runs, expand_runs, run_labels
from cnnlab.inspect.layer_summary import summary
from cnnlab.inspect.visual import draw, maps
from cnnlab.inspect.visual.show import run_split
from cnnlab.training.monitor import read_gradient_records
from cnnlab.training.run import load_model
from cnnlab.version import __version__

NOT_RECORDED = "not recorded (train with --monitor-gradients)"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       background: #f4f5f7; color: #1d2330; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6em; margin: 0 0 4px; } h2 { font-size: 1.2em; margin: 0 0 10px; }
.sub { color: #5a6270; margin-bottom: 18px; }
section { background: #fff; border-radius: 8px; padding: 16px 20px; margin: 16px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #eef2f8; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card b { display: block; font-size: 1.25em; } .card span { color: #5a6270; font-size: .85em; }
table { border-collapse: collapse; font-size: .88em; margin: 8px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e3e6eb; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.kv { columns: 2; column-gap: 32px; } .kv table { width: 100%; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; image-rendering: auto; }
img.pixels { image-rendering: pixelated; width: 320px; max-width: 100%; }  /* small kernels, enlarged */
.bar { background: #dfe6f1; width: 160px; height: 10px; border-radius: 5px; overflow: hidden; }
.bar i { display: block; height: 100%; background: #3b6fc4; }
.note { color: #7a4b00; background: #fff6e0; padding: 6px 10px; border-radius: 4px; }
.muted { color: #5a6270; font-size: .88em; }
code { background: #eef0f3; padding: 1px 4px; border-radius: 3px; }
"""


@dataclass
class Report:
    """What `build_report` wrote."""

    path: Path
    images: int  # pictures embedded as data URIs
    notes: list[str] = field(default_factory=list)  # sections left out, and why

    def __str__(self) -> str:
        lines = [f"wrote {self.path} ({self.images} images embedded, {self.path.stat().st_size / 1024:.0f} KiB)"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


# ---- small HTML helpers ----------------------------------------------------------------------------
class _Html(str):
    """Markup built by this module from escaped parts; `_e` and `_table` pass it through unchanged."""


def _e(v: Any) -> str:
    """Text -> HTML safe in element content and in quoted attributes (`&<>"'` escaped)."""
    return v if isinstance(v, _Html) else html.escape(str(v), quote=True)


def _number(v: Any) -> float | None:
    """`v` if it is a real number (JSON from a file may hold anything), else None."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _fmt(v: Any, spec: str, missing: str = "–") -> str:
    """A number formatted with `spec`; anything else a file may hold is shown as its text (escaped later)."""
    if v is None:
        return missing
    n = _number(v)
    return format(n, spec) if n is not None else str(v)


def _img(png: bytes, alt: str, pixels: bool = False) -> str:
    data = base64.b64encode(png).decode("ascii")
    cls = ' class="pixels"' if pixels else ""
    return f'<img{cls} alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{_e(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{_e(c)}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _value(v: Any) -> str:
    """A config value as text (not yet escaped)."""
    return json.dumps(v) if isinstance(v, (dict, list, tuple, bool)) or v is None else str(v)


def _pct(v: Any) -> str:
    n = _number(v)
    return f"{100 * n:.2f}%" if n is not None else _fmt(v, "")


def _loss(v: Any) -> str:
    return _fmt(v, ".4f")


def _si(n: float) -> str:
    """12_345_678 -> '12.3 M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f}"


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


# ---- the parts ------------------------------------------------------------------------------------
def gradient_table(records: list[dict[str, Any]]) -> str:
    """Smallest and largest layer norm (and the first and last layer) at the last record, as HTML."""
    last = records[-1]
    norms = last["norms"]
    if not norms:
        return _note("the last gradient record has no layers")
    names = list(norms)  # depth order, as written
    finite = [n for n in names if math.isfinite(norms[n])]
    bad = [n for n in names if n not in finite]
    if not finite:
        return _note(f"every gradient norm of the last record is non-finite ({len(names)} layers)")
    small = min(finite, key=norms.__getitem__)
    large = max(finite, key=norms.__getitem__)
    rows = [["smallest", small, f"{norms[small]:.3e}"], ["largest", large, f"{norms[large]:.3e}"],
            ["first layer", names[0], f"{norms[names[0]]:.3e}"],
            ["last layer", names[-1], f"{norms[names[-1]]:.3e}"]]
    ratio = norms[large] / norms[small] if norms[small] > 0 else float("inf")
    return (f'<p class="muted">last record: epoch {_e(last["epoch"])}, step {_e(last["step"])}; '
            f"{len(records)} records, {len(names)} layers; largest / smallest = {ratio:.3g}</p>"
            + _table(["", "layer", "gradient norm"], rows, numeric={2})
            + (_note(f"non-finite norm in {len(bad)} layer(s): {', '.join(bad[:10])}") if bad else ""))


def calibration_section(folder: Path, which: str, temperature: float) -> str:
    """The temperature, the test figures before and after and reliability.png, when `cnnlab calibrate` ran."""
    if temperature == 1.0:
        return _note("not calibrated: probabilities are the raw softmax (run `cnnlab calibrate RUN`)")
    suffix = "" if which == "best" else f"-{which}"
    body = f"<p>softmax temperature <b>{temperature:.4f}</b> (probabilities below are calibrated with it)</p>"
    try:
        record = json.loads((folder / f"calibration{suffix}.json").read_text())
        rows = [[name, _fmt(record["before"].get(k), spec), _fmt(record["after"].get(k), spec)]
                for name, k, spec in (("accuracy", "accuracy", ".4f"), ("NLL", "nll", ".4f"),
                                      ("Brier score", "brier", ".4f"), ("ECE (15 bins)", "ece", ".4f"))]
        body += _table(["test split", "before", "after"], rows, numeric={1, 2})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        body += _note(f"calibration{suffix}.json is missing or damaged")
    png = folder / f"reliability{suffix}.png"
    if png.is_file():
        body += _img(png.read_bytes(), "reliability diagram")
    return body


def _evaluate(run_dir, model, card, data_dir, errors: int) -> dict[str, Any]:
    """One float32 pass over the test split: accuracy, confusion, per-class accuracy, worst mistakes."""
    import torch  # noqa: PLC0415

    part = run_split(run_dir, card, "test", None, data_dir)
    predicted, confidence = maps.predict_images(model, part.images, card.mean, card.std, temperature=card.temperature)
    k = card.num_classes
    confusion = torch.bincount(part.labels * k + predicted, minlength=k * k).view(k, k)  # rows: true
    mistakes, wrong = maps.confident_mistakes(predicted, confidence, part.labels, errors)
    return {"part": part, "confusion": confusion, "mistakes": mistakes, "wrong": wrong,
            "accuracy": float(confusion.diag().sum()) / max(1, len(part))}


def build_report(run: str | Path | Sequence[str | Path], out: str | Path | None = None, *, which: str = "best",
                 data_dir: str | Path | None = None, errors: int = 16) -> Report:
    """Write RUN/report.html (or `out`): a self-contained page about the run; see the module docstring.

    Several runs (a list, or a k-fold folder): one page that compares them first (`cnnlab.inspect.compare`:
    the options that differ, the results side by side, the curves overlaid), then each run's sections;
    written to `out`, default report.html in the current folder.

    Args:
        run: a run directory written by `cnnlab train`, or several.
        out: the HTML file to write (default RUN/report.html; report.html for several runs).
        which: "best" or "last" weights for the evaluation, filters and errors.
        data_dir: where the run's dataset lives, if not where training found it.
        errors: how many of the most confident mistakes to show.
    """
    positive_int("errors", errors)
    if which not in ("best", "last"):
        raise CnnlabError(f"weights must be 'best' or 'last', got {which!r}")
    runs = expand_runs([run] if isinstance(run, (str, Path)) else list(run))
    run_dirs = [open_run(r) for r in runs]
    if not run_dirs:
        raise CnnlabError("report needs a run directory")
    path = Path(out) if out is not None else (run_dirs[0].path / "report.html" if len(run_dirs) == 1
                                              else Path("report.html"))
    if path.suffix.lower() not in (".html", ".htm"):
        raise CnnlabError(f"report file must end in .html, got '{path}'")
    pages = [_run_page(r, which, data_dir, errors) for r in run_dirs]
    notes = [n for p in pages for n in p.notes]
    images = sum(p.images for p in pages)
    if len(pages) == 1:
        title, body = run_dirs[0].path.name, pages[0].html()
    else:
        comparison, shown = _comparison(runs)
        images += shown
        labels = run_labels(runs)
        title = f"{len(pages)} runs compared"
        body = comparison + "".join(f'<h1 id="run-{i}" style="margin-top:40px">{_e(label)}</h1>'
                                    + p.html().replace(' id="', f' id="run-{i}-')
                                    for i, (label, p) in enumerate(zip(labels, pages, strict=True), start=1))
    where = ", ".join(str(r.path.resolve()) for r in run_dirs)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>cnnlab report: {_e(title)}</title><style>{CSS}</style></head><body><main>"
        + f"<h1>{_e(title)}</h1>" + body
        + f'<p class="muted">written by cnnlab {_e(__version__)} on {time.strftime("%Y-%m-%d %H:%M:%S %Z")} '
        f"from <code>{_e(where)}</code></p></main></body></html>\n"
    )
    atomic_write_text(path, page)
    return Report(path, images, notes)


@dataclass
class _RunPage:
    """The sections of one run's report (its heading is the caller's)."""

    sub: str
    glance: str
    parts: list[str]
    images: int
    notes: list[str]

    def html(self) -> str:
        return f"<p class=sub>{self.sub}</p>{self.glance}" + "".join(self.parts)


def _comparison(runs: list[Path]) -> tuple[str, int]:
    """The comparison section of a several-run report: differing options, results, overlaid curves."""
    with tempfile.TemporaryDirectory() as tmp:
        c = compare_runs(runs, Path(tmp) / "compare.png")
        png = c.figure.read_bytes() if c.figure is not None else None
    labels = [r.label for r in c.runs]
    body = "<h3>Options that differ</h3>" + (
        _table(["option", *labels], [[k, *(_value(v) for v in vals)] for k, vals in c.differing.items()])
        if c.differing else "<p>the same in every run</p>")
    names = list(dict.fromkeys(k for r in c.runs for k in r.results))
    rows = [[n, *(_pct(r.results.get(n)) if "accuracy" in n else _fmt(r.results.get(n), ".4g") for r in c.runs)]
            for n in names]
    body += "<h3>Results (last epoch unless named best)</h3>" + _table(["", *labels], rows, set(range(1, len(labels) + 1)))
    if png:
        body += _img(png, "learning curves of the runs, overlaid")
    return _section("Runs compared", body, "compare"), int(png is not None)


def _run_page(run_dir, which: str, data_dir, errors: int) -> _RunPage:
    """Everything the report shows about one run, below its heading."""
    meta = run_dir.read_config() if run_dir.exists() else {}
    cfg = meta.get("config", {})
    history = run_dir.read_metrics()
    model, card = load_model(run_dir, which)
    model = model.float().eval()
    notes: list[str] = []
    images = 0
    parts: list[str] = []

    # -- at a glance
    try:
        s = summary(model, tuple(card.input_size))
        params, macs = f"{s.total_params:,}", _si(s.total_macs)
    except Exception as e:  # noqa: BLE001 - a foreign module the tracer cannot follow still gets a report
        params, macs = f"{sum(p.numel() for p in model.parameters()):,}", "–"
        notes.append(f"no MAC count: {type(e).__name__}: {e}")
    eval_note = ""
    try:
        ev = _evaluate(run_dir, model, card, data_dir, errors)
    except CnnlabError as e:
        ev, eval_note = None, f"no evaluation on the test split: {e}"
        notes.append(eval_note)
    seconds = sum(_number(h.get("seconds")) or 0 for h in history)
    chosen_by = card.extra.get("chosen_by") if isinstance(card.extra, dict) else None
    chooser = {"val": "validation accuracy", "last": "none: the last weights"}.get(
        chosen_by, "validation accuracy" if cfg.get("val_fraction") else "test accuracy (a run before the protocol)")
    cards = [("test accuracy" + (" (re-evaluated)" if ev else ""),
              _pct(ev["accuracy"] if ev else card.extra.get("test_accuracy") if isinstance(card.extra, dict) else None)),
             (f"{which} epoch", f"{card.epoch} of {len(history) or '?'}"),
             ("chosen by" if which == "best" else "weights", chooser if which == "best" else "after the last epoch"),
             ("validation accuracy" if chosen_by else "recorded accuracy", _pct(card.accuracy)),
             ("parameters", params), ("MACs / image", macs),
             ("training time", f"{seconds:.1f} s" if history else "–")]
    glance = '<div class="cards">' + "".join(f"<div class=card><b>{_e(v)}</b><span>{_e(k)}</span></div>"
                                             for k, v in cards) + "</div>"
    sub = (f"model <code>{_e(card.model)}</code> on <code>{_e(card.dataset)}</code> · input "
           f"{_e('×'.join(map(str, card.input_size)))} · {_e(card.num_classes)} classes · "
           f"created {_e(meta.get('created', '?'))}"
           f" · {_e(meta.get('device', '?'))}, {_e(meta.get('precision', '?'))}")

    # -- configuration
    conf_rows = [[k, _value(v)] for k, v in cfg.items()]
    env = meta.get("environment", {})
    body = (f'<div class="kv">{_table(["option", "value"], conf_rows)}</div>' if conf_rows else _note("no config.json"))
    if card.model_options:
        body += f"<p>model options: <code>{_e(_value(card.model_options))}</code></p>"
    if env:
        body += ("<details><summary>environment</summary>"
                 + _table(["", ""], [[k, _value(v)] for k, v in env.items()]) + "</details>")
    parts.append(_section("Configuration", body, "config"))

    # -- curves
    body = ""
    curves = run_dir.path / "curves.png"
    if curves.is_file():
        body += _img(curves.read_bytes(), "learning curves")
        images += 1
    elif history:
        with tempfile.TemporaryDirectory() as tmp:
            plot_curves(history, Path(tmp) / "curves.png", title=card.model)
            body += _img((Path(tmp) / "curves.png").read_bytes(), "learning curves")
        images += 1
    if history:
        # validation chose the weights; test figures are those of the chosen weights (the epoch marked *),
        # or of every epoch with --eval-test-every-epoch (never used to choose)
        rows = [[f"{h.get('epoch')}{' *' if h.get('chosen') else ''}", _loss(h.get("train_loss")),
                 _pct(h.get("train_accuracy")), _loss(h.get("val_loss")), _pct(h.get("val_accuracy")),
                 _loss(h.get("test_loss")), _pct(h.get("test_accuracy")),
                 _fmt(h.get("lr", 0), ".3g"), _fmt(h.get("seconds", 0), ".1f"),
                 _fmt(h.get("images_per_second", 0), ",.0f")]
                for h in history]
        body += _table(["epoch", "train loss", "train acc", "val loss", "val acc", "test loss", "test acc", "lr", "s",
                        "img/s"], rows, numeric=set(range(10)))
        if any(h.get("chosen") for h in history):
            body += _note("* the chosen epoch: its weights are the run's; the test set was evaluated on them")
    else:
        body += _note("no metrics.jsonl: the run finished no epoch")
    parts.append(_section("Learning curves", body, "curves"))

    # -- confusion and per-class accuracy
    if ev:
        cm = ev["confusion"]
        with tempfile.TemporaryDirectory() as tmp:
            plot_confusion(cm, card.classes, Path(tmp) / "c.png",
                           title=f"{which} weights, test split ({len(ev['part'])} images)")
            body = _img((Path(tmp) / "c.png").read_bytes(), "confusion matrix")
        images += 1
        totals, right = cm.sum(1).tolist(), cm.diag().tolist()
        rows = []
        for name, t, r in zip(card.classes, totals, right, strict=True):
            acc = r / t if t else None
            bar = _Html(f'<div class="bar"><i style="width:{0 if acc is None else 100 * acc:.1f}%"></i></div>')
            rows.append([name, _pct(acc), f"{r:,} / {t:,}", bar])
        body += "<h3>Per-class accuracy</h3>" + _table(["class", "accuracy", "right / images", ""], rows, numeric={1, 2})
        parts.append(_section(f"Confusion matrix: {_pct(ev['accuracy'])} on the test split", body, "confusion"))
    else:
        parts.append(_section("Confusion matrix", _note(eval_note), "confusion"))

    # -- calibration (`cnnlab calibrate`)
    parts.append(_section("Calibration", calibration_section(run_dir.path, which, card.temperature), "calibration"))
    images += int((run_dir.path / ("reliability.png" if which == "best" else f"reliability-{which}.png")).is_file()
                  and card.temperature != 1.0)

    # -- filters
    try:
        name, conv = maps.first_conv(model, tuple(card.input_size))
        o, i, kh, kw = conv.weight.shape
        colour = "as colour" if i == 3 else "blue negative, white zero, red positive; each kernel on its own scale"
        body = (f'<p class="muted">layer <code>{_e(name)}</code>: {o} kernels of {kh}×{kw} over {i} channel(s), '
                f"{colour}</p>" + _img(draw.png_bytes(draw.kernel_grid(conv.weight)), "first-layer kernels", True))
        images += 1
    except CnnlabError as e:
        body = _note(str(e))
    parts.append(_section("First-layer kernels", body, "filters"))

    # -- errors
    if ev:
        part = ev["part"]
        captions = [f"true: {card.classes[m.true]}\npred: {card.classes[m.predicted]} {100 * m.confidence:.0f}%"
                    for m in ev["mistakes"]]
        title = f"the {len(ev['mistakes'])} most confident of {ev['wrong']} misclassified test images"
        png = draw.mistakes_figure([part.images[m.index] for m in ev["mistakes"]], captions, title)
        parts.append(_section("Most confident errors", _img(png, "most confident errors"), "errors"))
        images += 1
    else:
        parts.append(_section("Most confident errors", _note(eval_note), "errors"))

    # -- gradients
    body = ""
    gpng, gjson = run_dir.path / "gradients.png", run_dir.path / "gradients.jsonl"
    if gpng.is_file():
        body += _img(gpng.read_bytes(), "gradient norms per layer")
        images += 1
    if gjson.is_file():
        try:
            records = read_gradient_records(gjson)
            body += gradient_table(records) if records else _note("gradients.jsonl is empty")
        except CnnlabError as e:
            body += _note(str(e))
    parts.append(_section("Gradient norms per layer", body or f"<p>{_e(NOT_RECORDED)}</p>", "gradients"))

    return _RunPage(sub, glance, parts, images, notes)
