"""What each trick of a fast recipe buys: the recipe, and the recipe without one trick at a time, over seeds.

    python benchmarks/tricks.py --recipe fashion-mnist-90-1epoch --seeds 3      # ~15 runs of 10-40 s (2 cores)
    python benchmarks/tricks.py --recipe fashion-mnist-94-fast --seeds 3 --arms no-whiten
    python benchmarks/tricks.py --list                                           # the arms of every recipe

Every arm trains exactly as `benchmarks/train_speed.py`'s time-to-accuracy runs do (all 60,000 training
images, the recipe's fixed epochs, the last weights, test accuracy read once after training: nothing is
chosen on it) with one option changed. Runs are paired by seed (the same seed fixes the initial weights
of every arm whose model is the same, the data order and the augmentation draws), and each row gives the
recipe's accuracy minus the arm's: the mean paired difference, its 95% Student-t interval, and what it
says under the experiments' rule (`cnnlab.core.stats.decide`): "buys" when the interval lies above zero,
"costs" when below, "inconclusive" otherwise. Wall seconds are per run, data loading and evaluation
included; on a shared machine read them within one run of this script, not across runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed  # noqa: E402  (the machine line, run_cnnlab: one way to time a recipe)

from cnnlab.core.stats import CONTRADICTED, SUPPORTED, decide, paired, summarize  # noqa: E402
from cnnlab.training.recipes import recipe_options  # noqa: E402

# recipe -> arm -> (what the arm leaves out, the options that do it)
ARMS: dict[str, dict[str, tuple[str, dict]]] = {
    "fashion-mnist-90-1epoch": {
        "no-whiten": ("the patch-whitened first conv (--whiten)", {"whiten": False}),
        "no-label-smoothing": ("label smoothing 0.1", {"label_smoothing": 0.0}),
        "default-lr": ("the tuned one-cycle peak 0.01 (cnnlab's default 1e-3 instead)", {"lr": 1e-3}),
        "no-batch-norm": ("batch norm", {"model": "conv3x3-16 (conv3x3-32/pool2)*3/double fc10"}),
        "width-16": ("widths 32-64-128 (16-32-64 instead: ~1.4x the images/s)",
                     {"model": "conv3x3-16 (conv3x3-16/pool2/bn)*3/double fc10"}),
    },
    "fashion-mnist-94-fast": {
        "no-whiten": ("the whitening of the first conv (the same net, its first conv trained from random)",
                      {"whiten": False}),
        "no-label-smoothing": ("label smoothing 0.1", {"label_smoothing": 0.0}),
        "flip-tta": ("the ten-view flip-shift TTA (two-view flip TTA instead)", {"tta": "flip"}),
        "width-32": ("widths 48-96-192 (32-64-128 instead: half the MACs, ~1.8x the images/s)",
                     {"model": "conv3x3-18 (conv3x3-32/pool2/bn conv3x3-32/bn)*3/double fc10"}),
    },
}


def arm_options(recipe: str, changes: dict) -> tuple[int, dict]:
    """(epochs, options) of `recipe` with `changes` applied (`extra` entries merged into the model's)."""
    opts = recipe_options(recipe)
    epochs = opts.pop("epochs")
    for key, value in changes.items():
        if key == "extra":
            opts["extra"] = {**opts.get("extra", {}), **value}
        else:
            opts[key] = value
    return epochs, opts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="fashion-mnist-90-1epoch", choices=sorted(ARMS))
    ap.add_argument("--seeds", type=train_speed._positive, default=3, help="seeds per arm (default 3; at least 2 for an interval)")
    ap.add_argument("--arms", default="", help="comma-separated arms (default: all of the recipe's)")
    ap.add_argument("--list", action="store_true", help="print every recipe's arms and exit")
    ap.add_argument("--out", default="runs/tricks", help="folder for the run directories")
    args = ap.parse_args()
    if args.list:
        for recipe, arms in ARMS.items():
            print(recipe)
            for name, (what, changes) in arms.items():
                print(f"  {name:<20} without {what}: {changes}")
        return
    arms = ARMS[args.recipe]
    chosen = [a.strip() for a in args.arms.split(",") if a.strip()] or list(arms)
    unknown = [a for a in chosen if a not in arms]
    if unknown:
        sys.exit(f"unknown arm(s) {', '.join(unknown)} for {args.recipe}; arms: {', '.join(arms)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    print(f"machine: {train_speed.machine()}")
    print(f"recipe: {args.recipe}; {args.seeds} seeds; arms: recipe, {', '.join(chosen)}")
    results: dict[str, list[tuple[float, float]]] = {}  # arm -> [(accuracy, wall)] by seed
    for seed in range(args.seeds):  # seed-major: a slow spell of the machine falls on every arm
        for arm in ["recipe", *chosen]:
            epochs, opts = arm_options(args.recipe, {} if arm == "recipe" else arms[arm][1])
            records = train_speed.run_cnnlab(epochs, f"{args.out}/{stamp}-{arm}-s{seed}", seed=seed, **opts)
            last = records[-1]
            results.setdefault(arm, []).append((last["test_accuracy"], last["wall"]))
            print(f"  seed {seed} {arm}: test {100 * last['test_accuracy']:.2f}% in {last['wall']:.1f} s", flush=True)

    base = [a for a, _ in results["recipe"]]
    print("\n| arm | leaves out | test accuracy, mean ± std | recipe − arm, mean [95% interval] | says | wall s, mean |")
    print("|---|---|---:|---:|---|---:|")
    s = summarize(base)
    print(f"| recipe | – | {s.mean:.2%} ± {100 * s.std:.2f} | – | – | "
          f"{statistics.mean(w for _, w in results['recipe']):.1f} |")
    for arm in chosen:
        acc = [a for a, _ in results[arm]]
        s, d = summarize(acc), paired(base, acc)
        says = {SUPPORTED: "buys", CONTRADICTED: "costs"}.get(decide(d), "inconclusive")
        print(f"| {arm} | {arms[arm][0]} | {s.mean:.2%} ± {100 * s.std:.2f} | {100 * d.mean:+.2f} "
              f"[{100 * d.low:+.2f}, {100 * d.high:+.2f}] | {says} | {statistics.mean(w for _, w in results[arm]):.1f} |")


if __name__ == "__main__":
    main()
