"""deform_roi_pool on the CPU: Numba kernels for deformable RoIAlign (and roi_align, its offset-free case).

Organised for CPU speed, with the formulas of ``kernels/deform_roi_pool.cu``; RoIAlign's sampling
rule comes from ``backends/cpu/roi_align.py`` (the names of ``kernels/roi_align.cuh``). Where the
``.cu`` kernels give one thread per output element and read NCHW planes, here the image is transposed
to channels-last (B, H * W, C) and ``roi_align_bin_taps`` lists the pixels a bin reads with their
weights (a bin's samples share pixels, so small grids merge them); every
step then works on contiguous vectors of C channels. RoI geometry is computed in float64; weights and
sums are kept in the input's dtype.

- forward: parallel over ranges of RoIs; RoI r writes only ``out[r]``.
- input gradient: parallel over blocks of channels into a channels-last buffer. A thread owns a block
  of channels of every pixel and visits RoIs, bins and pixels in order, so every element is summed in
  one fixed order whatever the number of threads: deterministic, no atomics.
- offset gradient: parallel over ranges of RoIs; RoI r owns ``grad_offset[r]``.

Nothing is allocated inside a parallel loop (Numba loses a MemoryError there and the kernel goes on
with garbage): the wrappers allocate one scratch slice per task (``tap_scratch``), sized for the
largest bin; a call gives the right result or raises. Non-finite data follow the reference's IEEE
arithmetic (0 * inf = NaN): taps are merged only for finite data (``merge_allowed``).
"""

from __future__ import annotations

import numba
import numpy as np

from cudcn.backends import new_output
from cudcn.backends.cpu.roi_align import (
    roi_align_geometry,
    roi_align_grid,
    roi_align_inside,
    roi_align_weights,
)
from cudcn.backends.cpu.threads import kernel_threads
from cudcn.ops.deform_roi_pool import DeformRoIPoolParams

MERGE_LIMIT = 64  # bins with at most this many corner taps merge the taps that share a pixel


@numba.njit(cache=True, nogil=True)
def add_tap(pixel, weight, weight_dx, weight_dy, first, e, p, w, wx, wy, merge):
    """Add corner p with weights (w, wx, wy) to the entries first:e of the current bin; returns the
    new entry count. With ``merge`` an entry of the same pixel takes the weights (linear search)."""
    if merge:
        for f in range(first, e):
            if pixel[f] == p:
                weight[f] += w
                weight_dx[f] += wx
                weight_dy[f] += wy
                return e
    pixel[e] = p
    weight[e] = w
    weight_dx[e] = wx
    weight_dy[e] = wy
    return e + 1


def tap_scratch(
    n_tasks: int, capacity: int, dtype: np.dtype, acc_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scratch of the RoI kernels, one slice per parallel task: ``(pixel, weights, acc)`` =
    (tasks, capacity) int64, (tasks, 3, capacity) and (tasks, acc_rows) of ``dtype``. Allocated here,
    in Python, where a failed allocation raises MemoryError (inside a ``prange`` Numba loses it
    and the kernel goes on with garbage)."""
    pixel = np.empty((n_tasks, max(capacity, 1)), np.int64)
    weights = np.empty((n_tasks, 3, max(capacity, 1)), dtype)
    return pixel, weights, np.empty((n_tasks, max(acc_rows, 1)), dtype)


def merge_allowed(*arrays: np.ndarray) -> bool:
    """Taps that share a pixel may merge (one weight per pixel) only when the arrays they multiply are
    finite: with an inf, ``w1 * inf + w2 * inf`` is not ``(w1 + w2) * inf`` where a weight is 0
    (NaN, as the reference computes, against inf). Non-finite data take every tap on its own."""
    return all(bool(np.isfinite(a).all()) for a in arrays)


@numba.njit(cache=True, nogil=True)
def roi_align_max_taps(rois, geometry):
    """Corner taps of the largest bin over all RoIs: ``4 * grid_h * grid_w``, the scratch capacity."""
    pooled_h, pooled_w, _, _, spatial_scale, sampling_ratio, _, aligned = geometry
    most = 0
    for r in range(rois.shape[0]):
        _, _, _, roi_h, roi_w = roi_align_geometry(rois[r], spatial_scale, aligned)
        grid_h = roi_align_grid(roi_h, pooled_h, sampling_ratio)
        grid_w = roi_align_grid(roi_w, pooled_w, sampling_ratio)
        most = max(most, 4 * grid_h * grid_w)
    return most


@numba.njit(cache=True, nogil=True)
def roi_align_bin_taps(rois, offset, r, k, geometry, merge, pixel, weight, weight_dx, weight_dy):
    """The pixels bin k = i * pooled_w + j of RoI r reads, with weights, into the arrays given
    (capacity ``4 * grid_h * grid_w``, see ``roi_align_max_taps``).

    ``geometry = (pooled_h, pooled_w, height, width, spatial_scale, sampling_ratio, gamma,
    aligned)``. ``pixel[e] = y * W + x``; ``weight[e]`` is the bilinear weight of a sample's corner at
    that pixel, ``weight_dx[e]`` / ``weight_dy[e]`` those of d value / dx and d value / dy. With
    ``merge`` and a small grid (``MERGE_LIMIT``) the corners at one pixel share an entry (weights
    summed); otherwise every inside sample takes 4 entries in a row. Returns ``(entries, b, roi_h,
    roi_w, count)``; ``count = max(grid_h * grid_w, 1)`` divides the bin.
    """
    pooled_h, pooled_w, height, width, spatial_scale, sampling_ratio, gamma, aligned = geometry
    b, start_y, start_x, roi_h, roi_w = roi_align_geometry(rois[r], spatial_scale, aligned)
    bin_h = roi_h / pooled_h
    bin_w = roi_w / pooled_w
    grid_h = roi_align_grid(roi_h, pooled_h, sampling_ratio)
    grid_w = roi_align_grid(roi_w, pooled_w, sampling_ratio)
    merge = merge and 4 * grid_h * grid_w <= MERGE_LIMIT
    i = k // pooled_w
    j = k % pooled_w
    bin_x = start_x + gamma * roi_w * offset[r, 0, i, j]
    bin_y = start_y + gamma * roi_h * offset[r, 1, i, j]
    args = (pixel, weight, weight_dx, weight_dy, 0)
    e = 0
    for iy in range(grid_h):
        y = bin_y + i * bin_h + (iy + 0.5) * bin_h / grid_h
        for ix in range(grid_w):
            x = bin_x + j * bin_w + (ix + 0.5) * bin_w / grid_w
            if not roi_align_inside(height, width, y, x):
                continue
            y_low, y_high, x_low, x_high, ly, lx, y_moves, x_moves = roi_align_weights(height, width, y, x)
            hy = 1.0 - ly
            hx = 1.0 - lx
            mx = 1.0 if x_moves else 0.0
            my = 1.0 if y_moves else 0.0
            p = y_low * width
            e = add_tap(*args, e, p + x_low, hy * hx, -hy * mx, -hx * my, merge)
            e = add_tap(*args, e, p + x_high, hy * lx, hy * mx, -lx * my, merge)
            p = y_high * width
            e = add_tap(*args, e, p + x_low, ly * hx, -ly * mx, hx * my, merge)
            e = add_tap(*args, e, p + x_high, ly * lx, ly * mx, lx * my, merge)
    return e, b, roi_h, roi_w, float(max(grid_h * grid_w, 1))


@numba.njit(cache=True, nogil=True)
def _accumulate(acc, rows, pixel, weight, begin, end):
    """``acc[c] += weight[e] * rows[pixel[e], c]`` for the entries begin:end; rows: one
    channels-last image (H * W, C). Vectorised over c."""
    for e in range(begin, end):
        w = weight[e]
        p = pixel[e]
        for c in range(acc.shape[0]):
            acc[c] += w * rows[p, c]


@numba.njit(cache=True, nogil=True)
def _accumulate_xy(acc_x, acc_y, rows, pixel, weight_x, weight_y, begin, end):
    """``_accumulate`` of two weight sets in one pass over the rows."""
    for e in range(begin, end):
        wx = weight_x[e]
        wy = weight_y[e]
        p = pixel[e]
        for c in range(acc_x.shape[0]):
            acc_x[c] += wx * rows[p, c]
            acc_y[c] += wy * rows[p, c]


@numba.njit(parallel=True, cache=True)
def deform_roi_pool_forward_kernel(input_cl, rois, offset, out, geometry, merge, pixel, weights, acc):
    """out (R, C, ph, pw) from the channels-last input (B, H * W, C); one task per scratch slice
    (``tap_scratch``), each over a contiguous range of RoIs."""
    n_rois, channels, pooled_h, pooled_w = out.shape
    n_tasks = pixel.shape[0]
    for t in numba.prange(n_tasks):
        a = acc[t, :channels]
        for r in range(t * n_rois // n_tasks, (t + 1) * n_rois // n_tasks):
            for k in range(pooled_h * pooled_w):
                entries, b, _, _, count = roi_align_bin_taps(
                    rois, offset, r, k, geometry, merge, pixel[t], weights[t, 0], weights[t, 1], weights[t, 2]
                )
                a[:] = 0.0
                _accumulate(a, input_cl[b], pixel[t], weights[t, 0], 0, entries)
                for c in range(channels):
                    out[r, c, k // pooled_w, k % pooled_w] = a[c] / count


@numba.njit(parallel=True, cache=True)
def deform_roi_pool_grad_input_kernel(grad_out, rois, offset, grad_cl, geometry, merge, pixel, weights, acc):
    """grad_cl (B, H * W, C), zeroed, += the transposed forward; one task per block of channels
    (a scratch slice each), visiting RoIs, bins and pixels in order (the same order for every block
    count)."""
    n_rois, channels, pooled_h, pooled_w = grad_out.shape
    n_blocks = pixel.shape[0]
    for block in numba.prange(n_blocks):
        c_begin = block * channels // n_blocks
        c_end = (block + 1) * channels // n_blocks
        g = acc[block, : c_end - c_begin]
        weight = weights[block, 0]
        for r in range(n_rois):
            for k in range(pooled_h * pooled_w):
                entries, b, _, _, count = roi_align_bin_taps(
                    rois,
                    offset,
                    r,
                    k,
                    geometry,
                    merge,
                    pixel[block],
                    weight,
                    weights[block, 1],
                    weights[block, 2],
                )
                for c in range(c_begin, c_end):
                    g[c - c_begin] = grad_out[r, c, k // pooled_w, k % pooled_w] / count
                for e in range(entries):
                    w = weight[e]
                    row = grad_cl[b, pixel[block, e], c_begin:c_end]
                    for c in range(row.shape[0]):
                        row[c] += w * g[c]


@numba.njit(parallel=True, cache=True)
def deform_roi_pool_grad_offset_kernel(
    grad_out, input_cl, rois, offset, grad_offset, geometry, merge, pixel, weights, acc
):
    """grad_offset (R, 2, ph, pw): per bin, sum over channels of grad_out times d value / dx, dy;
    one task per scratch slice, each over a contiguous range of RoIs. Without ``merge`` the
    channel sum is taken per sample (4 entries) and the samples' sums added, as the reference does
    (a non-finite grad_out times a sample's zero derivative is NaN)."""
    n_rois, channels, pooled_h, pooled_w = grad_out.shape
    gamma = geometry[6]
    n_tasks = pixel.shape[0]
    for t in numba.prange(n_tasks):
        acc_x = acc[t, :channels]
        acc_y = acc[t, channels : 2 * channels]
        for r in range(t * n_rois // n_tasks, (t + 1) * n_rois // n_tasks):
            for k in range(pooled_h * pooled_w):
                i = k // pooled_w
                j = k % pooled_w
                entries, b, roi_h, roi_w, count = roi_align_bin_taps(
                    rois, offset, r, k, geometry, merge, pixel[t], weights[t, 0], weights[t, 1], weights[t, 2]
                )
                step = max(entries, 1) if merge else 4
                sum_x = 0.0
                sum_y = 0.0
                for begin in range(0, entries, step):
                    acc_x[:] = 0.0
                    acc_y[:] = 0.0
                    _accumulate_xy(
                        acc_x, acc_y, input_cl[b], pixel[t], weights[t, 1], weights[t, 2], begin, begin + step
                    )
                    for c in range(channels):
                        sum_x += grad_out[r, c, i, j] * acc_x[c]
                        sum_y += grad_out[r, c, i, j] * acc_y[c]
                grad_offset[r, 0, i, j] = gamma * roi_w * sum_x / count
                grad_offset[r, 1, i, j] = gamma * roi_h * sum_y / count


@numba.njit(parallel=True, cache=True)
def _to_channels_last_kernel(input, out):
    """out (B, H * W, C) = input (B, C, H, W) transposed; parallel over image rows."""
    batch, channels, height, width = input.shape
    for by in numba.prange(batch * height):
        b = by // height
        y = by % height
        for c in range(channels):
            for x in range(width):
                out[b, y * width + x, c] = input[b, c, y, x]


def to_channels_last(input: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> a new (B, H * W, C) array (allocated here, where a failure raises)."""
    batch, channels, height, width = input.shape
    out = np.empty((batch, height * width, channels), input.dtype)
    _to_channels_last_kernel(input, out)
    return out


@numba.njit(parallel=True, cache=True)
def from_channels_last(input_cl, out):
    """out (B, C, H, W) = input_cl (B, H * W, C) transposed (and cast to out's dtype)."""
    batch, channels, height, width = out.shape
    for by in numba.prange(batch * height):
        b = by // height
        y = by % height
        for c in range(channels):
            for x in range(width):
                out[b, c, y, x] = input_cl[b, y * width + x, c]


def _geometry(input: np.ndarray, p: DeformRoIPoolParams) -> tuple:
    """The ``geometry`` tuple of the kernels."""
    height, width = input.shape[2:]
    return (
        p.pooled_h,
        p.pooled_w,
        int(height),
        int(width),
        p.spatial_scale,
        p.sampling_ratio,
        p.gamma,
        p.aligned,
    )


def _geometry_inputs(rois: np.ndarray, offset: np.ndarray | None, p: DeformRoIPoolParams):
    """``rois`` and ``offset`` as float64 (the geometry is computed in float64), a zero offset for
    None (it moves nothing): the kernels are compiled once per input dtype only."""
    if offset is None:
        offset = np.zeros((rois.shape[0], 2, p.pooled_h, p.pooled_w))
    return np.ascontiguousarray(rois, np.float64), np.ascontiguousarray(offset, np.float64)


def _scratch(rois: np.ndarray, geometry: tuple, n_tasks: int, dtype: np.dtype, acc_rows: int):
    """``tap_scratch`` for ``n_tasks`` tasks, sized for the largest bin of ``rois``."""
    return tap_scratch(n_tasks, roi_align_max_taps(rois, geometry), dtype, acc_rows)


def deform_roi_pool_forward(
    input: np.ndarray,
    rois: np.ndarray,
    offset: np.ndarray | None,
    p: DeformRoIPoolParams,
) -> np.ndarray:
    """(R, C, pooled_h, pooled_w) pooled RoIs; see ``cudcn.ops.deform_roi_pool``."""
    rois, offset = _geometry_inputs(rois, offset, p)
    geometry = _geometry(input, p)
    out = new_output(np, (rois.shape[0], input.shape[1], p.pooled_h, p.pooled_w), input.dtype)
    n_tasks = min(numba.get_num_threads(), rois.shape[0])
    scratch = _scratch(rois, geometry, n_tasks, input.dtype, input.shape[1])
    merge = merge_allowed(input)
    with kernel_threads():
        deform_roi_pool_forward_kernel(to_channels_last(input), rois, offset, out, geometry, merge, *scratch)
    return out


def deform_roi_pool_backward(
    grad_out: np.ndarray,
    input: np.ndarray,
    rois: np.ndarray,
    offset: np.ndarray | None,
    p: DeformRoIPoolParams,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients ``(grad_input, grad_offset)``; ``grad_offset`` is None when ``offset`` is None."""
    rois, offset64 = _geometry_inputs(rois, offset, p)
    geometry = _geometry(input, p)
    batch, channels, height, width = input.shape
    grad_cl = np.zeros((batch, height * width, channels), input.dtype)
    n_blocks = min(numba.get_num_threads(), channels)
    scratch = _scratch(rois, geometry, n_blocks, input.dtype, channels)
    grad_input = new_output(np, input.shape, input.dtype)
    with kernel_threads():
        deform_roi_pool_grad_input_kernel(
            grad_out, rois, offset64, grad_cl, geometry, merge_allowed(grad_out), *scratch
        )
        from_channels_last(grad_cl, grad_input)
    if offset is None:
        return grad_input, None
    grad_offset = new_output(np, offset.shape, np.float64)
    n_tasks = min(numba.get_num_threads(), rois.shape[0])
    scratch = _scratch(rois, geometry, n_tasks, input.dtype, 2 * channels)
    merge = merge_allowed(input, grad_out)
    with kernel_threads():
        deform_roi_pool_grad_offset_kernel(
            grad_out, to_channels_last(input), rois, offset64, grad_offset, geometry, merge, *scratch
        )
    return grad_input, grad_offset.astype(offset.dtype)
