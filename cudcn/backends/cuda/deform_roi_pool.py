"""Launch code of the deform_roi_pool kernels, shared by the CUDA and the emulated backend.

``xp`` is ``cupy`` or ``numpy`` and ``get_kernel`` the backend's kernel lookup (see
:mod:`cudcn.backends.cuda.launch`). One thread per output element in both directions: the forward
averages the bin's samples; the backward scatters into ``grad_input`` and, with an offset, adds the
bin's derivatives into ``grad_offset``, both with atomicAdd (so GPU gradients may differ in the last
bits between runs), or, under ``cudcn.deterministic()``, as exact fixed-point sums
(:class:`~cudcn.backends.cuda.launch.ScatterTarget`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cudcn.backends import new_output
from cudcn.backends.cuda.launch import (
    C_TYPES,
    GetKernel,
    KernelParams,
    c_type,
    check_plane,
    index_type,
    largest_roi_side,
    launch_1d,
    roi_pool_backward,
)

Array = Any

NAME_EXPRESSIONS = tuple(
    f"deform_roi_pool_{kernel}<{scalar}, {index}>"
    for kernel in ("forward", "backward")
    for scalar in C_TYPES.values()
    for index in ("int", "long long")
)


@dataclass(frozen=True)
class RoiPoolParams(KernelParams):
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


def _launch_args(input: Array, offset: Array | None, n: int, **params: Any) -> tuple[str, tuple]:
    """The kernels' template arguments and trailing scalars (``n``, then :class:`RoiPoolParams`).
    The index type covers every array the kernels index: input, output / grad_out, offset."""
    _, channels, height, width = (int(s) for s in input.shape)
    check_plane(height, width)
    index_name, index = index_type(n, input.size, 0 if offset is None else offset.size)
    scalars = RoiPoolParams(
        channels=channels, height=height, width=width, use_offset=int(offset is not None),
        aligned=int(params.pop("aligned")), **params,
    ).scalars(input.dtype)  # fmt: skip
    return f"<{c_type(input.dtype)}, {index_name}>", (index(n), *scalars)


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
        input, offset, out.size, pooled_h=pooled_h, pooled_w=pooled_w,
        spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, gamma=gamma, aligned=aligned,
    )  # fmt: skip
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
    templ, scalars = _launch_args(
        input, offset, grad_out.size, pooled_h=pooled_h, pooled_w=pooled_w,
        spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, gamma=gamma, aligned=aligned,
    )  # fmt: skip

    def extent() -> float:  # RoI sizes are x2 - x1 (at least 1 when not aligned), scaled
        return largest_roi_side(xp, rois) * spatial_scale + 1.0

    kernel = get_kernel(f"deform_roi_pool_backward{templ}")
    return roi_pool_backward(xp, kernel, grad_out, input, rois, offset, gamma, extent, scalars)
