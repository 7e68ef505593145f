"""Launch code of the deform_roi_pool kernels, shared by the CUDA and the emulated backend.

``xp`` is ``cupy`` or ``numpy`` and ``get_kernel`` the backend's kernel lookup (see
:mod:`cudcn.backends.cuda.launch`). One thread per output element in both directions: the forward
averages the bin's samples; the backward scatters into ``grad_input`` and, with an offset, adds the
bin's derivatives into ``grad_offset``, both with atomicAdd (so GPU gradients may differ in the last
bits between runs; the CPU backend is the deterministic one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cudcn.backends import new_output
from cudcn.backends.cuda.launch import GetKernel, c_type, index_type, launch_1d

Array = Any

NAME_EXPRESSIONS = tuple(
    f"deform_roi_pool_{kernel}<{scalar}, {index}>"
    for kernel in ("forward", "backward")
    for scalar in ("float", "double")
    for index in ("int", "long long")
)


def _placeholder(xp: Any, dtype: Any) -> Array:
    """A one-element array passed for an absent offset (the kernels never touch it: use_offset = 0)."""
    return xp.zeros((1,), dtype=dtype)


def _launch_args(
    input: Array,
    offset: Array | None,
    n: int,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
    aligned: bool,
) -> tuple[str, tuple[Any, ...]]:
    """The kernel's template arguments and its trailing scalar arguments."""
    _, channels, height, width = (int(s) for s in input.shape)
    index_name, index = index_type(n, input.size)
    scalar = input.dtype.type
    scalars = (
        index(n),
        *(np.int32(v) for v in (channels, height, width, pooled_h, pooled_w)),
        scalar(spatial_scale),
        np.int32(sampling_ratio),
        scalar(gamma),
        np.int32(aligned),
        np.int32(offset is not None),
    )
    return f"<{c_type(input.dtype)}, {index_name}>", scalars


def deform_roi_pool_forward(
    xp: Any,
    get_kernel: GetKernel,
    input: Array,
    rois: Array,
    offset: Array | None,
    *,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
    aligned: bool,
) -> Array:
    """Output (R, C, pooled_h, pooled_w); arguments as in ``cudcn.backends``."""
    input, rois = xp.ascontiguousarray(input), xp.ascontiguousarray(rois)
    offset_arg = _placeholder(xp, input.dtype) if offset is None else xp.ascontiguousarray(offset)
    out = new_output(xp, (rois.shape[0], input.shape[1], pooled_h, pooled_w), input.dtype)
    templ, scalars = _launch_args(
        input, offset, out.size, pooled_h, pooled_w, spatial_scale, sampling_ratio, gamma, aligned
    )
    kernel = get_kernel(f"deform_roi_pool_forward{templ}")
    launch_1d(kernel, out.size, (input, rois, offset_arg, out, *scalars))
    return out


def deform_roi_pool_backward(
    xp: Any,
    get_kernel: GetKernel,
    grad_out: Array,
    input: Array,
    rois: Array,
    offset: Array | None,
    *,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
    aligned: bool,
) -> tuple[Array, Array | None]:
    """``(grad_input, grad_offset)``; ``grad_offset`` is None when ``offset`` is None."""
    grad_out, input, rois = (xp.ascontiguousarray(a) for a in (grad_out, input, rois))
    grad_input = xp.zeros(input.shape, dtype=input.dtype)  # scatter target
    if offset is None:
        offset_arg = grad_offset_arg = _placeholder(xp, input.dtype)
        grad_offset = None
    else:
        offset_arg = xp.ascontiguousarray(offset)
        grad_offset = grad_offset_arg = xp.zeros(offset.shape, dtype=offset.dtype)
    templ, scalars = _launch_args(
        input,
        offset,
        grad_out.size,
        pooled_h,
        pooled_w,
        spatial_scale,
        sampling_ratio,
        gamma,
        aligned,
    )
    kernel = get_kernel(f"deform_roi_pool_backward{templ}")
    launch_1d(
        kernel,
        grad_out.size,
        (grad_out, input, rois, offset_arg, grad_input, grad_offset_arg, *scalars),
    )
    return grad_input, grad_offset
