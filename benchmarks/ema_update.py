"""The cost of one EMA update, cnnlab's `EMA` callback against torch's `AveragedModel`, side by side.

    python benchmarks/ema_update.py [--rounds 7] [--updates 200]

Both compute the same thing (the EMA update of `get_ema_multi_avg_fn` with the warm-up, over parameters
and float buffers; tests/test_train_averaging.py checks bit for bit). AveragedModel walks both modules,
regroups the tensors by dtype and reads its update count at every call; the callback pairs the tensors
once. One thread, so the figure is the update's own cost; each row is the best of `--rounds` blocks.
"""

from __future__ import annotations

import argparse
import platform
import time
from types import SimpleNamespace

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnnlab.models import create_model
from cnnlab.training.averaging import EMA

MODELS = (("simple_cnn", dict(num_classes=10, in_channels=1, input_size=(28, 28))),
          ("vgg_like", dict(num_classes=10, in_channels=1, input_size=(28, 28), n=2, m=3, width=16, batch_norm=True)),
          ("resnet20", dict(num_classes=10)))


def best_seconds(fn, rounds: int, updates: int) -> float:
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(updates):
            fn()
        best = min(best, (time.perf_counter() - t) / updates)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--updates", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a benchmark script owns its process
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, 1 thread")
    print(f"{'model':<11} {'params':>9} {'tensors':>7} {'AveragedModel':>14} {'EMA callback':>13} {'ratio':>6}")
    for name, options in MODELS:
        model = create_model(name, **options)
        reference = AveragedModel(model, use_buffers=True, multi_avg_fn=lambda a, c, n: get_ema_multi_avg_fn(
            min(0.999, (1 + int(n)) / (10 + int(n))))(a, c, n))
        ema, trainer = EMA(0.999), SimpleNamespace(model=model)
        ema.on_fit_start(trainer)
        theirs = best_seconds(lambda r=reference, m=model: r.update_parameters(m), args.rounds, args.updates)
        ours = best_seconds(lambda e=ema, t=trainer: e.on_step_end(t, 0, 1), args.rounds, args.updates)
        n = sum(p.numel() for p in model.parameters())
        tensors = len([*model.parameters(), *model.buffers()])
        print(f"{name:<11} {n:>9,} {tensors:>7} {1e6 * theirs:>11.0f} us {1e6 * ours:>10.0f} us {theirs / ours:>5.1f}x")


if __name__ == "__main__":
    main()
