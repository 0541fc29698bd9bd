"""`cnnlab compare RUN RUN ...`: the options that differ, the results side by side, the curves in one PNG.

Reads what the runs recorded (config.json, metrics.jsonl, best.json); evaluates nothing again. A k-fold
folder (`cnnlab train --folds K`) stands for its fold-1..K.
"""

from __future__ import annotations

import argparse

from cnnlab.cli._args import check_out

ORDER = 46

EPILOG = """examples:
  cnnlab compare runs/plain runs/weighted               # table, and the curves in compare.png
  cnnlab compare runs/a runs/b runs/c --out abc.png
  cnnlab compare runs/digits-5fold                      # the folds of a k-fold run
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="compare runs: differing options, results side by side, curves overlaid",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by `cnnlab train`")
    p.add_argument("--out", default="compare.png", metavar="FILE.png",
                   help="where to draw the overlaid curves (default compare.png)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    check_out(args.out)
    from cnnlab.inspect.compare import compare_runs  # noqa: PLC0415 - torch only once a command runs: fast --help

    print(compare_runs(args.runs, args.out).table())
    return 0
