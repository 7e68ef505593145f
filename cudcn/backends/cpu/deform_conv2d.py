"""CPU deform_conv2d: Numba sampling kernels around NumPy (BLAS) GEMMs.

Per batch chunk (columns bounded by ``COLUMN_BYTES``):

- forward: pad the input channels-last, sample the modulated columns ``col (groups, N, K·C_in/groups)``
  (N = chunk positions), one GEMM per weight group ``col_g @ W_gᵀ`` into rows (N, C_out), then
  transpose the rows to NCHW adding the bias;
- backward: the columns' gradient ``grad_out_gᵀ @ W_g``, the fused kernel (input-gradient scatter,
  offset and mask gradients, and the columns again, see ``deform_conv2d_kernels``), then
  ``g_weight += grad_out_g @ col_g``.

Weights are used tap-major, ``(C_out, kh, kw, C_in/groups)``, to match the channels-last columns.
Threads: the GEMMs use BLAS's own threads, the kernels Numba's (``cudcn.backends.cpu.threads``).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator

import numpy as np

from cudcn.backends import new_output
from cudcn.backends.cpu.deform_conv2d_kernels import (
    channels_first,
    deform_conv2d_col2im,
    deform_conv2d_im2col,
    pad_channels_last,
    sum_channels_first,
)
from cudcn.backends.cpu.threads import kernel_threads
from cudcn.ops.deform_conv2d import DeformConv2dParams

Pair = tuple[int, int]

COLUMN_BYTES = 256 * 2**20  # upper bound of the column buffers of one batch chunk
BACKWARD_TASKS = 4  # the backward splits output rows into slices until it has this many tasks


_phase_log: list[tuple[str, float]] | None = None


def _mark(phase: str) -> None:
    """End of ``phase``: logged with the time when ``record_phases`` is active, else nothing."""
    if _phase_log is not None:
        _phase_log.append((phase, time.perf_counter()))


@contextlib.contextmanager
def record_phases() -> Iterator[list[tuple[str, float]]]:
    """Within the block, the CPU deform_conv2d logs ``(phase, end time)`` into the list it yields,
    with a ``"start"`` entry at the start of each call (benchmarks/bench_deform_conv2d_cpu.py)."""
    global _phase_log
    log: list[tuple[str, float]] = []
    _phase_log = log
    try:
        yield log
    finally:
        _phase_log = None


@functools.lru_cache(maxsize=64)
def _runs(channels: int, groups: int, offset_groups: int) -> np.ndarray:
    """Channel runs ``(offset_group, weight_group, c_begin, c_end, part)``, an (R, 5) int64 array:
    the channels that share both groups; ``part`` numbers the runs of one offset group. Cached (a
    layer calls with the same channels every step); the kernels only read it."""
    per_og = channels // offset_groups
    per_g = channels // groups
    rows = []
    for og in range(offset_groups):
        part = 0
        for g in range(groups):
            lo, hi = max(og * per_og, g * per_g), min((og + 1) * per_og, (g + 1) * per_g)
            if lo < hi:
                rows.append((og, g, lo, hi, part))
                part += 1
    return np.array(rows, dtype=np.int64)


def _chunk(batch: int, channels: int, taps: int, positions: int, itemsize: int) -> int:
    """Batch items per chunk so that the columns stay within ``COLUMN_BYTES``."""
    return max(1, min(batch, COLUMN_BYTES // max(1, positions * channels * taps * itemsize)))


def _tap_major(weight: np.ndarray, groups: int) -> np.ndarray:
    """(C_out, C_in/groups, kh, kw) -> (groups, C_out/groups, kh·kw·C_in/groups), tap-major rows."""
    c_out, cg, kh, kw = weight.shape
    return np.ascontiguousarray(
        weight.reshape(groups, c_out // groups, cg, kh * kw).transpose(0, 1, 3, 2)
    ).reshape(groups, c_out // groups, kh * kw * cg)


def _padded(x: np.ndarray, work: int) -> np.ndarray:
    """The chunk input channels-last with a zero border: (Bc, H+2, W+2, C)."""
    bc, c, h, w = x.shape
    xpad = np.empty((bc, h + 2, w + 2, c), dtype=x.dtype)
    with kernel_threads(work) as serial:
        pad_channels_last(serial, x, xpad)
    _mark("copy/pad")
    return xpad


def _columns(x, offset, mask, runs, weight_shape, groups, params) -> np.ndarray:
    """The chunk's modulated columns (groups, N, K, C_in/groups)."""
    _, cg, kh, kw = weight_shape
    n = x.shape[0] * offset.shape[2] * offset.shape[3]
    col = np.empty((groups, n, kh * kw, cg), dtype=x.dtype)
    xpad = _padded(x, col.size)
    has_mask = mask is not None
    m = mask if has_mask else np.empty((1, 1, 1, 1), dtype=x.dtype)
    with kernel_threads(col.size) as serial:
        deform_conv2d_im2col(serial, xpad, offset, m, has_mask, runs, (kh, kw), *params, col)
    _mark("sampling")
    return col


def _params(p: DeformConv2dParams) -> tuple[Pair, Pair, Pair]:
    """Stride, padding and dilation as plain-int (h, w) tuples: the kernels' arguments."""
    return p.stride, p.padding, p.dilation


def deform_conv2d_forward(
    input: np.ndarray,
    offset: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    mask: np.ndarray | None,
    p: DeformConv2dParams,
) -> np.ndarray:
    """Deformable convolution on the CPU; shapes and semantics as ``cudcn.reference.deform_conv2d``.

    input (B, C_in, H, W), offset (B, 2·og·K, H_out, W_out), weight (C_out, C_in/groups, kh, kw),
    bias (C_out,) or None, mask (B, og·K, H_out, W_out) or None -> (B, C_out, H_out, W_out)."""
    _mark("start")
    b, c = input.shape[:2]
    c_out, _, kh, kw = weight.shape
    ho, wo = offset.shape[2:]
    groups, params = p.groups, _params(p)
    out = new_output(np, (b, c_out, ho, wo), input.dtype)
    w_mat = _tap_major(weight, groups)
    runs = _runs(c, groups, p.offset_groups)
    og_out = c_out // groups
    bias_arr = np.empty(1, input.dtype) if bias is None else bias
    step = _chunk(b, c, kh * kw, ho * wo, input.itemsize)
    for b0 in range(0, b, step):
        b1 = min(b, b0 + step)
        m = None if mask is None else mask[b0:b1]
        col = _columns(input[b0:b1], offset[b0:b1], m, runs, weight.shape, groups, params)
        col_mat = col.reshape(groups, col.shape[1], -1)
        rows = np.empty((col.shape[1], c_out), dtype=input.dtype)
        for g in range(groups):
            np.matmul(col_mat[g], w_mat[g].T, out=rows[:, g * og_out : (g + 1) * og_out])
        _mark("GEMM output")
        with kernel_threads(col.size) as serial:
            chunk = out[b0:b1].reshape(b1 - b0, c_out, ho * wo)
            channels_first(serial, rows, bias_arr, bias is not None, chunk)
        _mark("transpose+bias")
    return out


def deform_conv2d_backward(
    grad_out: np.ndarray,
    input: np.ndarray,
    offset: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    mask: np.ndarray | None,
    p: DeformConv2dParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gradients ``(g_input, g_offset, g_weight, g_bias, g_mask)`` on the CPU, shaped like their
    arguments (``g_bias``/``g_mask`` None when bias/mask are None); semantics as
    ``cudcn.reference.deform_conv2d``."""
    _mark("start")
    b, c = input.shape[:2]
    c_out, cg, kh, kw = weight.shape
    ho, wo = offset.shape[2:]
    dtype, groups = input.dtype, p.groups
    grads = (
        new_output(np, input.shape, dtype),
        new_output(np, offset.shape, dtype),
        None if mask is None else new_output(np, mask.shape, dtype),
    )
    g_w = np.zeros((groups, c_out // groups, kh * kw * cg), dtype=dtype)
    step = _chunk(b, c, kh * kw, ho * wo, 2 * input.itemsize)  # columns and their gradient
    for b0 in range(0, b, step):
        chunk = slice(b0, min(b, b0 + step))
        m = None if mask is None else mask[chunk]
        _backward_chunk(
            grad_out[chunk],
            input[chunk],
            offset[chunk],
            weight,
            m,
            b0 > 0,
            g_w,
            grads[0][chunk],
            grads[1][chunk],
            None if grads[2] is None else grads[2][chunk],
            p,
        )
    g_weight = g_w.reshape(groups, c_out // groups, kh * kw, cg).transpose(0, 1, 3, 2)
    g_weight = np.ascontiguousarray(g_weight).reshape(c_out, cg, kh, kw)
    g_bias = None if bias is None else grad_out.sum(axis=(0, 2, 3), dtype=dtype)
    _mark("weight/bias reduction")
    return grads[0], grads[1], g_weight, g_bias, grads[2]


def _backward_chunk(
    grad_out,
    input,
    offset,
    weight,
    mask,
    accumulate,
    g_w,
    g_input,
    g_offset,
    g_mask,
    p: DeformConv2dParams,
) -> None:
    """The backward of one batch chunk: adds to ``g_w`` (or sets it unless ``accumulate``) and writes
    the chunk's ``g_input``, ``g_offset`` and ``g_mask`` (when not None).

    Order: the columns' gradient ``grad_out_gᵀ @ W_g``; the fused kernel, which also rebuilds the
    columns; then ``g_weight += grad_out_g @ col_g``."""
    bc, c = input.shape[:2]
    c_out, cg, kh, kw = weight.shape
    ho, wo = offset.shape[2:]
    groups, params = p.groups, _params(p)
    og_out = c_out // groups
    runs = _runs(c, groups, p.offset_groups)
    parts = int(runs[:, 4].max()) + 1
    w_mat = _tap_major(weight, groups)
    go = grad_out.reshape(bc, c_out, ho * wo)
    go = go[0] if bc == 1 else np.ascontiguousarray(go.transpose(1, 0, 2)).reshape(c_out, -1)
    gcol = np.empty((groups, bc * ho * wo, kh * kw, cg), dtype=input.dtype)
    for g in range(groups):
        go_g = go[g * og_out : (g + 1) * og_out]
        np.matmul(go_g.T, w_mat[g], out=gcol[g].reshape(gcol.shape[1], -1))
    _mark("GEMM column gradient")
    xpad = _padded(input, gcol.size)
    col = np.empty_like(gcol)
    slices = max(1, min(ho, -(-BACKWARD_TASKS // (bc * len(runs)))))
    gin = np.zeros((slices, *xpad.shape), dtype=input.dtype)
    g_off = g_offset[None] if parts == 1 else np.zeros((parts, *offset.shape), input.dtype)
    g_m = np.empty((1, 1, 1, 1, 1), dtype=input.dtype)
    if mask is not None:
        g_m = g_mask[None] if parts == 1 else np.zeros((parts, *mask.shape), input.dtype)
    m = np.empty((1, 1, 1, 1), dtype=input.dtype) if mask is None else mask
    scratch = np.empty((bc * len(runs) * slices, 3, cg), dtype=input.dtype)
    with kernel_threads(col.size) as serial:
        args = (xpad, offset, m, mask is not None, runs, (kh, kw), *params, gcol, col, gin, g_off)
        deform_conv2d_col2im(serial, *args, g_m, scratch)
        _mark("backward kernel")
        sum_channels_first(serial, gin, g_input)
        _mark("input-gradient reduction")
    for g in range(groups):
        go_g = go[g * og_out : (g + 1) * og_out]
        gw = np.empty_like(g_w[g]) if accumulate else g_w[g]
        np.matmul(go_g, col[g].reshape(col.shape[1], -1), out=gw)
        if accumulate:
            g_w[g] += gw
    _mark("GEMM weight gradient")
    if parts > 1:
        g_off.sum(axis=0, out=g_offset)
        if mask is not None:
            g_m.sum(axis=0, out=g_mask)
        _mark("offset/mask reduction")
