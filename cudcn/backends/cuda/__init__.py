"""CUDA backend: CuPy arrays, raw CUDA kernels from ``cudcn/kernels`` through ``cupy.RawModule``.

The launch code lives in one module per op (``cudcn.backends.cuda.deform_conv2d``, ...) and is shared
with the emulated backend; this module binds it to CuPy and the RawModule loader
(:mod:`cudcn.backends.cuda.loader`). Each call runs on the device of its input array. CuPy is imported
on the first call, never by ``import cudcn``.
"""

from __future__ import annotations

from typing import Any

from cudcn.backends.cuda import deform_conv2d as _deform_conv2d
from cudcn.backends.cuda import deform_psroi_pool as _deform_psroi_pool
from cudcn.backends.cuda import deform_roi_pool as _deform_roi_pool
from cudcn.backends.cuda.loader import cuda_kernels, cupy

Array = Any
Pair = tuple[int, int]


def deform_conv2d_forward(
    input: Array,
    offset: Array,
    weight: Array,
    bias: Array | None,
    mask: Array | None,
    *,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
    offset_groups: int,
) -> Array:
    """deform_conv2d output (B, C_out, H_out, W_out) on the GPU; arguments as in ``cudcn.backends``."""
    with input.device:
        return _deform_conv2d.deform_conv2d_forward(
            cupy(), cuda_kernels("deform_conv2d"), input, offset, weight, bias, mask,
            stride=stride, padding=padding, dilation=dilation, groups=groups,
            offset_groups=offset_groups,
        )  # fmt: skip


def deform_conv2d_backward(
    grad_out: Array,
    input: Array,
    offset: Array,
    weight: Array,
    bias: Array | None,
    mask: Array | None,
    *,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
    offset_groups: int,
) -> tuple[Array, Array, Array, Array | None, Array | None]:
    """``(g_input, g_offset, g_weight, g_bias, g_mask)`` on the GPU (None for absent bias / mask)."""
    with input.device:
        return _deform_conv2d.deform_conv2d_backward(
            cupy(), cuda_kernels("deform_conv2d"), grad_out, input, offset, weight, bias, mask,
            stride=stride, padding=padding, dilation=dilation, groups=groups,
            offset_groups=offset_groups,
        )  # fmt: skip


def deform_roi_pool_forward(
    input: Array, rois: Array, offset: Array | None, **params: Any
) -> Array:
    """deform_roi_pool output (R, C, ph, pw) on the GPU; arguments as in ``cudcn.backends``."""
    with input.device:
        kernels = cuda_kernels("deform_roi_pool")
        return _deform_roi_pool.deform_roi_pool_forward(
            cupy(), kernels, input, rois, offset, **params
        )


def deform_roi_pool_backward(
    grad_out: Array, input: Array, rois: Array, offset: Array | None, **params: Any
) -> tuple[Array, Array | None]:
    """``(g_input, g_offset)`` on the GPU (None for an absent offset)."""
    with input.device:
        kernels = cuda_kernels("deform_roi_pool")
        return _deform_roi_pool.deform_roi_pool_backward(
            cupy(), kernels, grad_out, input, rois, offset, **params
        )


def deform_psroi_pool_forward(
    input: Array, rois: Array, trans: Array | None, **params: Any
) -> Array:
    """deform_psroi_pool output (R, output_dim, P, P) on the GPU; arguments as in ``cudcn.backends``."""
    with input.device:
        kernels = cuda_kernels("deform_psroi_pool")
        return _deform_psroi_pool.deform_psroi_pool_forward(
            cupy(), kernels, input, rois, trans, **params
        )


def deform_psroi_pool_backward(
    grad_out: Array, input: Array, rois: Array, trans: Array | None, **params: Any
) -> tuple[Array, Array | None]:
    """``(g_input, g_trans)`` on the GPU (None for an absent trans)."""
    with input.device:
        kernels = cuda_kernels("deform_psroi_pool")
        return _deform_psroi_pool.deform_psroi_pool_backward(
            cupy(), kernels, grad_out, input, rois, trans, **params
        )
