"""Launch code of the ms_deform_attn kernels (the deformable-aggregation core), shared by the CUDA and
the emulated backend.

``xp`` is ``cupy`` or ``numpy`` and ``get_kernel`` the backend's kernel lookup (see
:mod:`cudcn.backends.launch.common`). Both kernels run one warp per (batch, query, head) group, its
lanes over the D channels (``cudcn/kernels/ms_deform_attn.cu``): a grid-stride loop over
``groups * 32`` threads, in blocks whose size is a multiple of 32. The backward scatters the value
gradient into a compute-dtype buffer with atomicAdd (GPU results may differ in the last bits
between runs) or, under ``cudcn.deterministic()``, as exact fixed-point sums
(:class:`~cudcn.backends.launch.common.ScatterTarget`), rounded once to the value's dtype; the
location and weight gradients are warp sums with one writer, deterministic in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cudcn.arrays import Array
from cudcn.backends import deterministic_enabled, new_output
from cudcn.backends.launch import common
from cudcn.backends.launch.common import (
    GetKernel,
    KernelParams,
    ScatterTarget,
    c_type,
    check_plane,
    index_type,
    launch_1d,
    name_expressions,
    scatter_passes,
)
from cudcn.dtypes import compute_dtype, narrow
from cudcn.ops.ms_deform_attn import MSDeformAttnParams

NAME_EXPRESSIONS = name_expressions("ms_deform_attn", ("forward", "backward"))
WARP = 32  # lanes per (batch, query, head) group: kWarp in ms_deform_attn.cu


@dataclass(frozen=True)
class MSDeformAttnKernelParams(KernelParams):
    """The parameters both ms_deform_attn kernels take after ``n``, in their order."""

    queries: int
    heads: int
    channels: int
    levels: int
    points: int
    spatial: int
    normalized: int


def _launch_args(value: Array, locations: Array, p: MSDeformAttnParams) -> tuple[str, int, tuple]:
    """The kernels' template arguments, thread count ``n`` and trailing scalars (``n``, then
    :class:`MSDeformAttnKernelParams`). The index type covers ``n`` and every array the kernels
    index (value and its gradient, locations; weights and out are smaller)."""
    if common.THREADS_PER_BLOCK % WARP:
        raise ValueError(
            f"ms_deform_attn runs one warp per group: THREADS_PER_BLOCK must be a multiple of {WARP}, "
            f"got {common.THREADS_PER_BLOCK}"
        )
    batch, spatial, heads, channels = (int(s) for s in value.shape)
    queries, levels, points = (int(locations.shape[i]) for i in (1, 3, 4))
    for height, width in p.levels:
        check_plane(height, width, "value level")
    if spatial > np.iinfo(np.int32).max:
        raise ValueError(f"value must have < 2**31 rows S (the kernels index S in int), got {spatial}")
    n = batch * queries * heads * WARP
    index_name, index = index_type(n, value.size, locations.size)
    scalars = MSDeformAttnKernelParams(
        queries=queries,
        heads=heads,
        channels=channels,
        levels=levels,
        points=points,
        spatial=spatial,
        normalized=int(p.normalized),
    ).scalars(value.dtype)
    return f"<{c_type(value.dtype)}, {index_name}>", n, (index(n), *scalars)


def ms_deform_attn_forward(
    xp: Any, get_kernel: GetKernel, value: Array, locations: Array, weights: Array, p: MSDeformAttnParams
) -> Array:
    """Output (N, Q, M, D) of C-contiguous arrays validated by ``cudcn.ops`` (locations in the
    compute dtype)."""
    batch, _, heads, channels = value.shape
    out = new_output(xp, (batch, locations.shape[1], heads, channels), value.dtype)
    templ, n, scalars = _launch_args(value, locations, p)
    table = xp.asarray(p.level_table())
    kernel = get_kernel(f"ms_deform_attn_forward{templ}")
    launch_1d(kernel, n, (value, locations, weights, table, out, *scalars))
    return out


def ms_deform_attn_backward(
    xp: Any,
    get_kernel: GetKernel,
    grad_out: Array,
    value: Array,
    locations: Array,
    weights: Array,
    p: MSDeformAttnParams,
) -> tuple[Array, Array, Array]:
    """``(grad_value, grad_locations, grad_weights)``: value's dtype, the compute dtype, value's
    dtype."""
    wide = compute_dtype(value.dtype)
    grad_value = xp.zeros(value.shape, dtype=wide)  # scatter target
    grad_locations = new_output(xp, locations.shape, wide)
    grad_weights = new_output(xp, weights.shape, value.dtype)
    to_value = ScatterTarget(xp, grad_value, deterministic_enabled())
    templ, n, scalars = _launch_args(value, locations, p)
    table = xp.asarray(p.level_table())
    kernel = get_kernel(f"ms_deform_attn_backward{templ}")

    def launch(scatter_pass: np.int32) -> None:
        arrays = (grad_out, value, locations, weights, table, grad_value, to_value.fixed)
        launch_1d(kernel, n, (*arrays, grad_locations, grad_weights, scatter_pass, *scalars))

    scatter_passes(launch, to_value)
    return narrow(grad_value, value.dtype), grad_locations, grad_weights
