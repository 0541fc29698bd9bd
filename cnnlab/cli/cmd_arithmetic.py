"""`cnnlab arithmetic`: the lecture's parameter arithmetic (no arguments: its three worked examples)."""

from __future__ import annotations

import argparse

from cnnlab.cli.cmd_summary import parse_size
from cnnlab.inspect import arithmetic as ar  # pure arithmetic: cnnlab.inspect imports no torch

ORDER = 12


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "arithmetic",
        help="parameter arithmetic: conv vs locally-connected vs dense, bottlenecks, receptive-field growth",
        description="Without a subcommand: the lecture's three worked examples. With one: the same "
        "arithmetic for any layer and input.",
    )
    what = p.add_subparsers(dest="what", metavar="WHAT")

    c = what.add_parser("connectivity", help="one kernel counted as conv, locally-connected and dense")
    c.add_argument("--input", default="3x300x300", metavar="CxHxW", help="input size (default 3x300x300)")
    c.add_argument("--kernel", type=int, default=3, help="kernel size k (a k x k x C kernel; default 3)")
    c.add_argument("--out-channels", type=int, default=1, help="output channels (default 1)")
    c.add_argument("--stride", type=int, default=1)
    c.add_argument("--padding", type=int, default=0)

    b = what.add_parser("bottleneck", help="1x1 -> kxk -> 1x1 bottleneck vs a plain kxk convolution")
    b.add_argument("--channels", type=int, default=256, help="block input/output channels (default 256)")
    b.add_argument("--mid", type=int, default=64, help="bottleneck width (default 64)")
    b.add_argument("--kernel", type=int, default=3)
    b.add_argument("--spatial", type=int, default=56, help="feature-map side for the MACs (default 56)")
    b.add_argument("--bias", action="store_true", help="count biases too")

    r = what.add_parser("rf", help="receptive-field growth of stacked identical kernels")
    r.add_argument("--kernel", type=int, default=3)
    r.add_argument("--layers", type=int, default=3)
    r.add_argument("--stride", type=int, default=1)
    r.add_argument("--dilation", type=int, default=1)

    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.what is None:
        print(ar.lecture_examples())
    elif args.what == "connectivity":
        print(ar.connectivity(parse_size(args.input), args.kernel, args.out_channels, args.stride, args.padding))
    elif args.what == "bottleneck":
        print(ar.bottleneck(args.channels, args.mid, args.kernel, args.spatial, args.bias))
    else:
        print(ar.receptive_field_growth(args.kernel, args.layers, args.stride, args.dilation))
    return 0
