"""Emulated backend: the CUDA kernels of ``cudcn/kernels``, compiled for the host, on NumPy arrays.

For tests and for debugging a kernel on a machine without a GPU (gdb, AddressSanitizer). It runs the
CUDA backend's launch code unchanged (``cudcn.backends.cuda.<op>``) with ``xp = numpy`` and the host
loader (:mod:`cudcn.backends.emulated.loader`) in place of CuPy and ``RawModule``: the same kernel
source, the same name expressions, the same arguments. Select it with
``cudcn.use_backend("emulated")`` or ``CUDCN_BACKEND=emulated``. The first call builds the op's
kernels with g++ (a few seconds; cached on disk, see :mod:`cudcn.backends.emulated.build`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cudcn.backends.cuda import deform_conv2d as _deform_conv2d
from cudcn.backends.cuda import deform_psroi_pool as _deform_psroi_pool
from cudcn.backends.cuda import deform_roi_pool as _deform_roi_pool
from cudcn.backends.emulated.loader import host_kernels

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
    """deform_conv2d output (B, C_out, H_out, W_out); arguments as in ``cudcn.backends``."""
    return _deform_conv2d.deform_conv2d_forward(
        np, host_kernels("deform_conv2d"), input, offset, weight, bias, mask,
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
    """``(g_input, g_offset, g_weight, g_bias, g_mask)`` (None for absent bias / mask)."""
    return _deform_conv2d.deform_conv2d_backward(
        np, host_kernels("deform_conv2d"), grad_out, input, offset, weight, bias, mask,
        stride=stride, padding=padding, dilation=dilation, groups=groups,
        offset_groups=offset_groups,
    )  # fmt: skip


def deform_roi_pool_forward(
    input: Array, rois: Array, offset: Array | None, **params: Any
) -> Array:
    """deform_roi_pool output (R, C, ph, pw); arguments as in ``cudcn.backends``."""
    kernels = host_kernels("deform_roi_pool")
    return _deform_roi_pool.deform_roi_pool_forward(np, kernels, input, rois, offset, **params)


def deform_roi_pool_backward(
    grad_out: Array, input: Array, rois: Array, offset: Array | None, **params: Any
) -> tuple[Array, Array | None]:
    """``(g_input, g_offset)`` (None for an absent offset)."""
    kernels = host_kernels("deform_roi_pool")
    return _deform_roi_pool.deform_roi_pool_backward(
        np, kernels, grad_out, input, rois, offset, **params
    )


def deform_psroi_pool_forward(
    input: Array, rois: Array, trans: Array | None, **params: Any
) -> Array:
    """deform_psroi_pool output (R, output_dim, P, P); arguments as in ``cudcn.backends``."""
    kernels = host_kernels("deform_psroi_pool")
    return _deform_psroi_pool.deform_psroi_pool_forward(np, kernels, input, rois, trans, **params)


def deform_psroi_pool_backward(
    grad_out: Array, input: Array, rois: Array, trans: Array | None, **params: Any
) -> tuple[Array, Array | None]:
    """``(g_input, g_trans)`` (None for an absent trans)."""
    kernels = host_kernels("deform_psroi_pool")
    return _deform_psroi_pool.deform_psroi_pool_backward(
        np, kernels, grad_out, input, rois, trans, **params
    )
