"""`cnnlab data list [--json]`, `cnnlab data get NAME [--download]` and `cnnlab data audit NAME`: which
datasets exist, where they are, fetching one explicitly, and auditing one (balance, duplicates)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from cnnlab.cli._args import IMAGE_SIDE, check_out

ORDER = 30


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("data", help="list datasets and where they are; fetch or audit one (cnnlab data list|get|audit)")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(p))
    lp = dsub.add_parser("list", help="every dataset: classes, image size, train/test counts, where it is")
    lp.add_argument("--json", action="store_true", help="machine-readable output")
    lp.add_argument("--data-dir", default=None, help="search this folder first")
    gp = dsub.add_parser("get", help="find (or with --download fetch) a dataset and show what was loaded")
    gp.add_argument("name", help="a dataset name (see `cnnlab data list`) or imagefolder:PATH")
    gp.add_argument("--download", action="store_true", help="download from the official URLs if not found")
    gp.add_argument("--data-dir", default=None, help="search this folder first; downloads go here")
    gp.add_argument("--image-size", type=IMAGE_SIDE, default=None, help="resize to this many pixels (shorter side)")
    gp.add_argument("--strict", action="store_true", help="imagefolder: stop at the first unreadable file")
    ap = dsub.add_parser("audit", help="class balance, sizes, statistics, unreadable files, exact and near duplicates",
                         description="Audit a dataset: images per class and balance, image sizes and modes, "
                         "per-channel mean/std, unreadable files, and exact (same pixels) and near (perceptual hash "
                         "plus thumbnail check) duplicates within each split and across train/test. Writes "
                         "OUT/pairs.png (the pairs side by side) and OUT/audit.json.")
    ap.add_argument("name", help="a dataset name (see `cnnlab data list`) or imagefolder:PATH")
    ap.add_argument("--data-dir", default=None, help="search this folder first")
    ap.add_argument("--out", default=None, help="folder for pairs.png and audit.json (default audits/<name>)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run, _data_parser=p)
    return p


def _progress(name: str, got: int, total: int | None) -> None:
    pct = f" {100 * got / total:5.1f}%" if total else ""
    sys.stderr.write(f"\r  {name}: {got / 1e6:8.1f} MB{pct}")
    if total and got >= total:
        sys.stderr.write("\n")


def run(args: argparse.Namespace) -> int:
    from cnnlab.data import audit, dataset_names, fetch_dataset, find_dataset, list_datasets, load_dataset  # noqa: PLC0415 - torch only once a command runs: fast --help

    if args.data_command is None:
        args._data_parser.print_help()
        return 2
    if args.data_command == "audit":
        out = args.out or os.path.join("audits", "".join(c if c.isalnum() or c in "-_" else "-" for c in args.name)[-60:])
        check_out(out, "--out", folder=True)
        result = audit.audit(args.name, data_dir=args.data_dir, out=out)
        print(json.dumps(result.to_dict(), indent=2) if args.json else result)
        return 0
    if args.data_command == "list":
        infos = list_datasets(args.data_dir)
        if args.json:
            print(json.dumps([i.to_dict() for i in infos], indent=2))
            return 0
        print(f"{'name':<14} {'classes':>7} {'size':>8} {'train':>7} {'test':>7}  where")
        for i in infos:
            size = "x".join(map(str, i.input_size))
            where = i.location if i.found else f"not found; get it: {i.how_to_get}"
            print(f"{i.name:<14} {i.num_classes:>7} {size:>8} {i.train_count:>7,} {i.test_count:>7,}  {where}")
        print("also: imagefolder:PATH (one sub-folder per class; train/ and test/ sub-folders if split)")
        return 0
    if args.download and args.name in dataset_names() and args.name != "digits":
        if find_dataset(args.name, args.data_dir) is None:  # fetch explicitly, to show progress
            folder = fetch_dataset(args.name, args.data_dir, progress=_progress)
            print(f"downloaded {args.name} to {folder}")
    ds = load_dataset(args.name, data_dir=args.data_dir, download=args.download, image_size=args.image_size,
                      strict=args.strict)
    c, h, w = ds.input_size
    print(f"{ds.name}: {len(ds.classes)} classes, {c}x{h}x{w}, train {len(ds.train):,}, test {len(ds.test):,}")
    print(f"  source: {ds.source}")
    print(f"  mean: {', '.join(f'{m:.4f}' for m in ds.mean)}   std: {', '.join(f'{s:.4f}' for s in ds.std)}")
    if ds.skipped:
        print(f"  skipped {len(ds.skipped)} unreadable files (listed on stderr)")
    return 0

