"""Launch code of the deform_roi_pool kernels, shared by the CUDA and the emulated backend.

``xp`` is ``cupy`` or ``numpy`` and ``get_kernel`` the backend's kernel lookup (see
:mod:`cudcn.backends.launch.common`). One thread per output element in both directions: the forward
averages the bin's samples; the backward scatters into ``grad_input`` and, with an offset, adds the
bin's derivatives into ``grad_offset``, both with atomicAdd (so GPU gradients may differ in the last
bits between runs), or, under ``cudcn.deterministic()``, as exact fixed-point sums
(:class:`~cudcn.backends.launch.common.ScatterTarget`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cudcn.arrays import Array
from cudcn.backends import new_output
from cudcn.backends.launch.common import (
    GetKernel,
    KernelParams,
    c_type,
    check_plane,
    index_type,
    launch_1d,
    name_expressions,
    roi_pool_backward,
)
from cudcn.ops.deform_roi_pool import DeformRoIPoolParams

NAME_EXPRESSIONS = name_expressions("deform_roi_pool", ("forward", "backward"))


@dataclass(frozen=True)
class DeformRoIPoolKernelParams(KernelParams):
    """The parameters both deform_roi_pool kernels take after ``n``, in their order."""

    channels: int
    height: int
    width: int
    pooled_h: int
    pooled_w: int
    spatial_scale: float
    sampling_ratio: int
    gamma: float
    aligned: int
    use_offset: int


def _placeholder(xp: Any, dtype: Any) -> Array:
    """A one-element array passed for an absent offset (the kernels never touch it: use_offset = 0)."""
    return xp.zeros((1,), dtype=dtype)


def _launch_args(input: Array, offset: Array | None, n: int, p: DeformRoIPoolParams) -> tuple[str, tuple]:
    """The kernels' template arguments and trailing scalars (``n``, then
    :class:`DeformRoIPoolKernelParams`). The index type covers every array the kernels index: input,
    output / grad_out, offset."""
    _, channels, height, width = (int(s) for s in input.shape)
    check_plane(height, width)
    index_name, index = index_type(n, input.size, 0 if offset is None else offset.size)
    scalars = DeformRoIPoolKernelParams(
        channels=channels,
        height=height,
        width=width,
        pooled_h=p.pooled_h,
        pooled_w=p.pooled_w,
        spatial_scale=p.spatial_scale,
        sampling_ratio=p.sampling_ratio,
        gamma=p.gamma,
        aligned=int(p.aligned),
        use_offset=int(offset is not None),
    ).scalars(input.dtype)
    return f"<{c_type(input.dtype)}, {index_name}>", (index(n), *scalars)


def deform_roi_pool_forward(
    xp: Any,
    get_kernel: GetKernel,
    input: Array,
    rois: Array,
    offset: Array | None,
    p: DeformRoIPoolParams,
) -> Array:
    """Output (R, C, pooled_h, pooled_w) of C-contiguous arrays validated by ``cudcn.ops``."""
    offset_arg = _placeholder(xp, input.dtype) if offset is None else offset
    out = new_output(xp, (rois.shape[0], input.shape[1], p.pooled_h, p.pooled_w), input.dtype)
    templ, scalars = _launch_args(input, offset, out.size, p)
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
    p: DeformRoIPoolParams,
) -> tuple[Array, Array | None]:
    """``(grad_input, grad_offset)``; ``grad_offset`` is None when ``offset`` is None."""
    templ, scalars = _launch_args(input, offset, grad_out.size, p)
    kernel = get_kernel(f"deform_roi_pool_backward{templ}")
    return roi_pool_backward(xp, kernel, grad_out, input, rois, offset, scalars)
