"""Pretrain on Fashion-MNIST, transfer to scikit-learn's 8x8 digits with 10 and 100 labelled images per class.

    python examples/transfer_digits.py [--out runs/transfer-digits]

Step 1 is `cnnlab train --recipe fashion-mnist --out OUT/pretrain` (2 epochs, vgg_like with batch norm);
an existing run there is reused. Step 2 runs every strategy and both baselines for each training-set
size, as `cnnlab transfer --backbone OUT/pretrain --data digits --strategy all --train-per-class K`
would, and writes OUT/table.md (the table in docs/transfer.md). The digits are upscaled 8x8 -> 28x28 by
the input adapter. Everything is seeded; on 2 CPU cores it takes a few minutes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cnnlab.core.files import atomic_write_text
from cnnlab.training import train
from cnnlab.transfer_learning import transfer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/transfer-digits")
    parser.add_argument("--per-class", default="10,100", help="comma-separated training images per class")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of finetune/retrain/scratch")
    args = parser.parse_args()
    out = Path(args.out)
    pretrain = out / "pretrain"
    t0 = time.perf_counter()
    if not (pretrain / "best.json").is_file():
        train(recipe="fashion-mnist", out=str(pretrain), quiet=True)
    sections = []
    for k in (int(v) for v in args.per_class.split(",")):
        print(f"\n== {k} labelled digits per class ==")
        r = transfer(str(pretrain), "digits", strategy="all", train_per_class=k, steps=args.steps, out=out / f"k{k}",
                     cache_dir=out / "feature-cache")
        sections.append(f"### {k} training images per class ({r.rows[0]['train_images']} images)\n\n"
                        f"auto: {r.case}\n\n{r.table()}\n")
    atomic_write_text(out / "table.md", f"adaptation: {r.adaptation}\n\n" + "\n".join(sections))
    print(f"\nwrote {out / 'table.md'} ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
