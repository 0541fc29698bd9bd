"""`cnnlab report RUN [RUN ...]`: one self-contained HTML page about a training run, or several compared.

Config, learning curves, confusion matrix, per-class accuracy, first-layer kernels, the most confident
errors and gradient norms (when recorded). Images are embedded, CSS is inline, there are no scripts:
the file opens offline and can be sent on its own.
"""

from __future__ import annotations

import argparse

from cnnlab.cli._args import check_out, int_in

ORDER = 47


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="write a self-contained HTML report of a trained run", description=__doc__)
    p.add_argument("run", nargs="+", metavar="RUN",
                   help="run directory written by `cnnlab train`; several (or a k-fold folder): compared on one page")
    p.add_argument("--out", metavar="FILE",
                   help="HTML file to write (default RUN/report.html; report.html here for several runs)")
    p.add_argument("--weights", default="best", choices=("best", "last"), help="which weights (default best)")
    p.add_argument("--errors", type=int_in(0, 10_000), default=16, help="most confident errors to show (default 16)")
    p.add_argument("--data-dir", help="folder holding the dataset's files")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    check_out(args.out)
    from cnnlab.inspect.report import build_report  # noqa: PLC0415 - torch only once a command runs: fast --help

    print(build_report(args.run, args.out, which=args.weights, data_dir=args.data_dir, errors=args.errors))
    return 0
