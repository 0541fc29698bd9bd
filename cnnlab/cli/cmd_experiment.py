"""`cnnlab experiment NAME|all|list [--data D] [--quick | --size large] [--seeds N] --out DIR`: a claim of the
course, measured over several seeds, with a verdict (supported, contradicted, inconclusive at this budget)
decided by 95% intervals of the paired differences."""

from __future__ import annotations

import argparse

from cnnlab.cli._args import SEED, SEEDS, check_out

ORDER = 70


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("experiment", help="reproduce a claim of the course: a measured table and a plot",
                       description=__doc__)
    p.add_argument("name", metavar="NAME", help="an experiment name, 'all', 'list' to see them, or 'lecture' "
                   "to rebuild OUT/lecture.md from the results already under OUT")
    p.add_argument("--out", default="experiments", help="output folder (default ./experiments); "
                   "each experiment writes OUT/NAME/{table.md,result.json,plot.png}; 'all' also OUT/lecture.md")
    p.add_argument("--data", help="dataset name (default: the experiment's own, usually fashion-mnist)")
    p.add_argument("--data-dir", help="folder holding the dataset's files")
    p.add_argument("--quick", action="store_true", help="tiny size that finishes in seconds, 1 seed "
                   "(numbers marked quick; verdicts inconclusive at quick size)")
    p.add_argument("--size", choices=("default", "large"), default=None,
                   help="default: a few minutes per experiment on 2 CPU cores; large: more images and epochs "
                        "(a GPU or a long run)")
    p.add_argument("--seeds", type=SEEDS, default=None, metavar="N",
                   help="runs per cell, with seeds SEED, SEED+1, ... (default 3; 1 with --quick; 5 with --size large)")
    p.add_argument("--seed", type=SEED, default=0, help="first seed (default 0)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--note", default=None, help="with 'all' or 'lecture': a line printed under lecture.md's heading "
                   "(e.g. how busy the machine was)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from cnnlab.experiments import (  # noqa: PLC0415 - torch only once a command runs: fast --help
        get_experiment,
        list_experiments,
        run_all,
        run_experiment,
        write_lecture,
    )

    if args.name == "list":
        for spec in list_experiments():
            print(f"{spec.name:18s} {spec.title}: {spec.claim}" + (f" [{spec.budget}]" if spec.budget else ""))
        return 0
    if args.name == "lecture":
        write_lecture(args.out, [args.note] if args.note else [])
        print(f"wrote {Path(args.out) / 'lecture.md'}")
        return 0
    if args.name != "all":
        get_experiment(args.name)  # an unknown name first: it says which exist
    check_out(args.out, folder=True)
    common = dict(out=args.out, quick=args.quick, data=args.data, data_dir=args.data_dir, seed=args.seed,
                  device=args.device, seeds=args.seeds, size=args.size)
    preface = [args.note] if args.note else []
    results = run_all(**common, preface=preface) if args.name == "all" else [run_experiment(args.name, **common)]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            print(r.markdown())
        if args.name == "all":
            print(f"wrote {Path(args.out) / 'lecture.md'}")
    return 0
