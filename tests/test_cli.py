"""The CLI contract: --help, --version, and bad input as one line on stderr with exit code 2."""

from __future__ import annotations

from conftest import run_cli

from cnnlab.version import __version__


def test_version():
    proc = run_cli("--version", check=True)
    assert proc.stdout.strip() == f"cnnlab {__version__}"


def test_help_lists_subcommands():
    proc = run_cli("--help", check=True)
    assert "usage: cnnlab" in proc.stdout


def test_unknown_subcommand_is_one_line_exit_2():
    proc = run_cli("no-such-command")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-command" in lines[0]
    assert "Traceback" not in proc.stderr
