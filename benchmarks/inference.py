"""CPU inference speed, side by side in one run: PyTorch eager fp32 and bf16, ONNX Runtime fp32 and INT8.

    python benchmarks/inference.py                          # trains the fashion-mnist recipe first (~2 min)
    python benchmarks/inference.py --run runs/fm --run runs/fm94
    python benchmarks/inference.py --recipe fashion-mnist-94 --rounds 7

For each trained run, the model is exported by `cnnlab export --format onnx --quantize int8` (fp32 file
checked against PyTorch, INT8 file calibrated on 512 training images; `cnnlab.training.quantize`) into a
temporary folder, and four contestants classify the same images:
  - PyTorch eager fp32: the run's model as `load_model` gives it, NCHW, `torch.inference_mode`;
  - PyTorch eager bf16: the same under `torch.autocast("cpu", torch.bfloat16)`; on a CPU without native
    bf16 (the AVX2 class) PyTorch emulates it, and the row says so;
  - ONNX Runtime fp32 and INT8: the exported files (normalisation included), ONNX Runtime's CPU provider.
Every contestant uses the same number of threads (`--threads`, default torch's). Images/s at batch 1
(latency-bound: a photo at a time) and batch 256 (throughput) are the median over `--rounds` rounds, each
at least `--seconds` long; the contestants take turns within each round, so a slow spell of a shared
machine falls on all of them. Test accuracy is measured on the run's whole test split (bf16 only where
the CPU runs it natively).

The machine line names the CPU class; the figures hold for that class only (docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cnnlab.core import machine
from cnnlab.core.run import open_run
from cnnlab.training.export import Normalized, export, int8_path, read_export_info
from cnnlab.training.onnxrt import session
from cnnlab.training.precision import cpu_supports_bf16
from cnnlab.training.run import load_model
from cnnlab.training.rundata import run_data

TARGET_DROP = 0.5  # issue 19: the recipes' nets may lose at most half a point of test accuracy in INT8


def images_per_s(fn, x, seconds: float) -> float:
    """Images/s of `fn(x)` over at least `seconds` (and at least 3 calls), after one untimed call."""
    fn(x)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        fn(x)
        calls += 1
    return calls * len(x) / (time.perf_counter() - start)


def accuracy(fn, test) -> float:
    """Top-1 accuracy (percent) of `fn` over the whole test split, batch 256."""
    right = total = 0
    for images, labels in test.batches(256, shuffle=False):
        out = fn((images.float() / 255).numpy())
        logits = out[0] if isinstance(out, list) else out.float().numpy()
        right += int((logits.argmax(1) == labels.numpy()).sum())
        total += len(labels)
    return 100.0 * right / total


def contestants(run: Path, folder: Path, threads: int):
    """{name: callable on a float32 numpy batch in [0, 1]} and the export's measured facts."""
    model, card = load_model(run, "best")
    wrapped = Normalized(model.float().eval(), card.mean, card.std, card.temperature).eval()
    fp32_file = export(run, "onnx", folder / "best.onnx", quantize="int8", max_drop=100.0)
    int8_file = int8_path(fp32_file)
    s32, s8 = session(fp32_file, threads), session(int8_file, threads)

    def eager(x):
        with torch.inference_mode():
            return wrapped(torch.from_numpy(x))

    def eager_bf16(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return wrapped(torch.from_numpy(x))

    runs = {"PyTorch eager fp32": eager, "PyTorch eager bf16": eager_bf16,
            "ONNX Runtime fp32": lambda x: s32.run(None, {"images": x}),
            "ONNX Runtime INT8": lambda x: s8.run(None, {"images": x})}
    return runs, read_export_info(int8_file)["verified"], card


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", default=[], help="a trained run folder (repeatable)")
    ap.add_argument("--recipe", default="fashion-mnist",
                    help="without --run: train this recipe (seed 0) into a temporary folder first")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; each row is the median (default 5)")
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum seconds per measurement (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every contestant (default torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # a benchmark script owns its process
    threads = torch.get_num_threads()
    native = cpu_supports_bf16()
    print(f"machine: {machine.one_line()}; native bf16 {native}")
    print(f"torch {torch.__version__}; every contestant on {threads} thread{'s' * (threads != 1)}; "
          f"{args.rounds} rounds of >= {args.seconds:g} s, median")
    with tempfile.TemporaryDirectory(prefix="cnnlab-inference-") as tmp:
        runs = [Path(r) for r in args.run]
        if not runs:
            from cnnlab.training import train  # noqa: PLC0415

            print(f"training `cnnlab train --recipe {args.recipe} --seed 0` into a temporary folder ...", flush=True)
            start = time.perf_counter()
            runs = [train(recipe=args.recipe, seed=0, out=str(Path(tmp) / "run"), quiet=True, plots=False).path]
            print(f"  trained in {time.perf_counter() - start:.0f} s")
        drops = []
        for k, run in enumerate(runs):
            folder = Path(tmp) / f"export-{k}"
            calls, q, card = contestants(run, folder, threads)
            test = run_data(open_run(run), card).test
            x1 = (next(test.batches(1, shuffle=False))[0].float() / 255).numpy()
            x256 = (next(test.batches(256, shuffle=False))[0].float() / 255).numpy()
            speeds: dict[str, dict[int, list[float]]] = {name: {1: [], 256: []} for name in calls}
            for _ in range(args.rounds):
                for name, fn in calls.items():
                    for x in (x1, x256):
                        if name == "PyTorch eager bf16" and not native and len(x) > 1 and speeds[name][256]:
                            continue  # emulated bf16 at batch 256 takes minutes a round: measured once
                        speeds[name][len(x)].append(images_per_s(fn, x, args.seconds))
            print(f"\n{card.model} on {card.dataset} ({run}); test split {q['test_images']:,} images")
            print("| contestant | file | test accuracy | batch 1, images/s | batch 256, images/s | vs eager fp32 (1 / 256) |")
            print("|---|---|---|---|---|---|")
            base = {b: statistics.median(speeds["PyTorch eager fp32"][b]) for b in (1, 256)}
            sizes = {"ONNX Runtime fp32": q["fp32_bytes"], "ONNX Runtime INT8": q["int8_bytes"]}
            accs = {"ONNX Runtime fp32": q["fp32_accuracy"], "ONNX Runtime INT8": q["int8_accuracy"],
                    "PyTorch eager fp32": accuracy(calls["PyTorch eager fp32"], test)}
            if native:  # emulated bf16 would take minutes over the test split
                accs["PyTorch eager bf16"] = accuracy(calls["PyTorch eager bf16"], test)
            for name in calls:
                med = {b: statistics.median(speeds[name][b]) for b in (1, 256)}
                note = "" if native or "bf16" not in name else " (emulated: no native bf16 on this CPU)"
                size = f"{sizes[name] / 1e6:.2f} MB" if name in sizes else "-"
                acc = f"{accs[name]:.2f}%" if name in accs else "-"
                print(f"| {name}{note} | {size} | {acc} | {med[1]:,.0f} | {med[256]:,.0f} | "
                      f"{med[1] / base[1]:.2f}x / {med[256] / base[256]:.2f}x |")
            drops.append(q["drop"])
            verdict = "within" if q["drop"] <= TARGET_DROP else "OVER"
            print(f"INT8 - fp32 test accuracy: {-q['drop']:+.2f} points (fp32 {q['fp32_accuracy']:.2f}% -> INT8 "
                  f"{q['int8_accuracy']:.2f}%; same class on {q['agreement']:.2f}% of test images); "
                  f"target: a drop of at most {TARGET_DROP} points: {verdict}")
    return 0 if all(d <= TARGET_DROP for d in drops) else 1


if __name__ == "__main__":
    sys.exit(main())
