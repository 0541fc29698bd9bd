"""`cnnlab summary MODEL|SPEC --input CxHxW`: the layer table with shapes, parameters, MACs, receptive fields."""

from __future__ import annotations

import argparse
import json
import re

from cnnlab.errors import CnnlabError

ORDER = 10


MAX_SIDE = 1_000_000  # channels, height or width given to --input


def parse_size(text: str) -> tuple[int, int, int]:
    """'3x224x224' -> (3, 224, 224): channels x height x width, PyTorch's order."""
    m = re.fullmatch(r"\s*(\d{1,7})\s*[xX]\s*(\d{1,7})\s*[xX]\s*(\d{1,7})\s*", text or "")
    if not m or not all(1 <= int(g) <= MAX_SIDE for g in m.groups()):
        shown = text if len(text or "") <= 40 else text[:40] + "..."
        raise CnnlabError(f"--input must be CxHxW with integers from 1 to {MAX_SIDE:,}, e.g. 3x224x224; got '{shown}'")
    return int(m[1]), int(m[2]), int(m[3])


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "summary",
        help="layer table: output shapes, parameters, MACs, receptive fields",
        description="Print a model's layers with output shape, parameters, MACs, receptive field and jump "
        "(input pixels). MODEL is a registered name (`cnnlab models`), a spec in the lecture's notation, "
        "e.g. \"conv3x3-32 maxpool2 conv3x3-64 maxpool2 fc10\", or timm:NAME (timm's architectures, needs timm).",
    )
    p.add_argument("model", metavar="MODEL|SPEC", help="registered model name, spec (quote it) or timm:NAME")
    p.add_argument("--input", metavar="CxHxW", help="input size; default: the model's own (specs: 1x28x28)")
    p.add_argument("--num-classes", type=int, metavar="N", help="classifier outputs (default: the model's)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    size = parse_size(args.input) if args.input is not None else None
    if args.num_classes is not None and args.num_classes < 1:
        raise CnnlabError(f"--num-classes must be a positive integer, got {args.num_classes}")
    from cnnlab.inspect import summary  # noqa: PLC0415 - torch only once a command runs: fast --help

    result = summary(args.model, size, num_classes=args.num_classes)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0
