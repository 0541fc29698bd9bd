"""`cnnlab --help` stays fast: no cli module imports torch when it is imported (issue 14, item 8)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import cnnlab.cli

CLI = pathlib.Path(cnnlab.cli.__file__).parent


def test_importing_every_cli_module_leaves_torch_out():
    names = sorted(p.stem for p in CLI.glob("*.py") if p.stem.startswith("cmd_") or p.stem == "main")
    assert len(names) >= 15
    code = ("import importlib, sys\n"
            f"for n in {names!r}: importlib.import_module('cnnlab.cli.' + n)\n"
            "import cnnlab.cli.main as m; m.build_parser()\n"
            "heavy = sorted(k for k in ('torch', 'numpy', 'matplotlib', 'PIL', 'sklearn') if k in sys.modules)\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing cnnlab.cli pulled in {out.stdout.strip()}"


def test_at_most_one_function_level_cnnlab_import_per_command():
    import re

    for path in sorted(CLI.glob("cmd_*.py")):
        lines = re.findall(r"^[ \t]+(?:from|import) cnnlab\b.*$", path.read_text(), flags=re.M)
        assert len(lines) <= 1, f"{path.name}: {lines}"
