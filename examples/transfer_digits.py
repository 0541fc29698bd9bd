"""Pretrain on Fashion-MNIST, transfer to scikit-learn's 8x8 digits with 10 and 100 labelled images per class.

    python examples/transfer_digits.py [--out runs/transfer-digits]

Step 1 is `cnnlab train --recipe fashion-mnist --out OUT/pretrain` (2 epochs, vgg_like with batch norm);
an existing run there is reused. Step 2 runs every strategy and both baselines for each training-set
size, as `cnnlab transfer --backbone OUT/pretrain --data digits --strategy all --train-per-class K`
would, with `auto`'s validation table (what it measured on the training set and picked), and writes
OUT/table.md (the table in docs/transfer.md); the last lines compare `auto`'s test accuracy with the
best single strategy's. The digits are upscaled 8x8 -> 28x28 by
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
    sections, verdicts = [], []
    for k in (int(v) for v in args.per_class.split(",")):
        print(f"\n== {k} labelled digits per class ==")
        r = transfer(str(pretrain), "digits", strategy="all", train_per_class=k, steps=args.steps, out=out / f"k{k}",
                     cache_dir=out / "feature-cache")
        sel = r.selection
        single = {row["method"]: row["test_accuracy"] for row in r.rows if row["method"] in ("features", "finetune", "retrain")}
        best = max(single, key=single.get)
        auto = next(row for row in r.rows if row["method"].startswith("auto"))
        verdicts.append(f"{k} per class: auto -> {sel.choice['strategy']} {100 * auto['test_accuracy']:.2f}% on the test set; "
                        f"best single strategy {best} {100 * single[best]:.2f}% "
                        f"({100 * (auto['test_accuracy'] - single[best]):+.2f} points); lecture's rule "
                        f"{'agreed' if sel.agrees else 'disagreed'}")
        sections.append(f"### {k} training images per class ({r.rows[0]['train_images']} images)\n\n"
                        f"auto, the lecture's rule: {r.case}\n\n"
                        f"auto, measured ({sel.protocol}; the test set is not used):\n\n{sel.table()}\n\n"
                        f"auto: rule: {sel.rule()}\n\nauto: {sel.verdict()}\n\n{r.table()}\n")
    print("\n" + "\n".join(verdicts))
    atomic_write_text(out / "table.md", f"adaptation: {r.adaptation}\n\n" + "\n".join(sections) + "\n"
                      + "\n".join(f"- {v}" for v in verdicts) + "\n")
    print(f"\nwrote {out / 'table.md'} ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
