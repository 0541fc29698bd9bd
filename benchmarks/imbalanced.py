"""Imbalanced classes: plain training vs `--class-weights auto` vs `--sampler balanced`, several seeds.

The data: scikit-learn's digits with a long-tailed training split, `cnnlab.data.subsets.long_tailed(ratio)`
(class 0 keeps all its ~145 images, class 9 a tenth of that, exponential in between: 10:1 for ratio 10),
built the same way for every run; the test split stays balanced (36 images a class), so balanced accuracy
and macro-F1 measure every class alike. Each row trains `simple_cnn` in memory (no run folder) with the
same options apart from the one compared, and is evaluated on the test split after the last epoch.

    .venv/bin/python benchmarks/imbalanced.py [--ratio 10] [--seeds 0,1,2] [--epochs 30]

Accuracies are what they are on this tiny set; nothing here asserts them.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from cnnlab.data import load_dataset
from cnnlab.data.sampling import class_counts
from cnnlab.data.subsets import long_tailed
from cnnlab.training import TrainConfig, Trainer

MODES = {"plain": {}, "class-weights auto": {"class_weights": "auto"}, "sampler balanced": {"sampler": "balanced"}}


def run(ds, seed: int, epochs: int, **options) -> tuple[float, float, float]:
    cfg = TrainConfig(model="simple_cnn", epochs=epochs, batch_size=64, seed=seed, precision="fp32", **options)
    result = Trainer(cfg, data=ds, save=False, quiet=True).fit()
    ev = result.last_eval
    return ev.accuracy, ev.balanced_accuracy, ev.macro_f1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=10.0)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=30)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    ds = long_tailed(load_dataset("digits"), args.ratio, seed=0)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    print(f"data: {ds.name}, train per class {class_counts(ds.train.labels, 10).tolist()}, "
          f"test per class {class_counts(ds.test.labels, 10).tolist()}")
    print(f"simple_cnn, {args.epochs} epochs, batch 64, adamw onecycle, fp32; seeds {seeds}; mean ± sample std")
    print(f"{'mode':<20} {'accuracy':>16} {'balanced acc.':>16} {'macro-F1':>16}  seconds")
    for name, options in MODES.items():
        t0 = time.perf_counter()
        rows = [run(ds, seed, args.epochs, **options) for seed in seeds]
        cells = []
        for column in zip(*rows, strict=True):
            sd = statistics.stdev(column) if len(column) > 1 else 0.0
            cells.append(f"{100 * statistics.fmean(column):6.2f} ± {100 * sd:5.2f}")
        print(f"{name:<20} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16}  {time.perf_counter() - t0:6.1f}", flush=True)


if __name__ == "__main__":
    main()
