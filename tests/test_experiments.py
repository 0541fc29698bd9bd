"""The experiment framework: registry, result files, Markdown tables and the generated lecture."""

from __future__ import annotations

import json

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.experiments import _base
from cnnlab.experiments._base import Outcome, lecture_markdown, markdown_table, register_experiment, run_all


@pytest.fixture
def toy(monkeypatch):
    """A registry holding two toy experiments only, so the test does not train anything."""
    monkeypatch.setattr(_base, "_REGISTRY", {})
    monkeypatch.setattr(_base, "_load_all", lambda: None)
    calls = []

    @register_experiment("second", title="Second claim", claim="B holds.", order=20, default_data=None)
    def second(ctx):
        calls.append(("second", ctx.quick))
        ctx.progress.total = 2
        ctx.progress.step("a")
        ctx.progress.step("b")
        return Outcome(columns=["k", "acc"], rows=[{"k": 1, "acc": 0.5}], supported=False,
                       verdict="acc 50% is not above chance.", plot=None, fmt={"acc": ".1%"})

    @register_experiment("first", title="First claim", claim="A holds.", order=10, default_data="digits")
    def first(ctx):
        calls.append(("first", ctx.quick, ctx.data))
        ctx.path("plot.png").write_bytes(b"\x89PNG fake")
        return Outcome(columns=["name", "params"], rows=[{"name": "conv", "params": 1234567}],
                       supported=True, verdict="fewer parameters.", fmt={"params": ",d"},
                       headers={"params": "parameters"})

    return calls


def test_registry_order_and_unknown_name(toy):
    assert [s.name for s in _base.list_experiments()] == ["first", "second"]
    with pytest.raises(CnnlabError, match="did you mean 'first'"):
        _base.get_experiment("frist")
    with pytest.raises(ValueError, match="twice"):
        register_experiment("first", title="x", claim="y", order=1)(lambda ctx: None)


def test_run_all_writes_results_and_lecture(toy, tmp_path):
    results = run_all(out=tmp_path, quick=True, progress=False)
    assert toy == [("first", True, "digits"), ("second", True)]
    assert [r.name for r in results] == ["first", "second"]
    saved = json.loads((tmp_path / "first" / "result.json").read_text())
    assert saved["verdict"] == "supported" and saved["quick"] is True
    assert saved["outcome"]["rows"] == [{"name": "conv", "params": 1234567}]
    table = (tmp_path / "first" / "table.md").read_text()
    assert "| conv | 1,234,567 |" in table and "| name | parameters |" in table
    lecture = (tmp_path / "lecture.md").read_text()
    # quick numbers are marked as such, claims appear in the registry's order, plots link into sub-folders
    assert "quick-size numbers" in lecture
    assert lecture.index("## First claim") < lecture.index("## Second claim")
    assert "](first/plot.png)" in lecture and "second/plot.png" not in lecture
    assert "**Verdict: contradicted (quick).**" in lecture
    assert "| contradicted (quick) |" in lecture  # the summary table says so too
    assert saved["seeds"] == [0] and saved["size"] == "quick"


def test_seeds_reach_the_experiment_and_the_command(toy, tmp_path):
    seen = []

    @register_experiment("third", title="Third", claim="C.", order=30, default_data=None)
    def third(ctx):
        seen.append((ctx.seeds, ctx.size))
        return Outcome(columns=["k"], rows=[{"k": {"n": 3, "mean": 0.5, "std": 0.1, "low": 0.25, "high": 0.75}}],
                       supported=None, verdict="v", plot=None, fmt={"k": ".1%"})

    res = _base.run_experiment("third", out=tmp_path, seed=5, seeds=3, progress=False)
    assert seen == [((5, 6, 7), "default")]
    assert res.command == "cnnlab experiment third"  # 3 seeds is the default: not repeated
    table = (tmp_path / "third" / "table.md").read_text()
    assert "| 50.0% ± 10.0 [25.0, 75.0] |" in table and "3 seeds (5, 6, 7)" in table
    assert "**Verdict: inconclusive at this budget.**" in table
    assert _base.run_experiment("third", out=tmp_path, seeds=2, progress=False).command.endswith("--seeds 2")


def test_markdown_table_formats_and_missing_cells():
    o = Outcome(columns=["a", "b"], rows=[{"a": 0.12345, "b": None}, {"a": True}], supported=None, verdict="")
    assert markdown_table(o).splitlines() == ["| a | b |", "|---|---|", "| 0.1235 | – |", "| yes | – |"]


def test_lecture_without_quick_has_no_quick_banner(toy, tmp_path):
    results = run_all(out=tmp_path, progress=False, names=["second"])
    assert "quick-size" not in lecture_markdown(results, "cmd")


def test_cli_unknown_experiment_is_one_line(capsys):
    from cnnlab.cli.main import main

    assert main(["experiment", "no-such-thing", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown experiment 'no-such-thing'" in err


def test_lecture_is_rebuilt_from_result_files(toy, tmp_path):
    from cnnlab.core.stats import check, exact

    @register_experiment("third", title="Third", claim="C.", order=30, default_data=None)
    def third(ctx):
        checks = [check("a - b > 0", [0.9, 0.91, 0.92], [0.8, 0.82, 0.8]), exact("count", True, "8.5x")]
        return Outcome(columns=["k"], rows=[{"k": 1}], supported=True, verdict="v", plot=None, checks=checks)

    results = run_all(out=tmp_path, seeds=3, progress=False, names=["second", "third"])
    direct = lecture_markdown(results, "cmd")
    rebuilt = _base.write_lecture(tmp_path)
    assert [r.name for r in rebuilt] == ["second", "third"]
    # the same page, apart from the command line that made it
    assert lecture_markdown(rebuilt, "cmd") == direct
    assert "| a - b > 0 | +10.33% ± 1.53 [" in direct and "| count | exact; 8.5x | supported |" in direct
    with pytest.raises(CnnlabError, match="no experiment results"):
        _base.write_lecture(tmp_path / "empty")
