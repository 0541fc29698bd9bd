"""`cnnlab report`: one self-contained HTML file that renders in headless Chromium.

Run on the same tiny digits run as test_show.py (trained once per session). The accuracy the page
reports is checked against `cnnlab.training.evaluate` in fp32, the gradient table against numbers written
by the test, and self-containment by parsing every src/href of the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_show import assert_picture, tiny_run

from cnnlab.errors import CnnlabError
from cnnlab.inspect.report import NOT_RECORDED, build_report

IMG_RE = re.compile(r'<img\b[^>]*\bsrc="data:image/png;base64,([A-Za-z0-9+/=]+)"')
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def report(run, tmp_path_factory) -> tuple[Path, str, set[str]]:
    """The report of the run without gradients: (path, HTML, files the run dir gained)."""
    before = {p.name for p in run.iterdir()}
    result = build_report(run)
    after = {p.name for p in run.iterdir()}
    return result.path, result.path.read_text(), after - before


def embedded_pngs(page: str) -> list[np.ndarray]:
    """Decode every embedded image; each must be a valid PNG."""
    out = []
    for data in IMG_RE.findall(page):
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            assert img.format == "PNG"
            out.append(np.asarray(img.convert("RGB")))
    return out


def test_report_is_one_self_contained_file(run, report):
    path, page, new_files = report
    assert path == run / "report.html" and new_files == {"report.html"}
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    refs = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]+)', page, flags=re.IGNORECASE)
    assert refs and all(r.startswith("data:") for r in refs), [r[:60] for r in refs if not r.startswith("data:")]
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*https?://", page, flags=re.IGNORECASE)
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    # curves, confusion matrix, kernels, errors; no gradients recorded
    images = embedded_pngs(page)
    assert len(images) == 4 and all(a.size > 0 and a.var() > 0 for a in images)
    assert NOT_RECORDED in page


def test_report_accuracy_matches_an_independent_evaluation(run, report):
    from cnnlab.training.evaluate import evaluate  # noqa: PLC0415

    _, page, _ = report
    result = evaluate(run, precision="fp32", device="cpu")
    assert f"Confusion matrix: {100 * result.accuracy:.2f}% on the test split" in page
    for name, acc in result.per_class.items():  # the per-class table, row by row
        assert re.search(rf"<td>{re.escape(name)}</td><td class=num>{100 * acc:.2f}%</td>", page)
    assert "conv3x3-12" in page and '"epochs"' not in page and "<td>epochs</td><td>2</td>" in page


def test_report_with_recorded_gradients(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report.html", "show"))
    layers = ["features.0", "features.3", "classifier.1"]
    records = [{"epoch": 1, "step": 10, "norms": {"features.0": 0.5, "features.3": 2.0, "classifier.1": 1.0}},
               {"epoch": 2, "step": 20, "norms": {"features.0": 0.004, "features.3": 0.25, "classifier.1": 3.5}}]
    (copy / "gradients.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    Image.fromarray((np.arange(40 * 60 * 3) % 251).astype(np.uint8).reshape(40, 60, 3)).save(copy / "gradients.png")
    result = build_report(copy, tmp_path / "r.html")
    page = result.path.read_text()
    assert result.images == 5 and len(embedded_pngs(page)) == 5
    assert NOT_RECORDED not in page
    # the last record: smallest features.0 (0.004), largest classifier.1 (3.5), ratio 875
    assert "<td>smallest</td><td>features.0</td><td class=num>4.000e-03</td>" in page
    assert "<td>largest</td><td>classifier.1</td><td class=num>3.500e+00</td>" in page
    assert "largest / smallest = 875" in page and "epoch 2, step 20" in page
    assert f"<td>first layer</td><td>{layers[0]}</td>" in page and f"<td>last layer</td><td>{layers[-1]}</td>" in page


def test_report_survives_a_broken_gradients_file(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report.html", "show"))
    (copy / "gradients.jsonl").write_text('{"epoch": 1, "step": 1, "norms": {"a": "x"}}\n')
    page = build_report(copy).path.read_text()
    assert "line 1 is not a gradient record" in page


def test_report_gradient_table_with_a_non_finite_norm(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report.html", "show"))
    # the monitor writes NaN/inf norms as null
    (copy / "gradients.jsonl").write_text('{"epoch": 1, "step": 5, "norms": {"a": 0.5, "b": null, "c": 2.0}}\n')
    page = build_report(copy).path.read_text()
    assert "<td>smallest</td><td>a</td>" in page and "<td>largest</td><td>c</td>" in page
    assert "non-finite norm in 1 layer(s): b" in page


def test_report_refuses_bad_output_name(run, tmp_path):
    with pytest.raises(CnnlabError, match=r"must end in \.html"):
        build_report(run, tmp_path / "report.txt")
    assert not (tmp_path / "report.txt").exists()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's package)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    path, _, _ = report
    shot = tmp_path / "shot.png"
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400", f"--screenshot={shot}",
           path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    arr = assert_picture(shot)
    assert arr.shape[:2] == (2400, 1200)
    # the page drew real content: many distinct colours (text, plots), not a blank or error page
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 100


SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(1)>'


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_escapes_text_from_the_run_folder(run, tmp_path):
    """Stored script injection: text planted in metrics.jsonl, config.json and best.json is shown, never run."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report.html", "show"))
    history = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    # a figure that is not a number is refused in one line, naming the file (never rendered)
    planted = [{**history[0], "epoch": SCRIPT, "lr": ATTRIBUTE}, *history[1:]]
    (copy / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in planted))
    with pytest.raises(CnnlabError, match=r"metrics.jsonl' line 1: 'epoch' is '<script>"):
        build_report(copy, tmp_path / "refused.html")
    assert not (tmp_path / "refused.html").exists()
    history[1]["note"] = SCRIPT  # text beside the figures is shown, escaped
    (copy / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    meta = json.loads((copy / "config.json").read_text())
    meta["config"]["optimizer"] = ATTRIBUTE
    meta["config"][SCRIPT] = 1
    meta.update(created=SCRIPT, device=ATTRIBUTE, precision=SCRIPT, environment={"python": ATTRIBUTE})
    (copy / "config.json").write_text(json.dumps(meta))
    for which in ("best", "last"):
        card = json.loads((copy / f"{which}.json").read_text())
        card["dataset"] = SCRIPT
        card["classes"][0] = ATTRIBUTE
        (copy / f"{which}.json").write_text(json.dumps(card))
    page = build_report(copy, tmp_path / "r.html").path.read_text()
    assert SCRIPT not in page and ATTRIBUTE not in page
    assert html.escape(SCRIPT) in page and html.escape(ATTRIBUTE) in page  # shown as text
    parser = _Tags()
    parser.feed(page)
    assert "script" not in {t for t, _ in parser.tags}
    assert not [(t, a) for t, a in parser.tags if any(k.startswith("on") for k in a)]
    assert all(a["src"].startswith("data:image/png;base64,") for t, a in parser.tags if t == "img")
