"""Augmentation throughput on CPU: cnnlab's batched ops vs the usual way, side by side in one run.

The usual way: torchvision v2 transforms applied per sample inside a DataLoader (num_workers=2,
batch 128) with the lecture's five ops: RandomHorizontalFlip, RandomCrop(padding=4, reflect),
RandomAffine(scale=(0.8, 1.2), bilinear), ColorJitter(brightness=0.3, saturation=0.3).
cnnlab: the same five as one batched pipeline ("lecture") on batches of 128 in the main process,
`torch.set_num_threads(threads)`. Both start from the same in-memory uint8 images and end with float
batches in [0, 1]; both include the shuffle and the uint8 -> float conversion.
Then: one epoch of shuffled, augmented Fashion-MNIST batches (batch 128, 60,000 images).

    .venv/bin/python benchmarks/augment.py [--threads 2] [--quick]

Targets: >= 10x the usual way at 1x28x28, >= 3x at 3x224x224, an epoch in < 1 s on 2 cores.
Times depend on the machine and its load; nothing here asserts them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from cnnlab.augment import parse_pipeline, to_unit_float

BATCH = 128
PIPELINE = "lecture"  # flip,crop:4,scale:0.8-1.2,exposure:0.3,saturation:0.3


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class UsualDataset(Dataset):
    """In-memory uint8 images, each transformed on its own by torchvision v2, as tutorials do."""

    def __init__(self, images: torch.Tensor):
        self.images = images
        size = images.shape[-1]
        self.transform = v2.Compose([
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomHorizontalFlip(),
            v2.RandomCrop(size, padding=4, padding_mode="reflect"),
            v2.RandomAffine(degrees=0, scale=(0.8, 1.2), interpolation=v2.InterpolationMode.BILINEAR),
            v2.ColorJitter(brightness=0.3, saturation=0.3),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), 0


def time_usual(images: torch.Tensor) -> float:
    """Images per second through a DataLoader with 2 workers (after a warm-up epoch)."""
    loader = DataLoader(UsualDataset(images), batch_size=BATCH, shuffle=True, num_workers=2,
                        persistent_workers=True)
    for _ in loader:  # warm-up: worker start-up is not counted
        pass
    t0 = time.perf_counter()
    n = sum(len(x) for x, _ in loader)
    dt = time.perf_counter() - t0
    return n / dt


def time_cnnlab(images: torch.Tensor, repeats: int) -> float:
    """Images per second: shuffled batches of the in-memory uint8 tensor, converted and augmented."""
    pipeline = parse_pipeline(PIPELINE)
    g = torch.Generator().manual_seed(0)

    def epoch() -> int:
        order = torch.randperm(len(images), generator=g)
        n = 0
        for i in range(0, len(images), BATCH):
            x = pipeline(to_unit_float(images[order[i:i + BATCH]]), g)
            n += len(x)
        return n

    epoch()  # warm-up
    t0 = time.perf_counter()
    n = sum(epoch() for _ in range(repeats))
    return n / (time.perf_counter() - t0)


def fashion_epoch() -> tuple[float, str]:
    """Seconds to serve one epoch of shuffled, augmented batches of 128 (best of 3)."""
    pipeline = parse_pipeline(PIPELINE)
    try:
        from cnnlab.data import load_dataset

        split = load_dataset("fashion-mnist").train
        source = f"Fashion-MNIST train split via cnnlab.data ({len(split)} images)"
    except Exception as e:  # noqa: BLE001 - fall back to same-shape random data, and say so
        images = torch.randint(0, 256, (60_000, 1, 28, 28), dtype=torch.uint8)
        labels = torch.randint(0, 10, (60_000,))

        class _Split:
            def __len__(self):
                return len(images)

            def batches(self, batch_size, *, shuffle=False, seed=0, epoch=0, **_):
                g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
                order = torch.randperm(len(images), generator=g) if shuffle else torch.arange(len(images))
                for i in range(0, len(images), batch_size):
                    idx = order[i:i + batch_size]
                    yield images[idx], labels[idx]

        split = _Split()
        source = f"random uint8 (60000, 1, 28, 28) tensor (cnnlab.data unavailable: {type(e).__name__}: {e})"
    g = torch.Generator().manual_seed(0)
    times = []
    for epoch in range(4):  # epoch 0 is a warm-up
        t0 = time.perf_counter()
        n = 0
        for batch, _ in split.batches(BATCH, shuffle=True, seed=0, epoch=epoch):
            n += len(pipeline(to_unit_float(batch), g))
        if epoch:
            times.append(time.perf_counter() - t0)
    assert n == len(split)
    return min(times), source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for cnnlab (default 2)")
    parser.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"cnnlab: torch.set_num_threads({args.threads}), main process; usual way: DataLoader "
          f"num_workers=2 (1 thread each); batch {BATCH}; pipeline {str(parse_pipeline(PIPELINE))!r}")
    print()
    cases = [((1, 28, 28), 2_560 if args.quick else 10_240, 5), ((3, 224, 224), 256 if args.quick else 512, 2)]
    print(f"{'images':>12} {'usual (img/s)':>14} {'cnnlab (img/s)':>15} {'ratio':>7}")
    for shape, count, repeats in cases:
        images = torch.randint(0, 256, (count, *shape), dtype=torch.uint8)
        usual = time_usual(images)
        ours = time_cnnlab(images, repeats)
        print(f"{'x'.join(map(str, shape)):>12} {usual:>14,.0f} {ours:>15,.0f} {ours / usual:>6.1f}x", flush=True)
    print()
    seconds, source = fashion_epoch()
    print(f"one epoch, batch {BATCH}, shuffled + '{PIPELINE}': {seconds:.2f} s (best of 3) from {source}")


if __name__ == "__main__":
    main()
