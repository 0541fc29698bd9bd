"""ReLU -> max-pool pairs run pool-first (cnnlab.models._pool_first): checked against PyTorch running the
same modules in their order, bit for bit, on inputs full of ties; hooks and tracing see the real order."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cnnlab.models import create_model
from cnnlab.models.spec import build_spec


class _OpOrder(TorchDispatchMode):
    """Records the aten ops a forward pass runs, in order."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _first(ops: list[str], word: str) -> int:
    return next(i for i, name in enumerate(ops) if word in name)


def _tied(model: torch.nn.Module) -> torch.nn.Module:
    """Weights on a coarse grid, so that (with integer inputs) sums are exact and windows hold many equal maxima."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-2, 3, p.shape) / 4)
    return model


def _run(model, x, reference: bool, autocast: bool):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(1)  # the same dropout masks
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), _OpOrder() as order:
        out = model.forward_head(model.features(x)) if reference else model(x)
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    return out.detach(), x.grad, grads, order.ops


CASES = [
    ("simple_cnn", lambda: create_model("simple_cnn"), (1, 28, 28)),
    ("overlapping, padded, ceil_mode pools", lambda: _ceil(build_spec("conv3x3-6/bn maxpool3/s2/p1 conv3x3-8 maxpool2 fc10", input_size=(1, 16, 16))), (1, 16, 16)),
    ("alexnet (inplace ReLU, 3x3/2 pools)", lambda: create_model("alexnet", num_classes=5), (3, 67, 67)),
]


def _ceil(model):
    model.features[3].ceil_mode = True  # the 3x3/2 pool: 16 -> 9 (not 8), the last window half outside the map
    return model


@pytest.mark.parametrize("name, build, size, autocast", [(*c, False) for c in CASES] + [(*c, True) for c in CASES[:2]],
                         ids=[f"{c[0]}-fp32" for c in CASES] + [f"{c[0]}-bf16" for c in CASES[:2]])
def test_pool_first_matches_the_module_order_bit_for_bit(name, build, size, autocast):
    model = _tied(build())
    if autocast:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randint(-2, 3, (3, *size)).float()
    ref_out, ref_xg, ref_grads, ref_ops = _run(model, x, reference=True, autocast=autocast)
    out, xg, grads, ops = _run(model, x, reference=False, autocast=autocast)
    assert _first(ref_ops, "relu") < _first(ref_ops, "max_pool2d")  # PyTorch's order
    assert _first(ops, "max_pool2d") < _first(ops, "relu")  # pooled first: the path under test ran
    assert (ref_out != 0).any() and (ref_out == 0).sum() < ref_out.numel()
    assert torch.equal(out, ref_out)
    assert torch.equal(xg, ref_xg)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.equal(g, r)


def test_hooks_and_tracing_see_the_modules_in_their_order():
    model = _tied(create_model("simple_cnn")).eval()
    x = torch.randint(-2, 3, (2, 1, 28, 28)).float()
    expected = model.forward_head(model.features(x))
    seen = {}
    handle = model.features[1].register_forward_hook(lambda m, i, o: seen.__setitem__("relu", o.detach().clone()))
    out = model(x)
    handle.remove()
    assert torch.equal(out, expected)
    assert torch.equal(seen["relu"], torch.relu(model.features[0](x)))  # the full 28x28 map, as printed
    assert seen["relu"].shape == (2, 32, 28, 28)
    graph = str(torch.jit.trace(model, x).inlined_graph)
    assert graph.index("aten::relu") < graph.index("aten::max_pool2d")  # exports keep the printed order
    fx_graph = torch.fx.symbolic_trace(model)  # what torchvision's feature extractors trace with
    targets = [str(n.target) for n in fx_graph.graph.nodes if n.op == "call_module"]
    assert targets.index("features.1") < targets.index("features.2")  # relu, then maxpool
    assert torch.equal(fx_graph(x), expected)
