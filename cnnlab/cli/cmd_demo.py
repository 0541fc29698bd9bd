"""`cnnlab demo`: the main job for a newcomer. Until training lands: the summaries of the lecture's
typical CNN and of ResNet-50."""

from __future__ import annotations

import argparse

ORDER = 0


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="show what cnnlab does (summaries of the lecture's CNN and ResNet-50)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cnnlab.inspect import summary  # noqa: PLC0415 - keep `cnnlab --help` fast
    from cnnlab.models import resolve_model  # noqa: PLC0415

    for text, size in (("conv3x3-32 maxpool2 conv3x3-64 maxpool2 fc10", (1, 28, 28)), ("resnet50", (3, 224, 224))):
        model, size = resolve_model(text, input_size=size)
        print(f"$ cnnlab summary \"{text}\" --input {'x'.join(map(str, size))}")
        print(summary(model, size))
        print()
    return 0
