"""`cnnlab calibrate RUN`: fit a softmax temperature on the run's validation split, so that its probabilities
match how often it is right; reports NLL, Brier score and ECE on the test split before and after."""

from __future__ import annotations

import argparse
import json

ORDER = 43


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="fit a temperature so predicted probabilities are calibrated (ECE, NLL)",
                       description=__doc__ + "\n\nThe temperature is stored in the model card (best.json); predict, "
                       "eval, export, serve and report use it. Writes RUN/reliability.png and RUN/calibration.json. "
                       "The run must have been trained with --val-fraction > 0 (or an image folder with val/).")
    p.add_argument("run", metavar="RUN", help="run directory written by `cnnlab train`")
    p.add_argument("--weights", default="best", choices=("best", "last"), help="which weights (default best)")
    p.add_argument("--data-dir", help="folder holding the dataset's files (default: where training found them)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cnnlab.training.calibrate import calibrate  # noqa: PLC0415 - torch only once a command runs: fast --help

    result = calibrate(args.run, which=args.weights, data_dir=args.data_dir)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0
