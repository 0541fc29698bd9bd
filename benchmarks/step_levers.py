"""Three exact levers of a training step, side by side in one run: ReLU -> max-pool run pool-first, a
flatten whose gradient keeps the channels_last layout, and the C 2x2 max-pool (+ ReLU) kernel
(cnnlab.models._pool_first, cnnlab.layers.flatten, cnnlab.layers.maxpool2x2).

    python benchmarks/step_levers.py [--model simple_cnn] [--rounds 8]

The same model, weights, batch (128 random 1x28x28 images) and step (bf16 autocast where the CPU has it,
channels_last, fused Adam) in five builds: torch's order and flatten, the first two levers alone and
together, and all three (cnnlab's default). The builds take turns in blocks of 30 steps; each row reports
its median block. The levers leave the values as they are (tests/test_models_pool_first.py,
tests/test_layers.py and tests/test_layers_maxpool2x2.py check bit for bit).
"""

from __future__ import annotations

import argparse
import time
import types

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.layers import Flatten
from cnnlab.layers._native import status as kernel_status
from cnnlab.models import create_model
from cnnlab.models._pool_first import forward_pool_first
from cnnlab.runtime import tune_allocator
from cnnlab.train.precision import resolve_precision


def build(name: str, pool_first: bool, keep_layout: bool, kernel: bool) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name)
    if not pool_first:  # the modules in their printed order, as nn.Sequential runs them
        model.forward_features = types.MethodType(lambda self, x: self.features(x), model)
    elif not kernel:
        model.forward_features = types.MethodType(lambda self, x: forward_pool_first(self.features, x, kernel=False), model)
    if not keep_layout:
        for parent in model.modules():
            for key, child in parent.named_children():
                if isinstance(child, Flatten):
                    setattr(parent, key, nn.Flatten(child.start_dim, child.end_dim))
    return model.to(memory_format=torch.channels_last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="simple_cnn", help="a zoo model taking 1x28x28 images (default simple_cnn)")
    ap.add_argument("--rounds", type=int, default=8, help="blocks of 30 steps per build (default 8)")
    args = ap.parse_args()
    tune_allocator()
    precision = resolve_precision("auto", "cpu")
    print(f"{args.model}, batch 128, {precision.name} channels_last, fused Adam; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {kernel_status()}")
    x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    builds = {
        "torch order, nn.Flatten": (False, False, False),
        "layout-keeping flatten only": (False, True, False),
        "pool-first only": (True, False, False),
        "pool-first + flatten": (True, True, False),
        "+ C max-pool (cnnlab's default)": (True, True, True),
    }
    steps, rates = {}, {}
    for label, (pool_first, keep_layout, kernel) in builds.items():
        model = build(args.model, pool_first, keep_layout, kernel)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

        def step(model=model, opt=opt):
            with precision.autocast():
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(5):  # oneDNN builds its kernels on the first calls
            step()
        steps[label], rates[label] = step, []
    for _ in range(args.rounds):
        for label, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(30):
                step()
            rates[label].append(30 * 128 / (time.perf_counter() - t0))
    base = None
    print(f"| {'build':<32} | images/s | ratio | blocks' range |")
    print(f"|{'-' * 34}|---------:|------:|---|")
    for label, r in rates.items():
        r.sort()
        median = r[len(r) // 2]
        base = base or median
        print(f"| {label:<32} | {median:>8,.0f} | {median / base:5.2f} | {r[0]:,.0f}-{r[-1]:,.0f} |")


if __name__ == "__main__":
    main()
