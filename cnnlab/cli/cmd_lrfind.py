"""`cnnlab lr-find`: the learning-rate range test (loss against a rising learning rate, a plot, a suggestion).

Writes OUT/lr_find.png and OUT/lr_find.json (default OUT: runs/lr-find-<model>-<data>-<time>) and prints
the suggested rate as a ready `cnnlab train` command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.cli._args import BATCH, SEED, STEPS, check_out

ORDER = 44


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("lr-find", help="learning-rate range test: plot loss against learning rate, suggest one",
                       description=__doc__)
    p.add_argument("--model", default="simple_cnn", help="registered name or spec (default simple_cnn)")
    p.add_argument("--data", default="fashion-mnist", help="dataset name (default fashion-mnist)")
    p.add_argument("--data-dir", help="folder holding the dataset's files")
    p.add_argument("--optimizer", default="adamw", help="sgd, adam or adamw (default)")
    p.add_argument("--batch-size", type=BATCH, default=128)
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--steps", type=STEPS, default=100, help="at most this many steps (default 100)")
    p.add_argument("--augment", default="none")
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--out", help="output folder for lr_find.png and lr_find.json (default runs/lr-find-<model>-<data>-<time>)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    check_out(args.out)
    from cnnlab.training.lr_find import default_out, lr_find  # noqa: PLC0415 - torch only once a command runs: fast --help

    out = Path(args.out) if args.out else default_out(args.model, args.data)
    result = lr_find(args.model, args.data, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps,
                     batch_size=args.batch_size, optimizer=args.optimizer, augment=args.augment,
                     precision=args.precision, device=args.device, seed=args.seed, data_dir=args.data_dir,
                     out=out)
    print(result)
    print(f"wrote {result.plot} and {result.path / 'lr_find.json'}")
    print("train with it:")
    print(f"  {result.command()}")
    return 0
