"""`cnnlab predict RUN IMAGE...`: the top-k classes of each image, with probabilities."""

from __future__ import annotations

import argparse

from cnnlab.cli._args import COUNT

ORDER = 42


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="classify image files with a trained run (top-k with probabilities)",
                       description=__doc__ + "\n\nAny size or mode is converted the way the training data was "
                       "(grayscale or RGB, resized, normalised).")
    p.add_argument("run", metavar="RUN", help="run directory written by `cnnlab train`")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--top-k", type=COUNT, default=3, help="classes to show per image (default 3)")
    p.add_argument("--weights", default="best", choices=("best", "last"), help="which weights (default best)")
    p.add_argument("--tta", metavar="MODE",
                   help="test-time augmentation: none, flip, shift or flip-shift (default: as the run was trained)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cnnlab.training.predict import predict  # noqa: PLC0415 - torch only once a command runs: fast --help

    for prediction in predict(args.run, args.images, top_k=args.top_k, which=args.weights, tta=args.tta):
        print(f"{prediction.image}: {prediction.converted}")
        for warning in prediction.warnings:
            print(f"  warning: {warning}")
        print(prediction)
    return 0
