"""Training speed, side by side in one run: cnnlab vs a plain PyTorch loop (vs Keras 3 when installed).

    python benchmarks/train_speed.py                  # both tables (several minutes on 2 cores)
    python benchmarks/train_speed.py --throughput-only
    python benchmarks/train_speed.py --time-to-accuracy-only --recipes fashion-mnist-94 --plain-epochs 0
    python benchmarks/train_speed.py --quick          # 1 epoch each, short time-to-accuracy budget
    python benchmarks/train_speed.py --throughput-only --background-load 1   # quiet vs one busy process
    python benchmarks/train_speed.py --time-to-accuracy-only --recipes fashion-mnist-94 --seeds 3 --plain-epochs 0

The machine line names the CPU model, its instruction-set class (AVX2, AVX-512, AVX512-BF16, AMX, NEON;
`cnnlab.core.machine`), cores and threads, and the peak measured here: the GFLOP/s of a large fp32
matmul (and bf16 where the CPU runs it natively). Each throughput row adds the training GFLOP/s it
achieved (`cnnlab summary`'s MACs per image x 2 FLOP per MAC x 3 for the forward and the two backward
products) and that as a share of the peak of the dtype it computes in: how far from the machine's limit
each contestant runs.

Throughput: the same model (`simple_cnn`, the lecture's conv3x3-32 maxpool2 conv3x3-64 maxpool2 fc10),
data (Fashion-MNIST), batch (128), optimizer (Adam, lr 1e-3, constant) and epochs, with
  (a) cnnlab: in-memory uint8 batches, channels_last, bf16 autocast where the CPU has it, fused Adam,
      ReLU -> max-pool computed pool-first (same values; see benchmarks/step_levers.py);
  (b) the plain loop of the official PyTorch MNIST example: DataLoader over a TensorDataset, fp32;
  (c) Keras 3 on TensorFlow CPU, if installed (`pip install keras tensorflow-cpu`), else reported skipped.
Images/s count training only (evaluation excluded); timing is wall clock per epoch. The contestants take
turns in `--rounds` rounds (default 2) and each row reports its median epoch, so a slow spell of a shared
machine falls on both sides of the ratio rather than on one. The last column gives the ratio to the plain
loop round by round (each contestant against the plain loop's epoch of the same round) and their median:
the figure to read a speed target from, since the medians of two columns can pair different rounds.

Like the `cnnlab` command, the benchmark makes idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE,
`cnnlab.runtime.tune_openmp`) unless OMP_WAIT_POLICY is set; every contestant runs in this process, so
all get it. `--background-load N` runs each round twice, quiet and beside N competing busy processes,
and reports both and their ratio; `--threads N|auto` sets torch's threads for every contestant (auto:
the usable CPUs less those other processes keep busy, measured before each contestant, as
`cnnlab train --threads auto` does).

Time to accuracy: wall seconds (data loading, training and per-epoch evaluation included) until the test
accuracy first reaches 90/92/93/94%, for cnnlab's recipes and for the plain loop; with `--seeds N`
each recipe runs N seeds and the table gives the final accuracy's mean and spread and the mean time.
Numbers are noisy on a shared machine: read the ratios, which are measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

from cnnlab.runtime import tune_openmp

tune_openmp()  # before torch starts OpenMP, as the `cnnlab` command does it

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cnnlab.core import machine as mach  # noqa: E402

THRESHOLDS = (0.90, 0.92, 0.93, 0.94)
DEVICE = "cpu"  # --device: where every contestant trains


# ---- machine -----------------------------------------------------------------------------------
def machine() -> str:
    from cnnlab.layers._native import library
    from cnnlab.layers._native import status as kernel_status
    from cnnlab.runtime import openmp_status
    from cnnlab.training.precision import cpu_supports_bf16

    library()  # builds (once) and loads the C kernel, as the cnnlab runs below do through cnnlab.fuse
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{mach.one_line()}; native bf16 {cpu_supports_bf16()}; "
            f"torch {torch.__version__}, Python {platform.python_version()}; load average at start {load:.1f}; "
            f"{kernel_status()}; OpenMP: {openmp_status()}")


def peaks() -> dict[str, float]:
    """GFLOP/s of a 2048x2048 matmul: fp32, and bf16 where the CPU runs it natively (on CUDA: a 4096
    matmul in fp32 (TF32 as PyTorch's default allows it), bf16 and fp16)."""
    from cnnlab.training.precision import cpu_supports_bf16

    if DEVICE.startswith("cuda"):
        return {name: mach.matmul_peak(dt, n=4096, device=DEVICE)
                for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16))}
    out = {"fp32": mach.matmul_peak(torch.float32)}
    if cpu_supports_bf16():
        out["bf16"] = mach.matmul_peak(torch.bfloat16)
    return out


def train_flop_per_image(model: str = "simple_cnn", input_size=(1, 28, 28)) -> float:
    """FLOP to train on one image: the summary's MACs (forward) x 2 FLOP/MAC x 3 (forward, and the
    backward pass's gradients with respect to the inputs and to the weights, one product each)."""
    from cnnlab.inspect.layer_summary import trace
    from cnnlab.models import resolve_model

    return trace(resolve_model(model, input_size, 10)[0], input_size).total_macs * 2 * 3


# ---- a competing busy process, and threads -----------------------------------------------------
class BackgroundLoad:
    """`n` busy processes (a Python busy loop each) for the duration of a `with` block; n=0: none."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        if self.n:
            time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def apply_threads(threads: str) -> int:
    """Set torch's threads as `--threads` says ('' leaves them; 'auto' measures other processes first)."""
    if threads == "auto":
        torch.set_num_threads(mach.threads_for(mach.others_busy(0.5)))
    elif threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


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
                schedule="constant", augment="none", val_fraction=0.0, eval_test_every_epoch=True,
                device=DEVICE)
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
    model = plain_simple_cnn().to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    records = []
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        seen = 0
        for data, target in train_loader:
            data, target = data.to(DEVICE), target.to(DEVICE)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()
            seen += len(target)
        if DEVICE.startswith("cuda"):
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target in test_loader:
                correct += int((model(data.to(DEVICE)).argmax(1).cpu() == target).sum())
        records.append({"epoch": epoch, "test_accuracy": correct / len(ds.test), "train_seconds": train_s,
                        "images_per_second": seen / train_s, "wall": time.perf_counter() - start})
        if records[-1]["wall"] > budget_s:
            break
    return records


# ---- (c) Keras 3 -------------------------------------------------------------------------------
def run_keras(epochs: int) -> list[dict] | str:
    if DEVICE != "cpu":
        return f"skipped on {DEVICE}: the bench extra installs TensorFlow for the CPU"
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


def paired_ratios(runs: list[list[dict]], base: list[list[dict]]) -> list[float]:
    """Per round, this contestant's median epoch images/s over the plain loop's in the same round: the
    ratio a slow spell cannot bias, since both sides of each ratio ran minutes apart."""
    return [median_rate([a]) / median_rate([b]) for a, b in zip(runs, base, strict=False)]


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
    ap.add_argument("--recipes", default="fashion-mnist-90-1epoch,fashion-mnist-94-fast,fashion-mnist-94",
                    help="comma-separated recipes for time to accuracy "
                         "(default fashion-mnist-90-1epoch,fashion-mnist-94-fast,fashion-mnist-94)")
    ap.add_argument("--seeds", type=_positive, default=1,
                    help="seeds per recipe for time to accuracy: mean and spread of the final accuracy (default 1)")
    ap.add_argument("--levers", action="store_true", help="also cnnlab in fp32 and without channels_last")
    ap.add_argument("--quick", action="store_true", help="1 epoch each, short time-to-accuracy runs")
    ap.add_argument("--background-load", type=int, default=0, metavar="N",
                    help="throughput also beside N competing busy processes, each round quiet then loaded")
    ap.add_argument("--threads", default="", help="torch threads for every contestant: a number or auto "
                    "(the usable CPUs less those other processes keep busy, measured before each contestant)")
    ap.add_argument("--no-peak", action="store_true", help="skip measuring the matmul peak")
    ap.add_argument("--device", default="cpu", help="where every contestant trains: cpu (default) or cuda")
    ap.add_argument("--out", default="runs/bench", help="folder for cnnlab's run directories")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.plain_epochs, args.rounds = 1, 3, 1
    global DEVICE
    DEVICE = args.device
    stamp = time.strftime("%Y%m%d-%H%M%S")

    print(f"machine: {machine()}")
    if DEVICE.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(DEVICE)}; CUDA {torch.version.cuda}")
    peak = {} if args.no_peak else peaks()
    if peak:
        print("peak (2048x2048 matmul, best of ~1 s): " + ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in peak.items())
              + ("" if "bf16" in peak else "; bf16 not native here (emulated), not measured"))
    if not args.time_to_accuracy_only:
        throughput(args, stamp, peak)
    if not args.throughput_only:
        time_to_accuracy(args, stamp)


def throughput(args: argparse.Namespace, stamp: str, peak: dict[str, float]) -> None:
    from cnnlab.training.precision import resolve_precision

    flop = train_flop_per_image()
    print(f"\n## Throughput: simple_cnn, Fashion-MNIST, batch 128, Adam 1e-3, {args.epochs} epoch(s) each, "
          f"{args.rounds} round(s); {flop / 1e6:.1f} MFLOP to train on one image (summary MACs x 2 x 3)")
    auto = resolve_precision("auto", DEVICE).name
    contestants = [(f"cnnlab (auto: {auto}, channels_last, fused Adam, fused pools)", {}, auto)]
    if DEVICE.startswith("cuda"):  # AMP in both half types, layouts, augmentation computed on the GPU
        contestants += [("cnnlab fp16 AMP (loss scaling), channels_last", {"precision": "fp16"}, "fp16"),
                        ("cnnlab bf16 AMP, NCHW", {"precision": "bf16", "channels_last": False}, "bf16"),
                        ("cnnlab fp32, channels_last", {"precision": "fp32"}, "fp32"),
                        (f"cnnlab auto ({auto}) + flip, 2-pixel shift on the GPU", {"augment": "flip,crop:2:mode=zero"}, auto)]
    if args.levers:
        contestants += [("cnnlab fp32, channels_last", {"precision": "fp32"}, "fp32"),
                        ("cnnlab fp32, NCHW", {"precision": "fp32", "channels_last": False}, "fp32"),
                        ("cnnlab fp32, channels_last, without cnnlab.fuse", {"precision": "fp32", "fuse": False}, "fp32")]
    plain_name, keras_name = "plain PyTorch loop (DataLoader, fp32)", "Keras 3 on TensorFlow CPU (fp32)"
    dtypes = {name: d for name, _, d in contestants} | {plain_name: "fp32", keras_name: "fp32"}
    loads = [0] + ([args.background_load] if args.background_load else [])
    rows: dict[tuple[str, int], list[list[dict]]] = {}
    threads_used: dict[int, set[int]] = {n: set() for n in loads}
    skipped = None
    # Rounds alternate the contestants, so a slow spell of a shared machine hits both sides of the ratio.
    for r in range(args.rounds):
        for load in loads:
            with BackgroundLoad(load):
                for i, (name, options, _) in enumerate(contestants):
                    threads_used[load].add(apply_threads(args.threads))
                    rows.setdefault((name, load), []).append(
                        run_cnnlab(args.epochs, f"{args.out}/{stamp}-throughput-{i}-{r}-{load}", **options))
                threads_used[load].add(apply_threads(args.threads))
                rows.setdefault((plain_name, load), []).append(run_plain(args.epochs))
                if skipped is None:
                    threads_used[load].add(apply_threads(args.threads))
                    keras = run_keras(args.epochs)
                    if isinstance(keras, str):
                        skipped = keras
                    else:
                        rows.setdefault((keras_name, load), []).append(keras)
    for load in loads:
        where = "quiet (no background load)" if not load else f"beside {load} competing busy process(es)"
        print(f"\n### {where}; torch threads {', '.join(map(str, sorted(threads_used[load])))}")
        base = median_rate(rows[(plain_name, load)])
        quiet_col = " | × its quiet rate" if load else ""
        print(f"| {'how':<64} | images/s | × plain loop | GFLOP/s | of peak{quiet_col} | test acc after {args.epochs} "
              f"| epochs' images/s | × plain, round by round (median) |")
        print(f"|{'-' * 66}|---------:|-------------:|--------:|--------:|{'-------:|' if load else ''}---------:|---|---|")
        for (name, row_load), runs in rows.items():
            if row_load != load:
                continue
            rate = median_rate(runs)
            gflops = rate * flop / 1e9
            dt = dtypes[name]
            share = f"{100 * gflops / peak[dt]:.0f}% {dt}" if dt in peak else "–"
            quiet = f" | {rate / median_rate(rows[(name, 0)]):.2f}" if load else ""
            every = ", ".join(f"{rec['images_per_second']:,.0f}" for recs in runs for rec in recs)
            paired = paired_ratios(runs, rows[(plain_name, load)])
            by_round = ", ".join(f"{x:.2f}" for x in paired) + f" ({statistics.median(paired):.2f})"
            print(f"| {name:<64} | {rate:>8,.0f} | {rate / base:>12.2f} | {gflops:>7.1f} | {share:>7}{quiet} "
                  f"| {100 * runs[0][-1]['test_accuracy']:>7.2f}% | {every} | {by_round} |")
        if skipped:
            print(f"| {keras_name:<64} | {skipped} |")


def time_to_accuracy(args: argparse.Namespace, stamp: str) -> None:
    print("\n## Time to accuracy on Fashion-MNIST (wall seconds, data loading and evaluation included)")
    contestants = []
    seeds = range(args.seeds)
    for name in ("fashion-mnist",) if args.quick else [r.strip() for r in args.recipes.split(",") if r.strip()]:
        for seed in seeds:
            opts = _recipe(name)
            epochs = 2 if args.quick else opts.pop("epochs")
            opts.pop("epochs", None)
            label = f"cnnlab --recipe {name}" + (f" --seed {seed}" if args.seeds > 1 else "")
            contestants.append((label, name, run_cnnlab(epochs, f"{args.out}/{stamp}-{name}-s{seed}", seed=seed, **opts)))
    if args.plain_epochs > 0:
        contestants.append((f"plain PyTorch loop ({args.plain_epochs} epochs)", "plain", run_plain(args.plain_epochs)))
    print("| test accuracy | " + " | ".join(label for label, _, _ in contestants) + " |")
    print("|---|" + "---|" * len(contestants))
    for t in THRESHOLDS:
        print(f"| {100 * t:.0f}% | " + " | ".join(first_reach(recs, t) for _, _, recs in contestants) + " |")
    for label, _, recs in contestants:
        print(f"{label}: final test accuracy {100 * recs[-1]['test_accuracy']:.2f}% after {recs[-1]['epoch']} epochs, "
              f"{recs[-1]['wall']:.1f} s")
    if args.seeds > 1:
        print("\n| recipe | seeds | final test accuracy, mean ± std | min–max | wall seconds, mean ± std |")
        print("|---|---:|---:|---:|---:|")
        for name in dict.fromkeys(n for _, n, _ in contestants if n != "plain"):
            finals = [recs[-1] for _, n, recs in contestants if n == name]
            acc = [100 * r["test_accuracy"] for r in finals]
            wall = [r["wall"] for r in finals]
            print(f"| {name} | {len(acc)} | {statistics.mean(acc):.2f}% ± {statistics.stdev(acc):.2f} | "
                  f"{min(acc):.2f}–{max(acc):.2f}% | {statistics.mean(wall):.1f} ± {statistics.stdev(wall):.1f} |")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _recipe(name: str) -> dict:
    from cnnlab.training.recipes import recipe_options

    return recipe_options(name)


if __name__ == "__main__":
    main()
