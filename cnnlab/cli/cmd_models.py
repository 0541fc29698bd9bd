"""`cnnlab models [PATTERN]`: every registered model with parameters, MACs, input size, classes and paper."""

from __future__ import annotations

import argparse
import json

from cnnlab.inspect.zoo_table import format_models, zoo_stats  # no torch: the table comes from the user cache

ORDER = 5


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "models",
        help="list the registered models (parameters, MACs, input, classes, paper)",
        description="List the registered models with parameters and MACs at their default input "
        "(counted on the meta device: nothing is allocated or computed; traced once per version of the code and "
        "of torch, then read from the user cache without importing torch).",
    )
    p.add_argument("pattern", nargs="?", default="*", metavar="PATTERN", help="shell-style filter, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    stats = zoo_stats(args.pattern)
    print(json.dumps(stats, indent=2) if args.json else format_models(stats))
    return 0
