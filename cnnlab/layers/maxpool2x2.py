"""2x2 stride-2 max-pools on cnnlab's C kernel, alone or with the ReLU before it: the modules `cnnlab.fuse`
puts into a model, and the PyTorch operators they call.

Modules (no state; what `print(model)` shows is what runs):
- `ReLUMaxPool2x2()`: `max_pool2d(relu(x), 2)`, computed as `relu(max_pool2d(x, 2))` (the same values and
  gradients, bit for bit: ReLU is non-decreasing and keeps positive values, so both orders pick the same
  first maximum and zero the same windows), so the ReLU, its backward pass and its saved mask touch a
  quarter of the positions. `cnnlab.fuse` puts it where a model has `ReLU -> MaxPool2d(2, 2)`.
- `MaxPool2x2()`: `nn.MaxPool2d(2, 2)` (same repr, same values) on the kernel where it applies.

Where the C kernel applies (`kernel_applies(x)`: a CPU 4-D channels_last map, the kernel loaded, and its
SIMD loops usable for the dtype: with AVX-512, bf16 or fp32 with channels a multiple of 16; with AVX2
only, fp32 with a multiple of 8), both call the operator `torch.ops.cnnlab.max_pool2x2`, elsewhere
PyTorch's `max_pool2d` and `relu`, which compute the same values. The decision reads only the tensor's
device, dtype, shape and layout, so torch.compile and torch.export see an ordinary branch;
`torch.fx.symbolic_trace` records the module's function (`relu_max_pool2x2`, registered with
`torch.fx.wrap`) as one call.

The operators are registered with `torch.library.custom_op`, with fake (meta) implementations, autograd
formulas and vmap rules, so tracing, torch.compile, torch.export and torch.func see them as ordinary ops:
- `cnnlab::max_pool2x2(x, relu) -> (y, code)`: y `(N, C, H//2, W//2)` channels_last, and one code per output
  element of the element's own width (int16 for bf16, int32 for fp32): the window position of the
  maximum, and the top bit where the gradient passes (ReLU's mask folded in).
- `cnnlab::max_pool2x2_backward(grad, code, height, width) -> grad_x`, itself differentiable in `grad`
  (double backward, e.g. a gradient penalty).
The modules apply the same autograd formulas through `torch.autograd.Function`s (with setup_context and
generated vmap rules) wrapped around the operators, because the Function that `register_autograd` generates
does not yet work under torch.func.grad (pytorch/pytorch#168393, #179652); the operators keep their own
registration for code that calls them directly.
PyTorch saves an int64 index per output element and runs its backward pass as a zero-fill plus a scatter;
the C kernel (`_native/maxpool2x2.c`) writes each input gradient once from the narrow code. Measured speeds
are in docs/performance.md and `benchmarks/step_levers.py`.

The operators never build anything: the C library is built (once, into the user cache) and loaded by
`load_kernel()`, which `cnnlab.fuse` and `cnnlab native build` call. Without it the modules run PyTorch's
operators; calling `torch.ops.cnnlab.max_pool2x2` directly without it raises an error that says so.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.layers import _native

__all__ = ["MaxPool2x2", "ReLUMaxPool2x2", "kernel_applies", "load_kernel", "max_pool2x2", "relu_max_pool2x2"]

_DTYPE_CODE = {torch.bfloat16: (0, torch.int16), torch.float32: (1, torch.int32)}
# the channel multiple the SIMD loops take, by `_native.simd_level()`: AVX-512 (bf16: 32 channels per vector and
# a masked last chunk of 16; fp32: 16 per vector), AVX2 (fp32 only, 8 per vector)
_LANES_BY_LEVEL = {2: {torch.bfloat16: 16, torch.float32: 16}, 1: {torch.float32: 8}, 0: {}}


def simd_lanes(dtype: torch.dtype) -> int | None:
    """The channel multiple the kernel's SIMD loops take on this CPU for `dtype`; None where none run."""
    return _LANES_BY_LEVEL[_native.simd_level()].get(dtype)
_FORCE_PORTABLE = False  # tests: run the portable C loops where the AVX-512 ones would run


def load_kernel() -> bool:
    """Build (once, saying so in one line) and load the C kernels; whether they are usable."""
    return _native.library() is not None


def kernel_applies(x: Tensor) -> bool:
    """Whether the 2x2 pools run `x` (N, C, H, W) on the C kernel: see the module's doc. Reads metadata only.
    The portable C loops (other channel counts) compute the same values but measured slower than
    PyTorch's kernels, so they are not chosen here."""
    lanes = _LANES_BY_LEVEL[_native.simd_level()].get(x.dtype)
    if not (lanes and x.device.type == "cpu" and x.dim() == 4):
        return False
    n, c, h, w = x.shape
    s = x.stride()  # dense (N, H, W, C) in memory; strides, not is_contiguous(memory_format=), also answer under vmap
    return (h >= 2 and w >= 2 and c % lanes == 0 and s[1] == 1 and s[3] == c and s[2] == w * c
            and (n == 1 or s[0] == h * w * c))


# ---------------------------------------------------------------------------------------- operators


def _lib():
    lib = _native.loaded()
    if lib is None:
        raise RuntimeError("cnnlab::max_pool2x2 needs cnnlab's C kernels, which are not loaded: call "
                           "cnnlab.fuse(model) or cnnlab.layers.maxpool2x2.load_kernel() first "
                           f"({_native.status()})")
    return lib


def _check(x: Tensor) -> None:
    if x.device.type != "cpu" or x.dtype not in _DTYPE_CODE or x.dim() != 4:
        raise ValueError(f"cnnlab::max_pool2x2 takes a 4-D bf16 or fp32 CPU tensor, got {x.dim()}-D {x.dtype} "
                         f"on {x.device}")


def _pooled(x: Tensor, dtype: torch.dtype) -> Tensor:
    n, c, h, w = x.shape
    return torch.empty((n, c, h // 2, w // 2), dtype=dtype, device=x.device, memory_format=torch.channels_last)


@torch.library.custom_op("cnnlab::max_pool2x2", mutates_args=())
def _forward_op(x: Tensor, relu: bool) -> tuple[Tensor, Tensor]:
    _check(x)
    lib = _lib()
    x = x.contiguous(memory_format=torch.channels_last)  # (N, H, W, C) in memory
    n, c, h, w = x.shape
    kind, code_dtype = _DTYPE_CODE[x.dtype]
    y, code = _pooled(x, x.dtype), _pooled(x, code_dtype)
    lib.cnnlab_maxpool2x2_forward(kind, x.data_ptr(), y.data_ptr(), code.data_ptr(), 0, n, h, w, c, int(relu),
                                  int(_FORCE_PORTABLE))
    return y, code


@_forward_op.register_fake
def _(x: Tensor, relu: bool) -> tuple[Tensor, Tensor]:
    _check(x)
    return _pooled(x, x.dtype), _pooled(x, _DTYPE_CODE[x.dtype][1])


@torch.library.custom_op("cnnlab::max_pool2x2_backward", mutates_args=())
def _backward_op(grad: Tensor, code: Tensor, height: int, width: int) -> Tensor:
    """The input gradient (N, C, height, width) from the output gradient (N, C, height//2, width//2)."""
    lib = _lib()
    g = grad.contiguous(memory_format=torch.channels_last)
    code = code.contiguous(memory_format=torch.channels_last)
    n, c = code.shape[:2]
    gx = torch.empty((n, c, height, width), dtype=g.dtype, memory_format=torch.channels_last)
    lib.cnnlab_maxpool2x2_backward(_DTYPE_CODE[g.dtype][0], g.data_ptr(), code.data_ptr(), gx.data_ptr(), 0, n,
                                   height, width, c, int(_FORCE_PORTABLE))
    if height % 2:  # floor mode: the unpooled last row/column gets no gradient
        gx[:, :, -1].zero_()
    if width % 2:
        gx[:, :, :, -1].zero_()
    return gx


@_backward_op.register_fake
def _(grad: Tensor, code: Tensor, height: int, width: int) -> Tensor:
    n, c = code.shape[:2]
    return torch.empty((n, c, height, width), dtype=grad.dtype, device=grad.device, memory_format=torch.channels_last)


def _gather(h: Tensor, code: Tensor) -> Tensor:
    """`h` (N, C, H, W) read at each window's chosen position, zero where the gradient does not pass:
    the derivative of the backward pass with respect to the output gradient (double backward)."""
    n, c, ho, wo = code.shape
    windows = h[:, :, : 2 * ho, : 2 * wo].reshape(n, c, ho, 2, wo, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, ho, wo, 4)
    picked = windows.gather(-1, (code & 3).long().unsqueeze(-1)).squeeze(-1)
    return torch.where(code < 0, picked, 0)  # the top bit (the sign of the int16/int32 code) marks "passes"


def _forward_setup(ctx, inputs, output) -> None:
    x, _ = inputs
    _, code = output
    ctx.mark_non_differentiable(code)
    ctx.save_for_backward(code)
    ctx.size = (x.shape[2], x.shape[3])


def _forward_grad(ctx, grad: Tensor, _grad_code):
    (code,) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True (and torch.func): keep the backward pass differentiable
        return _BackwardFunction.apply(grad, code, *ctx.size), None
    return torch.ops.cnnlab.max_pool2x2_backward(grad, code, *ctx.size), None


def _backward_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[1])


def _backward_grad(ctx, h: Tensor):
    (code,) = ctx.saved_tensors
    return _gather(h, code), None, None, None


_forward_op.register_autograd(_forward_grad, setup_context=_forward_setup)
_backward_op.register_autograd(_backward_grad, setup_context=_backward_setup)


# The same formulas as autograd.Functions, which the modules call. PyTorch's register_autograd does not yet
# work under torch.func transforms (the Function it generates has no setup_context: pytorch/pytorch#168393,
# #179652); these do, with vmap rules generated from the operators' own (register_vmap below).
def _signed(fn):
    """`fn` with its signature computed once: Function.apply binds arguments to it on every call (for
    Functions with a setup_context), and inspect.signature honours a stored `__signature__`."""
    fn.__signature__ = inspect.signature(fn)
    return staticmethod(fn)


class _ForwardFunction(torch.autograd.Function):
    generate_vmap_rule = True
    setup_context = staticmethod(_forward_setup)
    backward = staticmethod(_forward_grad)

    @_signed
    def forward(x: Tensor, relu: bool) -> tuple[Tensor, Tensor]:
        return torch.ops.cnnlab.max_pool2x2(x, relu)


class _BackwardFunction(torch.autograd.Function):
    generate_vmap_rule = True
    setup_context = staticmethod(_backward_setup)
    backward = staticmethod(_backward_grad)

    @_signed
    def forward(grad: Tensor, code: Tensor, height: int, width: int) -> Tensor:
        return torch.ops.cnnlab.max_pool2x2_backward(grad, code, height, width)


def _batch_first(t: Tensor | None, dim: int | None, size: int) -> Tensor | None:
    """A vmapped argument with its batch dimension first (expanded where it has none), then folded into N."""
    if t is None:
        return None
    t = t.movedim(dim, 0) if dim is not None else t.unsqueeze(0).expand(size, *t.shape)
    return t.reshape(size * t.shape[1], *t.shape[2:])


@_forward_op.register_vmap
def _(info, in_dims, x: Tensor, relu: bool):
    y, code = torch.ops.cnnlab.max_pool2x2(_batch_first(x, in_dims[0], info.batch_size), relu)
    b = info.batch_size
    return (y.reshape(b, -1, *y.shape[1:]), code.reshape(b, -1, *code.shape[1:])), (0, 0)


@_backward_op.register_vmap
def _(info, in_dims, grad: Tensor, code: Tensor, height: int, width: int):
    b = info.batch_size
    gx = torch.ops.cnnlab.max_pool2x2_backward(_batch_first(grad, in_dims[0], b), _batch_first(code, in_dims[1], b),
                                              height, width)
    return gx.reshape(b, -1, *gx.shape[1:]), 0


def max_pool2x2(x: Tensor, relu: bool = False) -> Tensor:
    """`relu(max_pool2d(x, 2))` if relu else `max_pool2d(x, 2)`, on the C kernel: x (N, C, H, W) bf16 or fp32
    on CPU -> (N, C, H//2, W//2) channels_last. Any channel count (the portable loops where AVX-512 does not
    apply); needs `load_kernel()` first."""
    return _ForwardFunction.apply(x, relu)[0]


# ------------------------------------------------------------------------------------------ modules


@torch.fx.wrap  # symbolic_trace records one call to this function, which branches on the tensor's metadata
def relu_max_pool2x2(x: Tensor, relu: bool) -> Tensor:
    """`relu(max_pool2d(x, 2))` (or the pool alone): on the C kernel where `kernel_applies(x)`, else PyTorch's."""
    if kernel_applies(x):
        return _ForwardFunction.apply(x, relu)[0]  # (N, C, H/2, W/2): torch.ops.cnnlab.max_pool2x2
    y = F.max_pool2d(x, 2, 2)  # (N, C, H/2, W/2)
    return torch.relu(y) if relu else y


class ReLUMaxPool2x2(nn.Module):
    """`ReLU -> MaxPool2d(2, 2)` as one module: `(N, C, H, W)` -> `(N, C, H//2, W//2)`, pooled first, on the
    C kernel where it applies (see the module's doc). `cnnlab.fuse` puts it in place of the pool, and an
    `nn.Identity` in place of the ReLU, so `state_dict` keys and module indices stay as they were."""

    def forward(self, x: Tensor) -> Tensor:
        return relu_max_pool2x2(x, True)

    def extra_repr(self) -> str:
        return "kernel_size=2, stride=2"


class MaxPool2x2(nn.MaxPool2d):
    """`nn.MaxPool2d(2, 2)` (same repr and values) on the C kernel where it applies (see the module's doc)."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return relu_max_pool2x2(x, False)
