"""The C 2x2 max-pool (cnnlab.layers.maxpool2x2, the operator torch.ops.cnnlab.max_pool2x2) against PyTorch's
max_pool2d and relu, bit for bit, on inputs full of ties, signed zeros, infinities and NaNs; in fused models;
its fallbacks and its build cache."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.layers import _native, fuse
from cnnlab.layers import maxpool2x2 as mp
from cnnlab.models import create_model
from cnnlab.models.spec import build_spec

needs_kernels = pytest.mark.skipif(_native.library() is None, reason=_native.status())
SIMD = _native.library() is not None and bool(_native.library().cnnlab_maxpool2x2_simd())
AVX512 = _native.library() is not None and _native.simd_level() == 2
needs_simd = pytest.mark.skipif(not AVX512, reason="bf16 models use the kernel only where its AVX-512 loops run")
needs_avx2_only = pytest.mark.skipif(not (SIMD and not AVX512), reason="a CPU with AVX2 but no AVX-512")
BITS = {torch.bfloat16: torch.int16, torch.float32: torch.int32}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (so +0.0 != -0.0), except that any NaN equals any NaN (payloads differ)."""
    nan = a.isnan()
    if not torch.equal(nan, b.isnan()):
        return False
    zero = torch.zeros((), dtype=a.dtype)
    a, b = torch.where(nan, zero, a).contiguous(), torch.where(nan, zero, b).contiguous()
    return torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


def _hard_input(n, c, h, w, dtype, seed=0) -> torch.Tensor:
    """(N, C, H, W) channels_last: small integers (many tied maxima), -0.0, +-inf and NaNs of both signs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (n, h, w, c), generator=g).to(dtype)
    flat = x.view(-1)
    flat[::7] = -0.0
    flat[::29] = float("nan")
    flat[::31] = -float("inf")
    flat[::37] = -float("nan")
    flat[::41] = float("inf")
    return x.permute(0, 3, 1, 2)


@pytest.fixture(params=["simd", "portable"])
def kernels(request, monkeypatch):
    if request.param == "simd" and not SIMD:
        pytest.skip("no AVX-512 or AVX2 on this CPU: the portable loops are the only ones")
    monkeypatch.setattr(mp, "_FORCE_PORTABLE", request.param == "portable")
    return request.param


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("shape", [(4, 32, 8, 8), (3, 64, 7, 9), (2, 5, 6, 6), (5, 48, 5, 4), (2, 16, 2, 2), (1, 96, 3, 3), (3, 80, 7, 6)])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "pool"])
def test_values_and_gradients_equal_pytorchs(kernels, dtype, shape, relu):
    x = _hard_input(*shape, dtype)
    lanes = {2: {torch.bfloat16: 16, torch.float32: 16}, 1: {torch.float32: 8}}.get(_native.simd_level(), {}).get(dtype)
    assert mp.kernel_applies(x) == bool(lanes and shape[1] % lanes == 0)
    g = _hard_input(shape[0], shape[1], shape[2] // 2, shape[3] // 2, dtype, seed=1).nan_to_num()
    xa = x.detach().clone().requires_grad_()
    ya = torch.relu(F.max_pool2d(xa, 2)) if relu else F.max_pool2d(xa, 2)
    ya.backward(g)
    xb = x.detach().clone().requires_grad_()
    yb = mp.max_pool2x2(xb, relu=relu)
    yb.backward(g)
    assert yb.shape == ya.shape and yb.is_contiguous(memory_format=torch.channels_last)
    assert _same(yb, ya)
    assert _same(xb.grad, xa.grad)
    if relu:  # and the printed order, relu then pool, where the mask is applied before the max
        xc = x.detach().clone().requires_grad_()
        yc = F.max_pool2d(torch.relu(xc), 2)
        yc.backward(g)
        assert torch.equal(yb.nan_to_num(), yc.nan_to_num())
        assert torch.equal(xb.grad, xc.grad)


@needs_kernels
def test_the_comparison_can_fail(kernels):
    """A tie resolved the other way, or ReLU's mask dropped, is caught by the checks above."""
    x = _hard_input(4, 32, 8, 8, torch.bfloat16)
    assert not _same(mp.max_pool2x2(x, relu=False), torch.relu(F.max_pool2d(x, 2)))  # -0.0 and negatives
    xa, xb = x.detach().clone().requires_grad_(), x.flip(2).detach().clone().requires_grad_()
    mp.max_pool2x2(xa).sum().backward()
    F.max_pool2d(xb, 2).sum().backward()
    assert not torch.equal(xa.grad, xb.grad.flip(2))  # last-maximum ties would route differently


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_double_backward_equals_pytorchs(dtype):
    """A gradient penalty differentiates the backward pass: the same gradients as PyTorch's operators."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 32, 3, padding=1).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randint(-2, 3, p.shape) / 4)
    x = torch.randint(-2, 3, (4, 3, 8, 8)).float().contiguous(memory_format=torch.channels_last)
    results = []
    for native in (True, False):
        conv.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_()
        with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
            h = conv(xx)
            y = mp.max_pool2x2(h, relu=True) if native else torch.relu(F.max_pool2d(h, 2))
        (gx,) = torch.autograd.grad((y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), xx, create_graph=True)
        (gx**2).sum().backward()
        # None and zeros mean the same to autograd; PyTorch materialises the bias's zero gradient
        results.append([gx.detach()] + [torch.zeros_like(p) if p.grad is None else p.grad for p in conv.parameters()])
    assert results[1][1].abs().sum() > 0
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@needs_simd
def test_the_kernel_runs_in_a_training_step_with_the_same_gradients():
    """Fused simple_cnn in bf16 channels_last (cnnlab's CPU default) runs the kernel for both pools, and its
    output and every gradient equal PyTorch running the unfused model's modules in order."""
    torch.manual_seed(0)
    plain = create_model("simple_cnn").to(memory_format=torch.channels_last)
    with torch.no_grad():
        for p in plain.parameters():
            p.copy_(torch.randint(-2, 3, p.shape) / 4)
    fused = fuse(plain)
    x = torch.randint(-2, 3, (8, 1, 28, 28)).float().contiguous(memory_format=torch.channels_last)

    def step(model):
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.profiler.profile() as prof:
            out = model(x)
            (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), [p.grad for p in model.parameters()], [e.name for e in prof.events()]

    out, grads, names = step(fused)
    assert names.count("cnnlab::max_pool2x2") == 2 and names.count("cnnlab::max_pool2x2_backward") == 2
    assert not any("max_pool2d" in n for n in names)
    ref_out, ref_grads, ref_names = step(plain)
    assert not any(n.startswith("cnnlab::") for n in ref_names)  # create_model gives plain PyTorch
    assert torch.equal(out, ref_out)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.equal(g, r)


@pytest.mark.skipif(not SIMD, reason="no AVX-512 or AVX2 loops on this CPU")
def test_fp32_training_step_runs_the_kernel_with_the_same_gradients():
    """fp32 channels_last (cnnlab's default where bf16 is not native, e.g. AVX2 CPUs): both pools of the fused
    simple_cnn run the kernel, and the output and every gradient equal the unfused model's in PyTorch."""
    torch.manual_seed(0)
    plain = create_model("simple_cnn").to(memory_format=torch.channels_last)
    fused = fuse(plain)
    x = torch.randn(8, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    results = []
    for model in (fused, plain):
        model.zero_grad(set_to_none=True)
        with torch.profiler.profile() as prof:
            out = model(x)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), [p.grad for p in model.parameters()], [e.name for e in prof.events()]))
    assert results[0][2].count("cnnlab::max_pool2x2") == 2 and results[0][2].count("cnnlab::max_pool2x2_backward") == 2
    assert not any(n.startswith("cnnlab::") for n in results[1][2])
    assert torch.equal(results[0][0], results[1][0])
    for g, r in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(g, r)


@needs_avx2_only
def test_on_avx2_only_bf16_and_odd_channel_counts_run_pytorchs_pool():
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    assert mp.kernel_applies(x) and mp.simd_lanes(torch.float32) == 8
    assert not mp.kernel_applies(x.bfloat16())  # bf16 is emulated on such CPUs: cnnlab trains in fp32 there
    assert not mp.kernel_applies(torch.randn(2, 12, 4, 4).contiguous(memory_format=torch.channels_last))


@needs_simd
def test_spec_pool_before_batch_norm_uses_the_kernel_without_relu():
    """`conv/pool2/bn` (the fashion-mnist-94 recipe's layer) pools alone, then normalises: fused, the pool runs
    on the kernel (MaxPool2x2), with the same gradients."""
    torch.manual_seed(0)
    plain = build_spec("conv3x3-32/pool2/bn conv3x3-64/pool2/bn fc10", input_size=(1, 16, 16))
    plain = plain.to(memory_format=torch.channels_last)
    fused = fuse(plain)
    assert [type(m).__name__ for m in fused.features].count("MaxPool2x2") == 2
    x = torch.randint(-2, 3, (4, 1, 16, 16)).float().contiguous(memory_format=torch.channels_last)
    results = []
    for model in (fused, plain):
        with torch.profiler.profile() as prof:
            model(x).sum().backward()
        results.append(([p.grad for p in model.parameters()], [e.name for e in prof.events()]))
    assert results[0][1].count("cnnlab::max_pool2x2") == 2 and results[1][1].count("cnnlab::max_pool2x2") == 0
    for g, r in zip(results[0][0], results[1][0], strict=True):
        assert torch.equal(g, r)


@needs_simd
def test_what_does_not_apply_runs_pytorchs_pool():
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    assert mp.kernel_applies(x)
    assert not mp.kernel_applies(x.contiguous())  # NCHW
    assert not mp.kernel_applies(x.half())
    x24 = torch.randn(2, 24, 8, 8).contiguous(memory_format=torch.channels_last)
    assert not mp.kernel_applies(x24)  # 24 channels: the portable loops, slower than PyTorch
    assert not mp.kernel_applies(x[:, :, :1])
    with torch.device("meta"):
        assert not mp.kernel_applies(torch.empty(2, 32, 8, 8).contiguous(memory_format=torch.channels_last))
    for t in (x.contiguous(), x24):  # the modules then run PyTorch's operators, no cnnlab op
        with torch.profiler.profile() as prof:
            y = mp.ReLUMaxPool2x2()(t)
        assert not any(e.name.startswith("cnnlab::") for e in prof.events())
        assert torch.equal(y, F.max_pool2d(torch.relu(t), 2))
    with torch.inference_mode():  # no graph: the kernel still gives PyTorch's values
        assert torch.equal(mp.max_pool2x2(x, relu=True), torch.relu(F.max_pool2d(x, 2)))
        assert torch.equal(mp.ReLUMaxPool2x2()(x), torch.relu(F.max_pool2d(x, 2)))


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


_TRAIN_STEP = """
import torch
from cnnlab.layers import _native, fuse
from cnnlab.models import create_model
torch.manual_seed(0)
model = fuse(create_model("simple_cnn").to(memory_format=torch.channels_last))
x = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
with torch.autocast("cpu", dtype=torch.bfloat16):
    model(x).float().sum().backward()
print(_native.status())
print(float(sum(p.grad.double().abs().sum() for p in model.parameters())))
"""


def test_without_a_compiler_or_when_turned_off_pytorch_computes_the_same(tmp_path):
    """No C compiler, or CNNLAB_NATIVE=0: one line says why, and training gives the same gradients."""
    runs = {
        "no compiler": _python(_TRAIN_STEP, CC=str(tmp_path / "no-such-cc"), CNNLAB_NATIVE_CACHE=str(tmp_path / "a")),
        "off": _python(_TRAIN_STEP, CNNLAB_NATIVE="0"),
        "default": _python(_TRAIN_STEP, CNNLAB_NATIVE_CACHE=str(tmp_path / "b")),
    }
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.stderr)
    assert "C kernels off: no C compiler found" in runs["no compiler"].stdout
    assert "C kernels off: off (CNNLAB_NATIVE=0)" in runs["off"].stdout
    assert list((tmp_path / "a").glob("*")) == []
    grads = {name: run.stdout.splitlines()[-1] for name, run in runs.items()}
    assert grads["no compiler"] == grads["off"] == grads["default"]


_FORWARD_ONLY = """
import torch
from cnnlab.layers import _native
from cnnlab.layers.maxpool2x2 import ReLUMaxPool2x2
x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
ReLUMaxPool2x2()(x).sum()
print(_native.status())
"""


@needs_kernels
def test_the_library_is_built_once_into_the_cache_by_fuse_never_by_a_forward_pass(tmp_path):
    forward = _python(_FORWARD_ONLY, CNNLAB_NATIVE_CACHE=str(tmp_path))
    assert forward.returncode == 0, forward.stderr
    assert "not loaded" in forward.stdout and list(tmp_path.iterdir()) == []  # a forward pass builds nothing
    code = "import cnnlab; from cnnlab.layers import _native; cnnlab.fuse(cnnlab.create_model('simple_cnn')); print(_native.status())"
    first = _python(code, CNNLAB_NATIVE_CACHE=str(tmp_path))
    assert first.returncode == 0 and "C kernels on" in first.stdout, first.stderr
    assert first.stderr.count("compiling the C max-pool kernel") == 1 and len(first.stderr.splitlines()) == 1
    (built,) = tmp_path.glob("maxpool2x2-*.so")
    stamp = built.stat().st_mtime_ns
    second = _python(code, CNNLAB_NATIVE_CACHE=str(tmp_path))
    assert "C kernels on" in second.stdout and second.stderr == ""
    assert [p.name for p in tmp_path.iterdir()] == [built.name]  # no second build, no partial files
    assert built.stat().st_mtime_ns == stamp
    built.write_bytes(b"not a shared library")  # damaged: dropped and rebuilt, not fatal
    third = _python(code, CNNLAB_NATIVE_CACHE=str(tmp_path))
    assert "C kernels on" in third.stdout, third.stdout + third.stderr
