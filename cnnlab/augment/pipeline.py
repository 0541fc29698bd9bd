"""Pipelines: a sequence of ops, built from Python or from a short string, printed back canonically.

The string form (the `--augment` option):

    PIPELINE := "" | "none" | ITEM ("," ITEM)*
    ITEM     := PRESET | OP (":" ARG)*
    ARG      := VALUE | KEY "=" VALUE      # a bare VALUE (first ARG only) is the op's main parameter
    VALUE    := NUMBER | LO "-" HI | WORD

    "flip,crop:4,scale:0.8-1.2,exposure:0.3,saturation:0.3"   # the lecture's five (= "lecture")
    "lecture,erase"                                             # a preset plus random erasing
    "crop:4:mode=zero,flip:p=1,erase:0.1-0.2:ratio=1-1:p=1"     # keys name the op's parameters

`str(pipeline)` gives the canonical string (presets expanded, every op with its main parameter and the
parameters that differ from their defaults), which parses back to an equal pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from cnnlab.augment._base import Params, Size, check_batch, format_number
from cnnlab.augment._gather import Gather, IndexMap, Resample, compose_maps
from cnnlab.augment.ops import OPS, Op
from cnnlab.errors import CnnlabError, did_you_mean

Step = Gather | Resample | tuple[Op, Params]  # one unit of planned work

PRESETS: dict[str, str] = {
    # The lecture's five: reflection, random crop, random scaling, exposure, saturation.
    "lecture": "flip,crop:4,scale:0.8-1.2,exposure:0.3,saturation:0.3",
    # The standard CIFAR-10 augmentation (He et al. 2016): flip + 4-pixel pad-and-crop.
    "cifar": "flip,crop:4",
    # Random erasing's recipe (Zhong et al. 2017) for CIFAR / Fashion-MNIST: flip, crop, erasing.
    "erasing": "flip,crop:4,erase",
    # Inception-style ImageNet training augmentation (Szegedy et al. 2015): resized crop + flip.
    "imagenet": "resized_crop,flip",
}


class Pipeline:
    """Ops applied in order to a float batch (N, C, H, W) in [0, 1]; each op draws per-sample
    parameters from the same generator, so one seed fixes the whole pipeline's randomness.

    How it runs (the result does not depend on it, up to float rounding): all parameters are drawn
    first, for the whole batch; runs of index-map ops (flips, crops, translations, nearest scaling) are
    composed into one gather, which a following bilinear zoom or resized crop absorbs, and an exposure
    right after either is folded into its last pass; uint8 input is gathered as uint8; the last op
    writes into the returned batch; on CPU the batch is processed in chunks of about `chunk_bytes` so
    that intermediate results stay in cache instead of costing a trip to memory (and page faults) per
    op: about 2x faster at 3x224x224 (measured on one core). Raising glibc malloc's thresholds
    (`cnnlab.runtime.tune_allocator()`, which the `cnnlab` command does at start; call it yourself in
    your own program) lets the chunks' buffers be reused instead of page-faulted in afresh: another
    1.4-1.6x at 3x224x224. benchmarks/augment.py measures it all."""

    chunk_bytes: int = 2 << 20  # CPU chunk size, bytes of float32 input (3 images of 3x224x224, 668 of 1x28x28)

    def __init__(self, ops: Sequence[Op] = ()):
        for op in ops:
            if not isinstance(op, Op):
                raise CnnlabError(f"Pipeline takes cnnlab.augment ops, got {type(op).__name__}; "
                                  f"use PerSample(transform) to wrap a torchvision transform")
        self.ops: tuple[Op, ...] = tuple(ops)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x: (N, C, H, W) float in [0, 1] -> (N, C, H', W'), same dtype and device; x is not modified.
        Also accepted: one image (C, H, W) -> (C, H', W'), and uint8 in [0, 255] -> float32 in [0, 1]
        (converted chunk by chunk, cheaper than converting the whole batch first)."""
        if isinstance(x, Tensor) and x.dim() == 3:  # one image, e.g. inside a Dataset's __getitem__
            return self(x[None], generator)[0]
        check_batch(x, allow_uint8=True)
        if not self.ops:
            return x.to(torch.float32).div_(255) if x.dtype == torch.uint8 else x
        shapes = [tuple(x.shape)]
        for op in self.ops:  # every size is checked before any work
            shapes.append((len(x), *op.output_size(shapes[-1][1:])))
        params = [op.sample(shape, generator, x.device) for op, shape in zip(self.ops, shapes[:-1], strict=True)]
        steps = self._plan(params, shapes)
        dtype = torch.float32 if x.dtype == torch.uint8 else x.dtype
        c, h, w = x.shape[1:]
        per_chunk = max(1, self.chunk_bytes // (4 * c * h * w))
        if x.device.type != "cpu" or len(x) <= per_chunk:
            return self._run(x, steps, slice(None))
        out = torch.empty(shapes[-1], dtype=dtype, device=x.device)
        for i in range(0, len(x), per_chunk):
            sl = slice(i, i + per_chunk)
            dst = out[sl]
            y = self._run(x[sl], steps, sl, dst)  # the last step writes into dst where it can
            if y is not dst:
                dst.copy_(y)
        return out

    def _plan(self, params: list[Params], shapes: list[tuple[int, ...]]) -> list[Step]:
        """The work for the whole batch: runs of index-map ops composed into one Gather, a pending map
        absorbed by a following Resample, a per-sample gain (exposure) folded into the Gather or
        Resample just before it, other ops kept with their parameters."""
        steps: list[Step] = []
        pending: IndexMap | None = None  # composed map of the index-map ops not yet applied
        pending_hw = shapes[0][2:]  # input size of the pending map
        for op, p, shape in zip(self.ops, params, shapes[:-1], strict=True):
            m = op.index_map(p, shape)
            if m is not None:
                if pending is None:
                    pending, pending_hw = m, shape[2:]
                else:
                    pending = compose_maps(pending, m)
                continue
            taps = op.taps(p, shape)
            if taps is not None:
                steps.append(Resample(*taps, pending_hw if pending is not None else shape[2:], pending))
                pending = None
                continue
            if pending is not None:
                steps.append(Gather(pending, pending_hw))
                pending = None
            gain = op.gain(p)
            if gain is not None and steps and isinstance(steps[-1], (Gather, Resample)):
                steps[-1].absorb_gain(gain)
                continue
            steps.append((op, p))
        if pending is not None:
            steps.append(Gather(pending, pending_hw))
        return steps

    @staticmethod
    def _run(x: Tensor, steps: list[Step], sl: slice, out: Tensor | None = None) -> Tensor:
        """Run the planned steps on x, the samples `sl` of the batch; the last one into `out` if given."""
        if x.dtype == torch.uint8 and not (steps and isinstance(steps[0], (Gather, Resample))):
            x = x.to(torch.float32).div_(255)  # gathers take uint8 themselves: fewer bytes to move
        for i, step in enumerate(steps):
            dst = out if i == len(steps) - 1 else None
            if isinstance(step, tuple):
                op, p = step
                x = op.apply(x, p if sl == slice(None) else {k: v[sl] for k, v in p.items()}, out=dst)
            else:
                x = step(x, sl, out=dst)
        return x

    def output_size(self, size: Size) -> Size:
        """(C, H, W) after the pipeline; raises CnnlabError if an op cannot take its input size."""
        size = tuple(size)  # type: ignore[assignment]
        for op in self.ops:
            size = op.output_size(size)
        return size

    def __str__(self) -> str:
        return ",".join(str(op) for op in self.ops) or "none"

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.ops == other.ops

    def __hash__(self) -> int:
        return hash(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)


def _op_list() -> str:
    return ", ".join([*OPS, *PRESETS])


def parse_pipeline(text: str) -> Pipeline:
    """Pipeline from its string form (see the module docstring); "" or "none" is the identity.
    Raises CnnlabError naming an unknown op or parameter and listing what exists."""
    if isinstance(text, Pipeline):
        return text
    if not isinstance(text, str):
        raise CnnlabError(f"augmentation pipeline must be a string like 'flip,crop:4', got {type(text).__name__}")
    text = text.strip()
    if text.lower() in ("", "none"):
        return Pipeline()
    ops: list[Op] = []
    for item in text.split(","):
        name, *args = [part.strip() for part in item.strip().split(":")]
        name = name.lower()
        if not name:
            raise CnnlabError(f"empty item in augmentation {text!r}; write ops separated by single commas")
        if name in PRESETS:
            if args:
                raise CnnlabError(f"preset {name!r} takes no parameters; write its ops instead: {PRESETS[name]}")
            ops.extend(parse_pipeline(PRESETS[name]).ops)
        elif name in OPS:
            ops.append(OPS[name].from_args(args))
        else:
            raise CnnlabError(f"unknown augmentation {name!r}{did_you_mean(name, [*OPS, *PRESETS])}; "
                              f"choose from {_op_list()}")
    return Pipeline(ops)


def describe_ops() -> str:
    """A table of the ops (name, parameters with defaults, one-line description) and the presets."""
    lines = ["ops (NAME[:MAIN][:KEY=VALUE...]; ranges are LO-HI):"]
    for name, cls in OPS.items():
        params = []
        for f in dataclasses.fields(cls):
            default = f.default
            shown = "-".join(map(format_number, default)) if isinstance(default, tuple) else (
                "none" if default is None else format_number(default) if isinstance(default, (int, float))
                else str(default))
            params.append(f"[{f.name}=]{shown}" if f.name == cls.main else f"{f.name}={shown}")
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {name:<13} {' '.join(params)}")
        lines.append(f"  {'':<13} {' '.join(doc.split())}")
    lines.append("presets:")
    lines.extend(f"  {name:<13} {ops}" for name, ops in PRESETS.items())
    return "\n".join(lines)
