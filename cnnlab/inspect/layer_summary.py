"""`summary(model, input_size)`: a Keras-like table of any `nn.Module`, with receptive fields and MACs.

One forward pass of a single image under a `Tracer` (see tracer.py). Rows are the leaf modules in call
order; a module called twice (torchvision's Bottleneck reuses its ReLU) has a row per call and its
parameters counted on the first. Convolutions or products called directly in a container's `forward`
get a row of their own, so the rows' MACs add up to the total. On the meta device nothing is computed:
the shapes alone give every number, which is how `cnnlab models` lists the whole zoo in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnnlab.errors import CnnlabError, did_you_mean
from cnnlab.inspect.tracer import Field, Tracer
from cnnlab.inspect.zoo_table import human
from cnnlab.models import is_model_name, list_models, model_info, resolve_model

if TYPE_CHECKING:  # for annotations
    import torch
    from torch import nn


def fmt_number(v: float) -> int | float:
    """An int when integral (the usual case), else rounded to 3 decimals."""
    return int(round(v)) if abs(v - round(v)) < 1e-9 else round(v, 3)


@dataclass
class LayerRow:
    """One call of a leaf module. `output_shape` has no batch dimension; MACs are per image."""

    name: str  # qualified module name, e.g. "layer4.1.conv2"
    kind: str  # class name, e.g. "Conv2d"
    output_shape: tuple[int, ...]
    params: int
    trainable_params: int
    macs: int
    field: Field | None  # geometry of the output in input pixels; None if it does not depend on the input

    @property
    def receptive_field(self) -> list | None:
        return [fmt_number(v) for v in self.field.rf] if self.field else None

    @property
    def jump(self) -> list | None:
        return [fmt_number(v) for v in self.field.jump] if self.field else None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "output_shape": list(self.output_shape),
            "params": self.params,
            "trainable_params": self.trainable_params,
            "macs": self.macs,
            "receptive_field": self.receptive_field,
            "jump": self.jump,
        }


@dataclass
class Summary:
    """What `summary()` measured; `print()` it for the table, `.to_dict()` for JSON."""

    input_size: tuple[int, int, int]  # (C, H, W)
    layers: list[LayerRow]
    total_params: int
    trainable_params: int
    total_macs: int  # per image, convolutions and matrix products only (torchvision's GFLOPS)
    output_field: Field | None  # geometry of the model's (first) output
    model_name: str = ""

    def to_dict(self) -> dict:
        return {
            "input_size": list(self.input_size),
            "layers": [row.to_dict() for row in self.layers],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "total_macs": self.total_macs,
        }

    def __str__(self) -> str:
        return format_table(self)


# ----------------------------------------------------------------------------------------------------
# Formatting

def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape) or "scalar"  # (C, H, W) as CxHxW: PyTorch's order, as --input takes it


def _pair(v: list | None) -> str:
    if v is None:
        return "-"
    return str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"


def format_table(s: Summary) -> str:
    head = ("Layer", "Kind", "Output shape", "Params", "MACs", "RF", "Jump", "")
    c, h, w = s.input_size
    rows = [("input", "", f"{c}x{h}x{w}", "", "", "1", "1", "")]
    for r in s.layers:
        mark = "" if r.trainable_params == r.params else ("frozen" if r.trainable_params == 0 else "part frozen")
        rows.append((
            r.name, r.kind, _shape(r.output_shape), f"{r.params:,}" if r.params else "0",
            human(r.macs) if r.macs else "0", _pair(r.receptive_field), _pair(r.jump), mark,
        ))
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]
    right = {3, 4, 5, 6}  # numbers right-aligned

    def line(row) -> str:
        cells = [cell.rjust(wd) if i in right else cell.ljust(wd) for i, (cell, wd) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    rule = "=" * len(line(head))
    out = []
    if s.model_name:
        out.append(f'Model: "{s.model_name}"')
    out += [rule, line(head), rule, *(line(r) for r in rows), rule]
    frozen = s.total_params - s.trainable_params
    out.append(f"Total params: {s.total_params:,}")
    out.append(f"Trainable params: {s.trainable_params:,}")
    out.append(f"Non-trainable params: {frozen:,}")
    short = f" ({human(s.total_macs)})" if s.total_macs >= 1000 else ""
    out.append(f"Total MACs: {s.total_macs:,}{short} per {c}x{h}x{w} image")
    if s.output_field is not None:
        rf = [fmt_number(v) for v in s.output_field.rf]
        out.append(f"Receptive field of the output: {_pair(rf)} input pixels")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------
# Tracing

def _check_input_size(input_size) -> tuple[int, int, int]:
    try:
        size = tuple(int(v) for v in input_size)
        ok = len(size) == 3 and all(v >= 1 for v in size) and all(int(v) == v for v in input_size)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CnnlabError(f"input_size must be (C, H, W) with positive integers, e.g. (3, 224, 224); got {input_size!r}")
    return size  # type: ignore[return-value]


def _device_of(model: nn.Module) -> torch.device:
    import torch  # noqa: PLC0415

    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _dtype_of(model: nn.Module) -> torch.dtype:
    import torch  # noqa: PLC0415

    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _first_tensor(obj):
    import torch  # noqa: PLC0415

    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        return _first_tensor(list(obj.values()))
    if hasattr(obj, "logits"):  # torchvision's GoogLeNetOutputs and similar named tuples
        return _first_tensor(obj.logits)
    return None


def trace(model: nn.Module, input_size: tuple[int, int, int], model_name: str = "") -> Summary:
    """Run one `(1, C, H, W)` input through `model` on its own device and measure every leaf call.

    The model is left as it was: modes restored, no gradients, no hooks, nothing stored on it.
    """
    import torch  # noqa: PLC0415

    size = _check_input_size(input_size)
    names = {m: n for n, m in model.named_modules()}
    leaves = {m for m in names if not any(True for _ in m.children())}
    rows: list[LayerRow] = []
    stack: list[list] = []  # [module, macs] for each module whose forward is running
    counted: set[int] = set()  # ids of parameters already attributed to a row

    def params_of(module: nn.Module) -> tuple[int, int]:
        total = trainable = 0
        for p in module.parameters():
            if id(p) not in counted:
                counted.add(id(p))
                total += p.numel()
                trainable += p.numel() if p.requires_grad else 0
        return total, trainable

    def add_row(name: str, kind: str, out, macs: int, module: nn.Module | None) -> None:
        t = _first_tensor(out)
        shape = tuple(t.shape[1:]) if t is not None and t.ndim >= 1 else ()
        total, trainable = params_of(module) if module is not None else (0, 0)
        rows.append(LayerRow(name, kind, shape, total, trainable, macs, tracer.field(t)))

    def on_op(func, macs: int, out) -> None:
        if not stack:
            return
        module = stack[-1][0]
        if module in leaves:
            stack[-1][1] += macs
        else:  # a conv or product written in a container's forward: a row of its own
            op = getattr(func, "__name__", str(func))
            add_row(f"{names[module]}.{op}" if names[module] else op, op, out, macs, None)

    def pre_hook(module, _inputs):
        stack.append([module, 0])

    def post_hook(module, _inputs, output):
        if not stack or stack[-1][0] is not module:  # a forward that raised left the stack unbalanced
            return
        _, macs = stack.pop()
        if module in leaves:
            add_row(names[module] or type(module).__name__, type(module).__name__, output, macs, module)

    tracer = Tracer(on_op=on_op)
    modes = {m: m.training for m in names}
    handles = []
    try:
        for m in names:
            handles.append(m.register_forward_pre_hook(pre_hook))
            handles.append(m.register_forward_hook(post_hook))
        model.eval()  # no BatchNorm statistics updated, no dropout
        x = torch.zeros(1, *size, device=_device_of(model), dtype=_dtype_of(model))
        tracer.mark(x)
        with torch.no_grad(), tracer:
            out = model(x)
    except (RuntimeError, ValueError, IndexError) as e:
        if isinstance(e, CnnlabError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        c, h, w = size
        raise CnnlabError(f"the model does not accept a {c}x{h}x{w} input: {first}") from e
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    params = list({id(p): p for p in model.parameters()}.values())
    return Summary(
        input_size=size,
        layers=rows,
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_macs=tracer.total_macs,
        output_field=tracer.field(_first_tensor(out)),
        model_name=model_name,
    )


def summary(
    model: nn.Module | str,
    input_size: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
) -> Summary:
    """Layer table, parameters, MACs and receptive fields of a model for one `(C, H, W)` image.

    Args:
        model: any `nn.Module`, a registered model name ("resnet50") or a spec in the lecture's
            notation ("conv3x3-32 maxpool2 fc10").
        input_size: `(C, H, W)`; defaults to a registered model's own size (required for a module).
        num_classes: classifier size when `model` is a name or a spec.
        device: where a name or spec is built; default "meta" (shapes only, no memory, no compute).
            A module is traced where its parameters live.

    Returns:
        A `Summary`: `print()` it for the table, `.to_dict()` for plain data.
    """
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    if isinstance(model, str):
        if input_size is not None:
            _check_input_size(input_size)
        name = model.strip()
        try:
            with torch.device(device or "meta"):
                built, size = resolve_model(name, input_size=input_size, num_classes=num_classes)
            return trace(built, size, model_name=name)
        except CnnlabError:
            hint = did_you_mean(name, list_models())
            if " " not in name and not is_model_name(name) and hint:  # a misspelt name, not a bad spec
                raise CnnlabError(f"unknown model '{name}'{hint}; `cnnlab models` lists them all") from None
            raise
        except (NotImplementedError, RuntimeError, OverflowError) as e:
            if device not in (None, "meta"):
                raise
            # Never a real build instead: on the meta device a size fails only where it cannot be represented.
            first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise CnnlabError(f"model '{name[:80]}' cannot be built even on the meta device (shapes only): {first}; "
                              "choose fewer channels, units or a smaller input") from None
    if not isinstance(model, nn.Module):
        raise CnnlabError(f"summary() needs an nn.Module, a model name or a spec; got {type(model).__name__}")
    if input_size is None:
        raise CnnlabError("summary() of a module needs input_size=(C, H, W), e.g. (3, 224, 224)")
    return trace(model, input_size, model_name=type(model).__name__)


# ----------------------------------------------------------------------------------------------------
# The zoo at a glance

def model_stats(pattern: str = "*") -> list[dict]:
    """Parameters and MACs of every registered model matching `pattern`, at its default input.

    Models are built and traced on the meta device, so the whole zoo takes seconds.
    Returns one dict per model: name, family, params, macs, input_size, num_classes, paper.
    """
    names = list_models(pattern)
    if not names:
        raise CnnlabError(
            f"no registered model matches '{pattern}'{did_you_mean(pattern, list_models())}; "
            "`cnnlab models` lists them all"
        )
    stats = []
    for name in names:
        info = model_info(name)
        s = summary(name)
        stats.append({
            "name": name,
            "family": info.family,
            "params": s.total_params,
            "macs": s.total_macs,
            "input_size": list(info.input_size),
            "num_classes": info.num_classes,
            "paper": info.paper,
        })
    return stats
