"""`cnnlab` entry point: finds the subcommands, parses, and turns bad input into one line and exit 2.

A subcommand is a module `cnnlab/cli/cmd_<name>.py` that defines:
    ORDER: int                      # position in `cnnlab --help`
    def add_parser(subparsers) -> argparse.ArgumentParser   # registers itself, sets func=run
    def run(args) -> int | None     # calls one public function; returns the exit code
Modules must not import torch at import time, so that `cnnlab --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import cnnlab.cli as cli_pkg
from cnnlab.errors import CnnlabError
from cnnlab.runtime import tune_allocator, tune_openmp
from cnnlab.version import __version__

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong, where to look), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(EXIT_USAGE)


def _commands():
    mods = []
    for info in pkgutil.iter_modules(cli_pkg.__path__):
        if info.name.startswith("cmd_"):
            mods.append(importlib.import_module(f"cnnlab.cli.{info.name}"))
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="cnnlab",
        description="Build, inspect, train and transfer convolutional neural networks.",
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for mod in _commands():
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--debug` is accepted anywhere on the line, before or after the subcommand.
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = debug
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    # the process is ours: keep freed tensor memory for reuse (a library call never changes this)
    tune_allocator()
    tune_openmp()  # idle OpenMP threads sleep: a busy neighbour no longer halves training (before torch loads)
    try:
        code = args.func(args)
    except CnnlabError as e:
        if args.debug:
            raise
        sys.stderr.write(f"cnnlab {args.command}: error: {e}\n")
        return EXIT_USAGE
    except BrokenPipeError:  # `cnnlab models | head`
        return 0
    except OSError as e:  # last resort: a file the command could not read or write, named in one line
        if args.debug:
            raise
        sys.stderr.write(f"cnnlab {args.command}: error: {os_error_line(e)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("cnnlab: interrupted\n")
        return 130
    return int(code or 0)


def os_error_line(e: OSError) -> str:
    """One line from any OSError: `Permission denied ('/x/y'); check that the path exists and ...`."""
    what = e.strerror or str(e) or type(e).__name__
    paths = " -> ".join(f"'{p}'" for p in (e.filename, e.filename2) if p is not None)
    where = f" ({paths})" if paths else ""
    return f"{what}{where}; check that the path exists and that you may read or write it"


if __name__ == "__main__":
    sys.exit(main())
