"""Launch code of the deform_conv2d kernels, shared by the CUDA and the emulated backend.

The two backends differ only in what they pass here: ``xp`` (``cupy`` / ``numpy``) and
``get_kernel(name_expression)`` (a ``RawModule`` lookup / the host build's export table, see
:mod:`cudcn.backends.launch.common`). Everything else, buffers, GEMMs, chunking and the kernel
arguments, is this one code path, so the emulated backend tests exactly what runs on a GPU.

Algorithm, per chunk of the batch (the column buffer is bounded by :data:`COLUMN_BUDGET_BYTES`):

* forward: ``deform_conv2d_im2col`` fills ``columns`` (C_in·kh·kw, chunk, H_out·W_out); per
  weight group a GEMM ``weight_g (C_out/G, C_in/G·kh·kw) @ columns_g`` (cuBLAS through
  ``xp.matmul``), then one element-wise pass moves (C_out, chunk, P) to the output's
  (chunk, C_out, P) and adds the bias.
* backward: ``grad_out`` is transposed once to (C_out, chunk·P); ``columns`` is recomputed and
  ``grad_weight_g += grad_out_g @ columns_g^T``; the same buffer then receives the column gradient
  ``weight_g^T @ grad_out_g``, which ``deform_conv2d_col2im`` scatters onto ``grad_input``
  (atomicAdd, or exact fixed-point sums under ``cudcn.deterministic()``) and
  ``deform_conv2d_col2im_coord`` reduces into ``grad_offset`` and ``grad_mask``.

How to add an op through this package: docs/developing.md ("Adding an op").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from cudcn.arrays import Array
from cudcn.backends import deterministic_enabled, new_output
from cudcn.backends.launch.common import (
    GetKernel,
    KernelParams,
    ScatterTarget,
    batch_chunks,
    c_type,
    check_plane,
    index_type,
    launch_1d,
    name_expressions,
    scatter_passes,
)
from cudcn.dtypes import compute_dtype, narrow, widen
from cudcn.ops.deform_conv2d import DeformConv2dParams

NAME_EXPRESSIONS = name_expressions("deform_conv2d", ("im2col", "col2im", "col2im_coord"))

COLUMN_BUDGET_BYTES = 128 * 2**20  # bound on the column buffer of one batch chunk


@dataclass(frozen=True)
class DeformConv2dKernelParams(KernelParams):
    """The int parameters every deform_conv2d kernel takes after ``n``, in its order."""

    batch: int  # images in this launch's chunk
    channels: int
    height: int
    width: int
    out_h: int
    out_w: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    offset_groups: int
    use_mask: int


class _Plan:
    """One call's geometry: batch chunks, index type, and the three kernels' launches."""

    def __init__(
        self,
        get_kernel: GetKernel,
        input: Array,
        offset: Array,
        weight: Array,
        mask: Array | None,
        p: DeformConv2dParams,
    ):
        self.batch, self.channels, height, width = (int(s) for s in input.shape)
        self.out_channels, _, kh, kw = (int(s) for s in weight.shape)
        self.out_h, self.out_w = (int(s) for s in offset.shape[2:])
        check_plane(height, width)
        check_plane(self.out_h, self.out_w, "output")
        self.groups, self.taps, self.dtype = p.groups, kh * kw, input.dtype
        self.compute = compute_dtype(self.dtype)  # of the column buffer, the GEMMs and the scatter
        self.plane = self.out_h * self.out_w
        self.rows = self.channels * self.taps  # rows of the column buffer
        self.geometry = DeformConv2dKernelParams(
            batch=self.batch,
            channels=self.channels,
            height=height,
            width=width,
            out_h=self.out_h,
            out_w=self.out_w,
            kernel_h=kh,
            kernel_w=kw,
            stride_h=p.stride[0],
            stride_w=p.stride[1],
            pad_h=p.padding[0],
            pad_w=p.padding[1],
            dilation_h=p.dilation[0],
            dilation_w=p.dilation[1],
            offset_groups=p.offset_groups,
            use_mask=int(mask is not None),
        )
        per_item = self.rows * self.plane * self.compute.itemsize
        self.chunks = list(batch_chunks(self.batch, per_item, COLUMN_BUDGET_BYTES))
        self.largest = max((stop - start for start, stop in self.chunks), default=0)
        counts = (
            self.rows * self.plane,
            self.channels * height * width,
            offset.shape[1] * self.plane,
            self.out_channels * self.plane,
        )
        self.index_name, self.index = index_type(*(self.largest * count for count in counts))
        templates = f"<{c_type(self.dtype)}, {self.index_name}>"
        self.kernels = {
            name: get_kernel(f"deform_conv2d_{name}{templates}")
            for name in ("im2col", "col2im", "col2im_coord")
        }

    def _launch(self, name: str, n: int, chunk: int, arrays: tuple[Any, ...]) -> None:
        geometry = replace(self.geometry, batch=chunk)
        launch_1d(self.kernels[name], n, (*arrays, self.index(n), *geometry.scalars(self.dtype)))

    def buffer(self, xp: Any, rows: int) -> Array:
        """A flat work buffer of ``rows`` x (largest chunk · H_out·W_out) elements of the compute
        dtype."""
        return xp.empty(rows * self.largest * self.plane, dtype=self.compute)

    def grouped_weight(self, weight: Array) -> Array:
        """``weight`` in the compute dtype as (groups, C_out / groups, C_in / groups · kh · kw)."""
        return widen(weight).reshape(self.groups, self.out_channels // self.groups, -1)

    def im2col(self, columns: Array, input: Array, offset: Array, mask: Array) -> Array:
        """Fill the column buffer for the chunk ``input``; returns it as (groups, rows / groups,
        chunk · H_out·W_out)."""
        chunk = input.shape[0]
        cols = columns[: self.rows * chunk * self.plane]
        self._launch("im2col", self.channels * chunk * self.plane, chunk, (input, offset, mask, cols))
        return cols.reshape(self.groups, self.rows // self.groups, chunk * self.plane)

    def col2im(self, g_cols: Array, offset: Array, mask: Array, g_input: ScatterTarget) -> None:
        """Scatter the column gradient onto ``g_input`` (zeroed, of the compute dtype; atomic, or
        the deterministic mode's two passes)."""
        chunk = g_input.target.shape[0]
        n = self.channels * chunk * self.plane

        def launch(scatter_pass: np.int32) -> None:
            self._launch("col2im", n, chunk, (g_cols, offset, mask, *g_input.args(), scatter_pass))

        scatter_passes(launch, g_input)

    def col2im_coord(
        self,
        g_cols: Array,
        input: Array,
        offset: Array,
        mask: Array,
        g_offset: Array,
        g_mask: Array,
    ) -> None:
        """Reduce the column gradient into ``g_offset`` and (with a mask) ``g_mask``."""
        chunk = input.shape[0]
        n = chunk * offset.shape[1] // 2 * self.plane  # one thread per (b, offset group, tap, p)
        self._launch("col2im_coord", n, chunk, (g_cols, input, offset, mask, g_offset, g_mask))


def deform_conv2d_forward(
    xp: Any,
    get_kernel: GetKernel,
    input: Array,
    offset: Array,
    weight: Array,
    bias: Array | None,
    mask: Array | None,
    p: DeformConv2dParams,
) -> Array:
    """Output (B, C_out, H_out, W_out) of C-contiguous arrays validated by ``cudcn.ops``."""
    plan = _Plan(get_kernel, input, offset, weight, mask, p)
    out = new_output(xp, (plan.batch, plan.out_channels, plan.out_h, plan.out_w), plan.dtype)
    if not plan.chunks:
        return out
    columns, product = plan.buffer(xp, plan.rows), plan.buffer(xp, plan.out_channels)
    w = plan.grouped_weight(weight)
    wide_bias = None if bias is None else widen(bias).reshape(1, -1, 1)
    no_mask = xp.zeros((1,), dtype=plan.dtype)  # passed for mask = None; never read (use_mask 0)
    for start, stop in plan.chunks:
        chunk, batch = stop - start, slice(start, stop)
        masks = no_mask if mask is None else mask[batch]
        cols = plan.im2col(columns, input[batch], offset[batch], masks)
        prod = product[: plan.out_channels * chunk * plan.plane].reshape(*w.shape[:2], -1)
        for g in range(plan.groups):
            xp.matmul(w[g], cols[g], out=prod[g])
        result = prod.reshape(plan.out_channels, chunk, plan.plane).transpose(1, 0, 2)
        target = out[batch].reshape(chunk, plan.out_channels, plan.plane)  # rounds once, if 16-bit
        if bias is None:
            target[...] = result
        elif plan.compute == plan.dtype:
            xp.add(result, wide_bias, out=target)
        else:  # add in float32, round once on assignment
            target[...] = result + wide_bias
    return out


def deform_conv2d_backward(
    xp: Any,
    get_kernel: GetKernel,
    grad_out: Array,
    input: Array,
    offset: Array,
    weight: Array,
    bias: Array | None,
    mask: Array | None,
    p: DeformConv2dParams,
) -> tuple[Array, ...]:
    """``(g_input, g_offset, g_weight, g_bias, g_mask)``, shaped like the arguments; ``g_bias`` and
    ``g_mask`` are None when ``bias`` and ``mask`` are."""
    plan = _Plan(get_kernel, input, offset, weight, mask, p)
    # The input gradient (a scatter target) and the weight gradient (a sum of GEMMs) accumulate in
    # the compute dtype and are rounded once at the end; the coordinate kernel rounds its own.
    g_input = xp.zeros(input.shape, dtype=plan.compute)
    deterministic = deterministic_enabled()
    g_offset = new_output(xp, offset.shape, plan.dtype)
    g_mask = None if mask is None else new_output(xp, mask.shape, plan.dtype)
    g_weight = xp.zeros(weight.shape, dtype=plan.compute)
    g_bias = None
    if bias is not None:
        g_bias = narrow(grad_out.sum(axis=(0, 2, 3), dtype=plan.compute), plan.dtype)
    columns, grads = plan.buffer(xp, plan.rows), plan.buffer(xp, plan.out_channels)
    w = plan.grouped_weight(weight)
    gw = g_weight.reshape(w.shape)
    no_mask = xp.zeros((1,), dtype=plan.dtype)  # passed for mask = None; never touched (use_mask 0)
    for start, stop in plan.chunks:
        chunk, batch = stop - start, slice(start, stop)
        masks = no_mask if mask is None else mask[batch]
        go = grads[: plan.out_channels * chunk * plan.plane]
        go.reshape(plan.out_channels, chunk, plan.plane)[...] = (
            grad_out[batch].reshape(chunk, plan.out_channels, plan.plane).transpose(1, 0, 2)
        )
        go = go.reshape(*w.shape[:2], -1)
        cols = plan.im2col(columns, input[batch], offset[batch], masks)
        for g in range(plan.groups):
            gw[g] += xp.matmul(go[g], cols[g].T)
            xp.matmul(w[g].T, go[g], out=cols[g])  # cols now holds the column gradient
        plan.col2im(cols, offset[batch], masks, ScatterTarget(xp, g_input[batch], deterministic))
        plan.col2im_coord(
            cols,
            input[batch],
            offset[batch],
            masks,
            g_offset[batch],
            no_mask if g_mask is None else g_mask[batch],
        )
    return narrow(g_input, plan.dtype), g_offset, narrow(g_weight, plan.dtype), g_bias, g_mask
