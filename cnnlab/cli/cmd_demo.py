"""`cnnlab demo` (`make demo`): train the lecture's CNN for a few epochs and show where the run went.

It uses Fashion-MNIST where its files are found; otherwise the small digits set embedded in
scikit-learn, saying so and how to get Fashion-MNIST. Under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

ORDER = 0

# simple_cnn with AdamW one-cycle (peak 3e-3): about 90% test accuracy on Fashion-MNIST in 3 epochs.
DEMO = {"model": "simple_cnn", "epochs": 3, "batch_size": 128, "optimizer": "adamw", "lr": 3e-3,
        "schedule": "onecycle", "warmup": 0.5}
FALLBACK = {"data": "digits", "epochs": 15, "batch_size": 64, "lr": 3e-3}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="train the lecture's CNN on Fashion-MNIST for a few epochs (under a minute)",
                       description=__doc__)
    p.add_argument("--epochs", type=int, help=f"default {DEMO['epochs']}")
    p.add_argument("--out", help="run directory (default runs/demo-<time>)")
    p.add_argument("--data-dir", help="folder holding the Fashion-MNIST files")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cnnlab.errors import CnnlabError  # noqa: PLC0415
    from cnnlab.train import train  # noqa: PLC0415

    options = dict(DEMO, data="fashion-mnist")
    try:
        from cnnlab.data import load_dataset  # noqa: PLC0415

        load_dataset("fashion-mnist", data_dir=args.data_dir)
    except CnnlabError as e:
        print(f"Fashion-MNIST not found ({str(e)[:150]}).")
        print("Training on the digits embedded in scikit-learn instead. To use Fashion-MNIST: "
              "`cnnlab data get fashion-mnist --download`, or `apt-get install dataset-fashion-mnist`, then run the demo again.")
        options.update(FALLBACK)
    if args.epochs is not None:
        options["epochs"] = args.epochs
    out = args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    result = train(out=out, data_dir=args.data_dir, **options)
    wall = time.perf_counter() - start
    last = result.history[-1]
    print()
    print(f"{options['model']} on {options['data']}: test accuracy {100 * last['test_accuracy']:.2f}% after "
          f"{last['epoch']} epochs, {wall:.0f} s in all")
    print(f"run directory: {result.path}  (curves.png, confusion.png, best.safetensors, metrics.jsonl)")
    print(f"next: cnnlab eval {result.path}   |   cnnlab predict {result.path} IMAGE.png   |   "
          f"cnnlab export {result.path} --format onnx")
    return 0
