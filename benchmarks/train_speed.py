"""Training speed, side by side in one run: cnnlab vs a plain PyTorch loop (vs Keras 3 when installed).

    python benchmarks/train_speed.py                  # both tables (several minutes on 2 cores)
    python benchmarks/train_speed.py --throughput-only
    python benchmarks/train_speed.py --time-to-accuracy-only --recipes fashion-mnist-94 --plain-epochs 0
    python benchmarks/train_speed.py --quick          # 1 epoch each, short time-to-accuracy budget

Throughput: the same model (`simple_cnn`, the lecture's conv3x3-32 maxpool2 conv3x3-64 maxpool2 fc10),
data (Fashion-MNIST), batch (128), optimizer (Adam, lr 1e-3, constant) and epochs, with
  (a) cnnlab: in-memory uint8 batches, channels_last, bf16 autocast where the CPU has it, fused Adam,
      ReLU -> max-pool computed pool-first (same values; see benchmarks/step_levers.py);
  (b) the plain loop of the official PyTorch MNIST example: DataLoader over a TensorDataset, fp32;
  (c) Keras 3 on TensorFlow CPU, if installed (`pip install keras tensorflow-cpu`), else reported skipped.
Images/s count training only (evaluation excluded); timing is wall clock per epoch. The contestants take
turns in `--rounds` rounds (default 2) and each row reports its median epoch, so a slow spell of a shared
machine falls on both sides of the ratio rather than on one.

Time to accuracy: wall seconds (data loading, training and per-epoch evaluation included) until the test
accuracy first reaches 90/92/93/94%, for cnnlab's recipes and for the plain loop. Numbers are noisy on a
shared machine: read the ratios, which are measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

THRESHOLDS = (0.90, 0.92, 0.93, 0.94)


# ---- machine -----------------------------------------------------------------------------------
def machine() -> str:
    from cnnlab.layers._native import library
    from cnnlab.layers._native import status as kernel_status
    from cnnlab.training.precision import cpu_supports_bf16

    library()  # builds (once) and loads the C kernel, as the cnnlab runs below do through cnnlab.fuse
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}; {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
            f"capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {cpu_supports_bf16()}; "
            f"torch {torch.__version__}, Python {platform.python_version()}; load average at start {load:.1f}; "
            f"{kernel_status()}")


# ---- (a) cnnlab --------------------------------------------------------------------------------
def run_cnnlab(epochs: int, out: str, **options) -> list[dict]:
    """Per-epoch records from cnnlab.train, with `wall` = seconds since the call began."""
    from cnnlab.training import Callback, train

    start = time.perf_counter()

    class Wall(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            metrics["wall"] = time.perf_counter() - start

    # like the baselines: all 60,000 training images, test accuracy after every epoch (time to accuracy)
    opts = dict(model="simple_cnn", data="fashion-mnist", batch_size=128, optimizer="adam", lr=1e-3,
                schedule="constant", augment="none", val_fraction=0.0, eval_test_every_epoch=True)
    opts.update(options)
    result = train(**opts, epochs=epochs, out=out, quiet=True, verbose=False, callbacks=[Wall()])
    return result.history


# ---- (b) the plain PyTorch loop ----------------------------------------------------------------
def plain_simple_cnn() -> torch.nn.Module:
    """`simple_cnn` in plain PyTorch, as the official example writes its own net: the same layers, the
    same initial weights for the same seed, none of cnnlab's execution levers (pool-first, layout-keeping
    flatten), which would otherwise speed up the baseline too."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 7 * 7, 10))


def run_plain(epochs: int, budget_s: float = float("inf")) -> list[dict]:
    """The official-example way: DataLoader over a TensorDataset of normalised fp32 images, fp32 model."""
    from torch.utils.data import DataLoader, TensorDataset

    from cnnlab.data import load_dataset

    start = time.perf_counter()
    ds = load_dataset("fashion-mnist")
    mean, std = ds.mean[0], ds.std[0]
    x_train = (ds.train.images.float() / 255 - mean) / std
    x_test = (ds.test.images.float() / 255 - mean) / std
    train_loader = DataLoader(TensorDataset(x_train, ds.train.labels), batch_size=128, shuffle=True)
    test_loader = DataLoader(TensorDataset(x_test, ds.test.labels), batch_size=1000)
    torch.manual_seed(0)
    model = plain_simple_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    records = []
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        seen = 0
        for data, target in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()
            seen += len(target)
        train_s = time.perf_counter() - t0
        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target in test_loader:
                correct += int((model(data).argmax(1) == target).sum())
        records.append({"epoch": epoch, "test_accuracy": correct / len(ds.test), "train_seconds": train_s,
                        "images_per_second": seen / train_s, "wall": time.perf_counter() - start})
        if records[-1]["wall"] > budget_s:
            break
    return records


# ---- (c) Keras 3 -------------------------------------------------------------------------------
def run_keras(epochs: int) -> list[dict] | str:
    try:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras  # noqa: F401
    except ImportError:
        return "skipped: Keras/TensorFlow not installed (pip install keras tensorflow-cpu, the `bench` extra)"
    from cnnlab.data import load_dataset

    ds = load_dataset("fashion-mnist")
    x = ((ds.train.images.float() / 255 - ds.mean[0]) / ds.std[0]).permute(0, 2, 3, 1).numpy()
    xt = ((ds.test.images.float() / 255 - ds.mean[0]) / ds.std[0]).permute(0, 2, 3, 1).numpy()
    y, yt = ds.train.labels.numpy(), ds.test.labels.numpy()
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    records = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=128, epochs=1, verbose=0, shuffle=True)
        train_s = time.perf_counter() - t0
        _, acc = model.evaluate(xt, yt, batch_size=1000, verbose=0)
        records.append({"epoch": epoch, "test_accuracy": float(acc), "train_seconds": train_s,
                        "images_per_second": len(y) / train_s})
    return records


# ---- tables ------------------------------------------------------------------------------------
def median_rate(runs: list[list[dict]]) -> float:
    """The median epoch's images/s over all runs (the upper one of an even count): robust to a
    neighbour's burst of load during one epoch, and to the first epoch's warm-up."""
    rates = sorted(r["images_per_second"] for records in runs for r in records)
    return rates[len(rates) // 2]


def first_reach(records: list[dict], threshold: float) -> str:
    measured = [r for r in records if r["test_accuracy"] is not None]  # --eval-every skips some epochs
    for r in measured:
        if r["test_accuracy"] >= threshold:
            return f"{r['wall']:.1f} s (epoch {r['epoch']})"
    last = records[-1]
    return f"not in {last['epoch']} epochs ({last['wall']:.0f} s; best {100 * max(x['test_accuracy'] for x in measured):.2f}%)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per contestant for throughput (default 2)")
    ap.add_argument("--rounds", type=_positive, default=2,
                    help="throughput rounds, each running every contestant in turn (default 2)")
    ap.add_argument("--plain-epochs", type=int, default=15,
                    help="epochs of the plain loop for time-to-accuracy (0: leave it out)")
    ap.add_argument("--throughput-only", action="store_true", help="skip the time-to-accuracy table")
    ap.add_argument("--time-to-accuracy-only", action="store_true", help="skip the throughput table")
    ap.add_argument("--recipes", default="fashion-mnist,fashion-mnist-94",
                    help="comma-separated recipes for time to accuracy (default fashion-mnist,fashion-mnist-94)")
    ap.add_argument("--levers", action="store_true", help="also cnnlab in fp32 and without channels_last")
    ap.add_argument("--quick", action="store_true", help="1 epoch each, short time-to-accuracy runs")
    ap.add_argument("--out", default="runs/bench", help="folder for cnnlab's run directories")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.plain_epochs, args.rounds = 1, 3, 1
    stamp = time.strftime("%Y%m%d-%H%M%S")

    print(f"machine: {machine()}")
    if not args.time_to_accuracy_only:
        throughput(args, stamp)
    if not args.throughput_only:
        time_to_accuracy(args, stamp)


def throughput(args: argparse.Namespace, stamp: str) -> None:
    print(f"\n## Throughput: simple_cnn, Fashion-MNIST, batch 128, Adam 1e-3, {args.epochs} epoch(s) each, "
          f"{args.rounds} round(s)")
    contestants = [("cnnlab (auto: bf16 where supported, channels_last, fused Adam)", {})]
    if args.levers:
        contestants += [("cnnlab fp32, channels_last", {"precision": "fp32"}),
                        ("cnnlab fp32, NCHW", {"precision": "fp32", "channels_last": False})]
    plain_name = "plain PyTorch loop (DataLoader, fp32)"
    rows: dict[str, list[list[dict]]] = {name: [] for name, _ in contestants}
    rows[plain_name] = []
    keras_name, skipped = "Keras 3 on TensorFlow CPU", None
    # Rounds alternate the contestants, so a slow spell of a shared machine hits both sides of the ratio.
    for r in range(args.rounds):
        for i, (name, options) in enumerate(contestants):
            rows[name].append(run_cnnlab(args.epochs, f"{args.out}/{stamp}-throughput-{i}-{r}", **options))
        rows[plain_name].append(run_plain(args.epochs))
        if skipped is None:
            keras = run_keras(args.epochs)
            if isinstance(keras, str):
                skipped = keras
            else:
                rows.setdefault(keras_name, []).append(keras)
    base = median_rate(rows[plain_name])
    print(f"| {'how':<64} | images/s | × plain loop | test acc after {args.epochs} | epochs' images/s |")
    print(f"|{'-' * 66}|---------:|-------------:|---------:|---|")
    for name, runs in rows.items():
        rate = median_rate(runs)
        every = ", ".join(f"{rec['images_per_second']:,.0f}" for recs in runs for rec in recs)
        print(f"| {name:<64} | {rate:>8,.0f} | {rate / base:>12.2f} | {100 * runs[0][-1]['test_accuracy']:>7.2f}% | {every} |")
    if skipped:
        print(f"| {keras_name:<64} | {skipped} |")


def time_to_accuracy(args: argparse.Namespace, stamp: str) -> None:
    print("\n## Time to accuracy on Fashion-MNIST (wall seconds, data loading and evaluation included)")
    contestants = []
    for name in ("fashion-mnist",) if args.quick else [r.strip() for r in args.recipes.split(",") if r.strip()]:
        opts = _recipe(name)
        epochs = 2 if args.quick else opts.pop("epochs")
        opts.pop("epochs", None)
        contestants.append((f"cnnlab --recipe {name}", run_cnnlab(epochs, f"{args.out}/{stamp}-{name}", **opts)))
    if args.plain_epochs > 0:
        contestants.append((f"plain PyTorch loop ({args.plain_epochs} epochs)", run_plain(args.plain_epochs)))
    print("| test accuracy | " + " | ".join(name for name, _ in contestants) + " |")
    print("|---|" + "---|" * len(contestants))
    for t in THRESHOLDS:
        print(f"| {100 * t:.0f}% | " + " | ".join(first_reach(recs, t) for _, recs in contestants) + " |")
    for name, recs in contestants:
        print(f"{name}: final test accuracy {100 * recs[-1]['test_accuracy']:.2f}% after {recs[-1]['epoch']} epochs, "
              f"{recs[-1]['wall']:.1f} s")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _recipe(name: str) -> dict:
    from cnnlab.training.recipes import recipe_options

    return recipe_options(name)


if __name__ == "__main__":
    main()
