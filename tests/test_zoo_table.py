"""`cnnlab models` reads the zoo's table from the user cache: the same numbers as a fresh trace, no torch on a
hit, a new trace whenever the code that decides the numbers changes, and no trust in a damaged file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.inspect import model_stats, zoo_table

PROBE = (
    "import json, sys\n"
    "from cnnlab.cli.main import main\n"
    "code = main(['models', '--json'])\n"
    "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules}), file=sys.stderr)\n"
)


def run_models(cache: Path) -> tuple[list[dict], dict]:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout), json.loads(out.stderr.strip().splitlines()[-1])


def test_cached_table_equals_a_fresh_trace_and_a_hit_loads_no_torch(tmp_path):
    traced = model_stats("*")  # the reference: traced here, on the meta device
    first, info = run_models(tmp_path)
    assert info == {"code": 0, "torch": True}  # a miss traces the zoo
    assert first == traced
    again, info = run_models(tmp_path)
    assert info == {"code": 0, "torch": False}  # a hit reads the file
    assert again == traced


@pytest.mark.long
def test_a_damaged_or_misshapen_cache_is_traced_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = zoo_table.cache_path()
    path.parent.mkdir(parents=True)
    good = model_stats("lenet*")
    for bad in ("{not json", json.dumps({"name": "x"}), json.dumps([{**good[0], "params": "many"}]), "[]"):
        path.write_text(bad)
        assert zoo_table.zoo_stats("lenet*") == good
        assert json.loads(path.read_text())[0]["name"] == model_stats("*")[0]["name"]  # rewritten whole


def test_the_key_follows_the_code_that_decides_the_numbers(tmp_path, monkeypatch):
    package = Path(zoo_table.__file__).resolve().parent.parent
    copy = tmp_path / "cnnlab"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    monkeypatch.setattr(zoo_table, "_PACKAGE", copy)
    before = zoo_table.cache_path()
    (copy / "cli" / "cmd_models.py").write_text("# the CLI does not decide the numbers\n")
    assert zoo_table.cache_path() == before
    with open(copy / "models" / "vgg.py", "a") as f:
        f.write("\n# an edit to a model family\n")
    assert zoo_table.cache_path() != before
    monkeypatch.setattr(zoo_table, "_PACKAGE", package)
    key = zoo_table.cache_path()
    monkeypatch.setattr(zoo_table, "_torch_version", lambda: "0.0.0-another")
    assert zoo_table.cache_path() != key
