"""Launch code of the deform_psroi_pool kernels, shared by the CUDA and the emulated backend.

``xp`` is ``cupy`` or ``numpy`` and ``get_kernel`` the backend's kernel lookup (see
:mod:`cudcn.backends.launch.common`). One thread per output element in both directions; the backward
scatters into ``grad_input`` and ``grad_trans`` with atomicAdd, or, under ``cudcn.deterministic()``, as
exact fixed-point sums (:class:`~cudcn.backends.launch.common.ScatterTarget`).
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
from cudcn.ops.deform_psroi_pool import DeformPSRoIPoolParams

NAME_EXPRESSIONS = name_expressions("deform_psroi_pool", ("forward", "backward"))


@dataclass(frozen=True)
class DeformPSRoIPoolKernelParams(KernelParams):
    """The parameters both deform_psroi_pool kernels take after ``n``, in their order."""

    channels: int
    height: int
    width: int
    spatial_scale: float
    output_dim: int
    group_size: int
    pooled: int
    part_size: int
    sample_per_part: int
    trans_std: float
    num_classes: int
    use_trans: int


def _launch_args(input: Array, trans: Array | None, n: int, p: DeformPSRoIPoolParams) -> tuple[str, tuple]:
    """The kernels' template arguments and trailing scalars (``n``, then
    :class:`DeformPSRoIPoolKernelParams`). The index type covers input, output / grad_out and
    trans."""
    _, channels, height, width = (int(s) for s in input.shape)
    check_plane(height, width)
    index_name, index = index_type(n, input.size, 0 if trans is None else trans.size)
    scalars = DeformPSRoIPoolKernelParams(
        channels=channels,
        height=height,
        width=width,
        spatial_scale=p.spatial_scale,
        output_dim=p.output_dim,
        group_size=p.group_size,
        pooled=p.pooled_size,
        part_size=p.part_size,
        sample_per_part=p.sample_per_part,
        trans_std=p.trans_std,
        num_classes=1 if trans is None else int(trans.shape[1]) // 2,
        use_trans=int(trans is not None),
    ).scalars(input.dtype)
    return f"<{c_type(input.dtype)}, {index_name}>", (index(n), *scalars)


def deform_psroi_pool_forward(
    xp: Any,
    get_kernel: GetKernel,
    input: Array,
    rois: Array,
    trans: Array | None,
    p: DeformPSRoIPoolParams,
) -> Array:
    """Output (R, output_dim, pooled_size, pooled_size) of C-contiguous arrays validated by
    ``cudcn.ops``."""
    # A one-element stand-in for an absent trans: the kernels never read it (use_trans = 0).
    trans_arg = xp.zeros((1,), input.dtype) if trans is None else trans
    out = new_output(xp, (rois.shape[0], p.output_dim, p.pooled_size, p.pooled_size), input.dtype)
    templ, scalars = _launch_args(input, trans, out.size, p)
    kernel = get_kernel(f"deform_psroi_pool_forward{templ}")
    launch_1d(kernel, out.size, (input, rois, trans_arg, out, *scalars))
    return out


def deform_psroi_pool_backward(
    xp: Any,
    get_kernel: GetKernel,
    grad_out: Array,
    input: Array,
    rois: Array,
    trans: Array | None,
    p: DeformPSRoIPoolParams,
) -> tuple[Array, Array | None]:
    """``(grad_input, grad_trans)``; ``grad_trans`` is None when ``trans`` is None."""
    templ, scalars = _launch_args(input, trans, grad_out.size, p)
    kernel = get_kernel(f"deform_psroi_pool_backward{templ}")
    return roi_pool_backward(xp, kernel, grad_out, input, rois, trans, scalars)
