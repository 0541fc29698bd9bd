"""Three exact levers of a training step, side by side in one run: ReLU -> max-pool run pool-first, a
flatten whose gradient keeps the channels_last layout, and the C 2x2 max-pool (+ ReLU) kernel; `cnnlab.fuse`
pulls all three (cnnlab.layers.fusion, cnnlab.layers.flatten, cnnlab.layers.maxpool2x2).

    python benchmarks/step_levers.py [--model simple_cnn] [--rounds 8]

The same model, weights, batch (128 random 1x28x28 images) and step (bf16 autocast where the CPU has it,
channels_last, fused Adam) in five builds: `create_model` as it is (torch's order and flatten), the first
two levers alone and together (fused, then the fused pool swapped for `MaxPool2d -> ReLU` in PyTorch's
operators), and `cnnlab.fuse` itself (what the Trainer trains). The builds take turns in blocks of 30
steps; each row reports its median block. The levers leave the values as they are (tests/test_fusion.py,
tests/test_layers.py and tests/test_layers_maxpool2x2.py check bit for bit).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.layers import FlattenKeepLayout, ReLUMaxPool2x2, fuse
from cnnlab.layers._native import status as kernel_status
from cnnlab.models import create_model
from cnnlab.runtime import tune_allocator
from cnnlab.training.precision import resolve_precision


def _swap(model: nn.Module, kind: type, make) -> None:
    for parent in list(model.modules()):
        for key, child in parent.named_children():
            if type(child) is kind:
                setattr(parent, key, make(child))


def build(name: str, pool_first: bool, keep_layout: bool, kernel: bool) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name).to(memory_format=torch.channels_last)
    if pool_first or kernel:
        model = fuse(model)  # Identity -> ReLUMaxPool2x2, FlattenKeepLayout
        if not kernel:  # pool-first in PyTorch's own operators
            _swap(model, ReLUMaxPool2x2, lambda m: nn.Sequential(nn.MaxPool2d(2, 2), nn.ReLU()))
        if not keep_layout:
            _swap(model, FlattenKeepLayout, lambda m: nn.Flatten(m.start_dim, m.end_dim))
    elif keep_layout:
        _swap(model, nn.Flatten, lambda m: FlattenKeepLayout(m.start_dim, m.end_dim))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="simple_cnn", help="a zoo model taking 1x28x28 images (default simple_cnn)")
    ap.add_argument("--rounds", type=int, default=8, help="blocks of 30 steps per build (default 8)")
    args = ap.parse_args()
    tune_allocator()
    precision = resolve_precision("auto", "cpu")
    fuse(create_model(args.model))  # builds and loads the C kernel now (once), not inside the timed blocks
    print(f"{args.model}, batch 128, {precision.name} channels_last, fused Adam; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {kernel_status()}")
    x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    builds = {
        "torch order, nn.Flatten": (False, False, False),
        "layout-keeping flatten only": (False, True, False),
        "pool-first only": (True, False, False),
        "pool-first + flatten": (True, True, False),
        "cnnlab.fuse (+ C max-pool, default)": (True, True, True),
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
    print(f"| {'build':<36} | images/s | ratio | blocks' range |")
    print(f"|{'-' * 38}|---------:|------:|---|")
    for label, r in rates.items():
        r.sort()
        median = r[len(r) // 2]
        base = base or median
        print(f"| {label:<36} | {median:>8,.0f} | {median / base:5.2f} | {r[0]:,.0f}-{r[-1]:,.0f} |")


if __name__ == "__main__":
    main()
