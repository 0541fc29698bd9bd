"""A faster 2x2 max-pool (stride 2) for channels_last CPU maps, with an optional fused ReLU: the same values
and gradients as `relu(max_pool2d(x, 2))`, bit for bit (NaN payloads aside).

PyTorch saves an int64 index per output element and runs its backward pass as a zero-fill plus a scatter;
the C kernel (`_native/maxpool2x2.c`) saves a code of the element's own width (window position and the
ReLU's mask in one) and writes each input gradient once. For `simple_cnn` in bf16 on a 2-core CPU that is
1.07-1.15x more steps/s in `benchmarks/step_levers.py` and 1.2-1.35x more images/s in `cnnlab train`.

`pool2x2_applies(x, pool)` says whether an input and an `nn.MaxPool2d` should take this path: a plain CPU
tensor, bf16 or fp32, channels_last, a 2x2 stride-2 pool without padding, dilation or indices, the C
kernels loaded (`cnnlab.layers._native.status()`) and their AVX-512 loops usable (channels a multiple of
32 in bf16, of 16 in fp32). Otherwise the caller runs PyTorch's operators. `max_pool2x2` itself takes any
channel count and CPU: the portable C loops compute the same values, but measured slower than PyTorch's
kernels (4.4 vs 3.2 ms for a bf16 128x32x28x28 map, forward and backward), so models do not use them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from cnnlab.layers import _native
from cnnlab.layers._tracing import tracing

_DTYPE_CODE = {torch.bfloat16: (0, torch.int16), torch.float32: (1, torch.int32)}
_SIMD_LANES = {torch.bfloat16: 32, torch.float32: 16}  # channels per AVX-512 vector
_FORCE_PORTABLE = False  # tests: run the portable C loops where the AVX-512 ones would run


def _pair(v: int | tuple[int, ...]) -> tuple[int, ...]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _is_2x2(pool: nn.MaxPool2d) -> bool:
    return (_pair(pool.kernel_size) == (2, 2) and _pair(pool.stride) == (2, 2) and _pair(pool.padding) == (0, 0)
            and _pair(pool.dilation) == (1, 1) and not pool.return_indices)


def pool2x2_applies(x: torch.Tensor, pool: nn.MaxPool2d) -> bool:
    """Whether `pool(x)` (and `relu(pool(x))`) can and should run on the C kernel (see the module's doc)."""
    if not (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype in _DTYPE_CODE and x.dim() == 4
            and _is_2x2(pool) and x.shape[2] >= 2 and x.shape[3] >= 2
            and x.is_contiguous(memory_format=torch.channels_last)):
        return False
    if pool.ceil_mode and (x.shape[2] % 2 or x.shape[3] % 2):
        return False
    # graphs, fake or wrapped tensors and interposed modes must see PyTorch's own operators
    if tracing() or torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    if torch._C._is_torch_function_mode_enabled() or torch._C._are_functorch_transforms_active():
        return False
    lib = _native.library()
    return lib is not None and bool(lib.cnnlab_maxpool2x2_simd()) and x.shape[1] % _SIMD_LANES[x.dtype] == 0


def _channels_last(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, memory_format=torch.channels_last)


def _backward_kernel(g: torch.Tensor, code: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The input gradient (N, C, H, W) from the output gradient g (N, C, H/2, W/2) and the saved codes."""
    g = g.contiguous(memory_format=torch.channels_last)
    n, c, h, w = shape
    gx = _channels_last(tuple(shape), g.dtype)
    with torch.profiler.record_function("cnnlab::max_pool2x2_backward"):
        _native.library().cnnlab_maxpool2x2_backward(_DTYPE_CODE[g.dtype][0], g.data_ptr(), code.data_ptr(),
                                                     gx.data_ptr(), 0, n, h, w, c, int(_FORCE_PORTABLE))
    if h % 2:  # floor mode: the unpooled last row/column gets no gradient
        gx[:, :, -1].zero_()
    if w % 2:
        gx[:, :, :, -1].zero_()
    return gx


def _gather(h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """`h` (N, C, H, W) read at each window's chosen position, zero where the gradient does not pass:
    the derivative of the backward pass with respect to the output gradient (double backward)."""
    n, c, ho, wo = code.shape
    windows = h[:, :, : 2 * ho, : 2 * wo].reshape(n, c, ho, 2, wo, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, ho, wo, 4)
    picked = windows.gather(-1, (code & 3).long().unsqueeze(-1)).squeeze(-1)
    return torch.where(code < 0, picked, 0)  # the top bit (the sign of the int16/int32 code) marks "passes"


class _Backward(torch.autograd.Function):
    """The backward pass as a function of the output gradient, so that double backward works."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, code: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        ctx.save_for_backward(code)
        return _backward_kernel(g, code, shape)

    @staticmethod
    def backward(ctx, h: torch.Tensor):
        (code,) = ctx.saved_tensors
        return _gather(h, code), None, None


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, relu: bool) -> torch.Tensor:
        n, c, h, w = x.shape
        kind, code_dtype = _DTYPE_CODE[x.dtype]
        y = _channels_last((n, c, h // 2, w // 2), x.dtype)
        code = _channels_last((n, c, h // 2, w // 2), code_dtype)
        with torch.profiler.record_function("cnnlab::max_pool2x2" + ("_relu" if relu else "")):
            _native.library().cnnlab_maxpool2x2_forward(kind, x.data_ptr(), y.data_ptr(), code.data_ptr(), 0, n,
                                                        h, w, c, int(relu), int(_FORCE_PORTABLE))
        ctx.save_for_backward(code)
        ctx.shape = x.shape
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (code,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: keep the backward pass differentiable
            return _Backward.apply(g, code, ctx.shape), None
        return _backward_kernel(g, code, ctx.shape), None


def max_pool2x2(x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """`relu(max_pool2d(x, 2))` if relu else `max_pool2d(x, 2)`, on the C kernel: x (N, C, H, W) channels_last,
    bf16 or fp32, on CPU -> (N, C, H//2, W//2) channels_last. Needs the C kernels loaded (`_native.library()`);
    `pool2x2_applies` says where they are faster than PyTorch."""
    return _MaxPool2x2.apply(x, relu)
