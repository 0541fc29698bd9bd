"""`cnnlab demo` (`make demo`): train the lecture's CNN for a few epochs and show where the run went.

It uses Fashion-MNIST where its files are found; otherwise the small digits set embedded in
scikit-learn, saying so and how to get Fashion-MNIST. Under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse

from cnnlab.cli._args import check_out, int_in

ORDER = 0


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="train the lecture's CNN on Fashion-MNIST for a few epochs (under a minute)",
                       description=__doc__)
    p.add_argument("--epochs", type=int_in(1, 100_000), help="default 3 (on the digits fallback: what `cnnlab train` picks for its size)")
    p.add_argument("--out", help="run directory (default runs/demo-<time>)")
    p.add_argument("--data-dir", help="folder holding the Fashion-MNIST files")
    p.set_defaults(func=run)
    return p


def _say_fallback(reason: str) -> None:
    print(f"Fashion-MNIST not found ({reason[:150]}).")
    print("Training on the digits embedded in scikit-learn instead. To use Fashion-MNIST: "
          "`cnnlab data get fashion-mnist --download`, or `apt-get install dataset-fashion-mnist`, then run the demo again.")


def run(args: argparse.Namespace) -> int:
    check_out(args.out, folder=True)
    from cnnlab.training.demo import demo  # noqa: PLC0415 - torch only once a command runs: fast --help

    d = demo(epochs=args.epochs, out=args.out, data_dir=args.data_dir, on_fallback=_say_fallback)
    r = d.result
    print()
    chosen = f"the weights of epoch {r.best_epoch} of {r.history[-1]['epoch']}, chosen by validation accuracy" \
        if r.chosen_by == "val" else f"the last weights (epoch {r.best_epoch})"
    print(f"{d.options['model']} on {d.options['data']}: test accuracy {100 * r.test_accuracy:.2f}% "
          f"({chosen}), {d.seconds:.0f} s in all")
    path = d.result.path
    print(f"run directory: {path}  (curves.png, confusion.png, best.safetensors, metrics.jsonl)")
    print(f"next: cnnlab eval {path}   |   cnnlab predict {path} IMAGE.png   |   cnnlab export {path} --format onnx")
    return 0
