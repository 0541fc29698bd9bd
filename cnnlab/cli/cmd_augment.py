"""`cnnlab augment`: look at what an augmentation pipeline does, as a grid picture.

    cnnlab augment --data fashion-mnist --augment lecture --out grid.png [--n 8 --copies 7 --seed 0]
    cnnlab augment --data digits --augment none --mix mixup:0.2,cutmix:1.0 --out mix.png
    cnnlab augment --list          # the ops, their parameters and defaults, the presets
"""

from __future__ import annotations

import argparse

from cnnlab.cli._args import SEED, check_out, int_in
from cnnlab.errors import CnnlabError

ORDER = 40

EPILOG = """pipeline strings: ops separated by commas, each NAME[:MAIN][:KEY=VALUE...], ranges LO-HI:
  "flip,crop:4,scale:0.8-1.2,exposure:0.3,saturation:0.3"  (= the preset "lecture")
  "lecture,erase"   "crop:4:mode=zero,erase:0.1-0.2:p=1"   "trivial"   "randaugment:n=2:m=9"   (see --list)
--mix (after the pipeline): METHOD[:ALPHA][:p=P],... with METHOD mixup or cutmix, as `cnnlab train --mix`;
  each copy is mixed with a copy of another image; CutMix boxes outlined in red, targets captioned"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "augment",
        help="save a grid of images and their augmented copies (see what a pipeline does)",
        description="Save a picture: the first --n training images of --data in the first column, then "
                    "--copies augmentations of each by the --augment pipeline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", metavar="NAME", help="dataset, as in `cnnlab data list` (e.g. fashion-mnist, digits)")
    p.add_argument("--augment", metavar="PIPELINE", default="lecture",
                   help="pipeline string or preset (default: lecture)")
    p.add_argument("--mix", metavar="SPEC", help="MixUp / CutMix after the pipeline, e.g. mixup:0.2,cutmix:1.0 "
                   "(see `cnnlab train --help`)")
    p.add_argument("--out", metavar="FILE", help="picture to write (.png, .jpg or .webp); its folder must exist")
    p.add_argument("--n", type=int_in(1, 1024), default=8, help="number of images, one per row (default 8)")
    p.add_argument("--copies", type=int_in(0, 256), default=7, help="augmented copies per image (default 7)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the augmentation randomness (default 0)")
    p.add_argument("--data-dir", metavar="DIR", help="where to look for the dataset files")
    p.add_argument("--list", action="store_true", help="list the ops, their parameters and the presets")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    check_out(args.out)
    from cnnlab.augment import describe_ops, parse_mix, parse_pipeline, preview  # noqa: PLC0415 - torch only once a command runs: fast --help

    if args.list:
        print(describe_ops())
        return 0
    pipeline = parse_pipeline(args.augment)  # a bad pipeline is reported before anything else
    mix = parse_mix(args.mix)
    if not args.data or not args.out:
        missing = " and ".join(f"--{k}" for k in ("data", "out") if not getattr(args, k))
        raise CnnlabError(f"{missing} required, e.g. cnnlab augment --data fashion-mnist --out grid.png")
    out = preview(args.data, pipeline, args.out, n=args.n, copies=args.copies, seed=args.seed,
                  data_dir=args.data_dir, mix=mix)
    mixed = f", mixed by '{mix}'" if mix is not None else ""
    print(f"wrote {out}: {args.n} images x (original + {args.copies} copies) of '{pipeline}'{mixed} (seed {args.seed})")
    return 0
