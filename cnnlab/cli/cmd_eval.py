"""`cnnlab eval RUN`: accuracy, balanced accuracy, macro-F1, top-5, per-class precision/recall/F1 and the
confusion matrix of a trained run."""

from __future__ import annotations

import argparse

ORDER = 41


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="evaluate a trained run: accuracy, balanced accuracy, macro-F1, per-class P/R/F1, confusion",
                       description=__doc__)
    p.add_argument("run", metavar="RUN", help="run directory written by `cnnlab train`")
    p.add_argument("--data", help="dataset name to evaluate on (default: the run's own)")
    p.add_argument("--data-dir", help="folder holding the dataset's files")
    p.add_argument("--split", default="test", choices=("test", "train", "val"),
                   help="which split (default test); train and val as the run split them")
    p.add_argument("--weights", default="best", choices=("best", "last", "ema", "swa"),
                   help="which weights (default best): ema with `train --ema`, swa after `cnnlab average`")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--tta", metavar="MODE",
                   help="test-time augmentation: none, flip, shift or flip-shift (default: as the run was trained)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cnnlab.training.evaluate import describe_weights, evaluate  # noqa: PLC0415 - torch only once a command runs

    result = evaluate(args.run, args.data, which=args.weights, split=args.split, data_dir=args.data_dir,
                      device=args.device, tta=args.tta)
    print(describe_weights(args.run, args.weights))
    print(f"split: {args.split}" + (f" of {args.data}" if args.data else ""))
    print(result.table())
    return 0
