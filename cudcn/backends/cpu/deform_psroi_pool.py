"""deform_psroi_pool on the CPU: Numba kernels for deformable position-sensitive RoI pooling (R-FCN).

The formulas and helper names are those of ``kernels/deform_psroi_pool.cu`` (``round_half_away``,
``psroi_inside``, ``psroi_weights``; ``psroi_geometry`` is the RoI part of its ``psroi_bin``). Where the
``.cu`` kernels give one thread per output element, here ``psroi_bin_taps`` computes the pixels and
weights of a bin once for all the output channels of one class (the samples depend on the class only
through ``trans``). The geometry is computed in float64 for either dtype. Writes are partitioned, so
the results are deterministic without atomics:

- forward: parallel over ranges of RoIs; RoI r writes only ``out[r]``.
- input gradient: parallel over blocks of ``ctop``. Output channel ``ctop`` reads only the input
  channels ``ctop * group_size**2 ... (ctop + 1) * group_size**2 - 1``, so a thread owns those planes of
  ``grad_input`` and visits RoIs, bins and samples in order.
- trans gradient: parallel over ranges of RoIs; RoI r owns ``grad_trans[r]``.

Scratch is allocated by the wrappers, one slice per task (``tap_scratch``): nothing is allocated
inside a parallel loop. Taps merge only for finite data (``merge_allowed``), so non-finite values
give the reference's NaN and inf.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from cudcn.backends import new_output
from cudcn.backends.cpu.deform_roi_pool import MERGE_LIMIT, add_tap, merge_allowed, tap_scratch
from cudcn.backends.cpu.threads import kernel_threads
from cudcn.ops.deform_psroi_pool import DeformPSRoIPoolParams


@numba.njit(cache=True, nogil=True)
def round_half_away(v):
    """C's ``round``: halves go away from zero."""
    t = float(math.trunc(v))
    if abs(v - t) >= 0.5:
        t += 1.0 if v > 0 else -1.0
    return t


@numba.njit(cache=True, nogil=True)
def psroi_geometry(roi, spatial_scale):
    """Batch index, start (y, x) and size (h, w) of one rounded RoI in input pixels."""
    start_x = round_half_away(roi[1]) * spatial_scale - 0.5
    start_y = round_half_away(roi[2]) * spatial_scale - 0.5
    end_x = (round_half_away(roi[3]) + 1.0) * spatial_scale - 0.5
    end_y = (round_half_away(roi[4]) + 1.0) * spatial_scale - 0.5
    return int(roi[0]), start_y, start_x, max(end_y - start_y, 0.1), max(end_x - start_x, 0.1)


@numba.njit(cache=True, nogil=True)
def psroi_inside(height, width, h, w):
    """A sample counts when it lies in ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``; false for NaN."""
    return w >= -0.5 and w <= width - 0.5 and h >= -0.5 and h <= height - 0.5


@numba.njit(cache=True, nogil=True)
def psroi_weights(height, width, h, w):
    """Clamp an inside sample to the image; its floor/ceil taps and fractions.

    Returns ``(y0, y1, x0, x1, dist_y, dist_x)``; at an integer coordinate both taps coincide.
    """
    h = min(max(h, 0.0), height - 1.0)
    w = min(max(w, 0.0), width - 1.0)
    y0 = math.floor(h)
    x0 = math.floor(w)
    return y0, math.ceil(h), x0, math.ceil(w), h - y0, w - x0


@numba.njit(cache=True, nogil=True)
def psroi_bin_taps(rois, trans, r, cls, i, j, geometry, merge, pixel, weight, weight_dx, weight_dy):
    """Bin (i, j) of RoI r for the output channels of class cls: fills the pixels it reads, with
    their weights, into the arrays given (capacity ``4 * sample_per_part**2``).

    ``geometry = (spatial_scale, group_size, pooled_size, part_size, sample_per_part, trans_std,
    height, width)``. ``weight[e]`` is the bilinear weight of a valid sample's corner at pixel
    ``pixel[e] = y * W + x``; ``weight_dx[e]`` / ``weight_dy[e]`` those of d value / dx, dy (0 along
    an axis where floor == ceil). With ``merge`` and few samples (``MERGE_LIMIT``) the corners at
    one pixel share an entry; otherwise every valid sample takes 4 entries in a row. Returns
    ``(entries, count, b, g, part_i, part_j, roi_h, roi_w)``: ``count`` valid samples; output
    channel ctop reads input channel ``ctop * group_size**2 + g``.
    """
    scale, group_size, pooled, part_size, per_part, trans_std, height, width = geometry
    b, start_y, start_x, roi_h, roi_w = psroi_geometry(rois[r], scale)
    merge = merge and 4 * per_part * per_part <= MERGE_LIMIT
    bin_h = roi_h / pooled
    bin_w = roi_w / pooled
    part_i = i * part_size // pooled
    part_j = j * part_size // pooled
    gh = min(i * group_size // pooled, group_size - 1)
    gw = min(j * group_size // pooled, group_size - 1)
    h0 = i * bin_h + start_y + trans[r, 2 * cls + 1, part_i, part_j] * trans_std * roi_h
    w0 = j * bin_w + start_x + trans[r, 2 * cls, part_i, part_j] * trans_std * roi_w
    sub_h = bin_h / per_part
    sub_w = bin_w / per_part
    args = (pixel, weight, weight_dx, weight_dy, 0)
    e = 0
    count = 0
    for ih in range(per_part):
        for iw in range(per_part):
            h = h0 + ih * sub_h
            w = w0 + iw * sub_w
            if not psroi_inside(height, width, h, w):
                continue
            y0, y1, x0, x1, dy, dx = psroi_weights(height, width, h, w)
            mx = 1.0 if x1 != x0 else 0.0
            my = 1.0 if y1 != y0 else 0.0
            e = add_tap(*args, e, y0 * width + x0, (1 - dx) * (1 - dy), -(1 - dy) * mx, -(1 - dx) * my, merge)
            e = add_tap(*args, e, y1 * width + x0, (1 - dx) * dy, -dy * mx, (1 - dx) * my, merge)
            e = add_tap(*args, e, y0 * width + x1, dx * (1 - dy), (1 - dy) * mx, -dx * my, merge)
            e = add_tap(*args, e, y1 * width + x1, dx * dy, dy * mx, dx * my, merge)
            count += 1
    return e, count, b, gh * group_size + gw, part_i, part_j, roi_h, roi_w


@numba.njit(cache=True, nogil=True)
def _dot(plane, pixel, weight, begin, end):
    """Sum of ``weight[e] * plane[pixel[e]]`` over the entries begin:end."""
    acc = 0.0
    for e in range(begin, end):
        acc += weight[e] * plane[pixel[e]]
    return acc


@numba.njit(parallel=True, cache=True)
def deform_psroi_pool_forward_kernel(input, rois, trans, out, geometry, merge, pixel, weights):
    """out (R, output_dim, P, P); one task per scratch slice (``tap_scratch``), each over a
    contiguous range of RoIs."""
    n_rois, output_dim, pooled, _ = out.shape
    per_class = output_dim // (trans.shape[1] // 2)
    group_size = geometry[1]
    planes = input.reshape((input.shape[0], input.shape[1], -1))
    n_tasks = pixel.shape[0]
    for t in numba.prange(n_tasks):
        for r in range(t * n_rois // n_tasks, (t + 1) * n_rois // n_tasks):
            for k in range(trans.shape[1] // 2 * pooled * pooled):
                cls = k // (pooled * pooled)
                i = k // pooled % pooled
                j = k % pooled
                entries, count, b, g, _, _, _, _ = psroi_bin_taps(
                    rois,
                    trans,
                    r,
                    cls,
                    i,
                    j,
                    geometry,
                    merge,
                    pixel[t],
                    weights[t, 0],
                    weights[t, 1],
                    weights[t, 2],
                )
                for ctop in range(cls * per_class, (cls + 1) * per_class):
                    plane = planes[b, ctop * group_size**2 + g]
                    acc = _dot(plane, pixel[t], weights[t, 0], 0, entries)
                    out[r, ctop, i, j] = acc / count if count > 0 else 0.0


@numba.njit(parallel=True, cache=True)
def deform_psroi_pool_grad_input_kernel(grad_out, rois, trans, grad_input, geometry, merge, pixel, weights):
    """grad_input (B, C, H, W), zeroed, += the transposed forward; one task per block of output
    channels (each owns the input channels it reads; a scratch slice each), visiting RoIs, bins and
    pixels in order."""
    n_rois, output_dim, pooled, _ = grad_out.shape
    per_class = output_dim // (trans.shape[1] // 2)
    group_size = geometry[1]
    planes = grad_input.reshape((grad_input.shape[0], grad_input.shape[1], -1))
    n_blocks = pixel.shape[0]
    for block in numba.prange(n_blocks):
        c_begin = block * output_dim // n_blocks
        c_end = (block + 1) * output_dim // n_blocks
        weight = weights[block, 0]
        for r in range(n_rois):
            for k in range(pooled * pooled):
                i = k // pooled
                j = k % pooled
                for cls in range(c_begin // per_class, (c_end - 1) // per_class + 1):
                    entries, count, b, g, _, _, _, _ = psroi_bin_taps(
                        rois,
                        trans,
                        r,
                        cls,
                        i,
                        j,
                        geometry,
                        merge,
                        pixel[block],
                        weight,
                        weights[block, 1],
                        weights[block, 2],
                    )
                    if count == 0:
                        continue
                    for ctop in range(max(cls * per_class, c_begin), min((cls + 1) * per_class, c_end)):
                        plane = planes[b, ctop * group_size**2 + g]
                        grad = grad_out[r, ctop, i, j] / count
                        for e in range(entries):
                            plane[pixel[block, e]] += weight[e] * grad


@numba.njit(parallel=True, cache=True)
def deform_psroi_pool_grad_trans_kernel(
    grad_out, input, rois, trans, grad_trans, geometry, merge, pixel, weights
):
    """grad_trans (R, 2 * K, part, part), zeroed, += each bin's share; one task per scratch slice,
    each over a contiguous range of RoIs summing their bins in order. Without ``merge`` each sample
    (4 entries) is scaled by the gradient on its own, as the reference does."""
    n_rois, output_dim, pooled, _ = grad_out.shape
    per_class = output_dim // (trans.shape[1] // 2)
    group_size, trans_std = geometry[1], geometry[5]
    planes = input.reshape((input.shape[0], input.shape[1], -1))
    n_tasks = pixel.shape[0]
    for t in numba.prange(n_tasks):
        for r in range(t * n_rois // n_tasks, (t + 1) * n_rois // n_tasks):
            for k in range(trans.shape[1] // 2 * pooled * pooled):
                cls = k // (pooled * pooled)
                i = k // pooled % pooled
                j = k % pooled
                entries, count, b, g, pi, pj, roi_h, roi_w = psroi_bin_taps(
                    rois,
                    trans,
                    r,
                    cls,
                    i,
                    j,
                    geometry,
                    merge,
                    pixel[t],
                    weights[t, 0],
                    weights[t, 1],
                    weights[t, 2],
                )
                if count == 0:
                    continue
                step = entries if merge else 4
                for ctop in range(cls * per_class, (cls + 1) * per_class):
                    plane = planes[b, ctop * group_size**2 + g]
                    grad = grad_out[r, ctop, i, j] / count
                    for begin in range(0, entries, step):
                        d_x = _dot(plane, pixel[t], weights[t, 1], begin, begin + step)
                        d_y = _dot(plane, pixel[t], weights[t, 2], begin, begin + step)
                        grad_trans[r, 2 * cls, pi, pj] += d_x * trans_std * roi_w * grad
                        grad_trans[r, 2 * cls + 1, pi, pj] += d_y * trans_std * roi_h * grad


def _geometry(input: np.ndarray, p: DeformPSRoIPoolParams) -> tuple:
    """The ``geometry`` tuple of the kernels."""
    height, width = input.shape[2:]
    return (
        p.spatial_scale,
        p.group_size,
        p.pooled_size,
        p.part_size,
        p.sample_per_part,
        p.trans_std,
        int(height),
        int(width),
    )


def _geometry_inputs(rois: np.ndarray, trans: np.ndarray | None, part_size: int):
    """``rois`` and ``trans`` as float64 (the geometry is computed in float64), a zero trans of one
    class for None (it moves nothing): the kernels are compiled once per input dtype only."""
    if trans is None:
        trans = np.zeros((rois.shape[0], 2, part_size, part_size))
    return np.ascontiguousarray(rois, np.float64), np.ascontiguousarray(trans, np.float64)


def _scratch(p: DeformPSRoIPoolParams, n_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pixel, weights)`` of ``tap_scratch`` for ``n_tasks`` tasks (float64 weights)."""
    pixel, weights, _ = tap_scratch(n_tasks, 4 * p.sample_per_part**2, np.dtype(np.float64), 0)
    return pixel, weights


def deform_psroi_pool_forward(
    input: np.ndarray,
    rois: np.ndarray,
    trans: np.ndarray | None,
    p: DeformPSRoIPoolParams,
) -> np.ndarray:
    """(R, output_dim, pooled_size, pooled_size) pooled RoIs; see ``cudcn.ops.deform_psroi_pool``."""
    rois, trans = _geometry_inputs(rois, trans, p.part_size)
    geometry = _geometry(input, p)
    out = new_output(np, (rois.shape[0], p.output_dim, p.pooled_size, p.pooled_size), input.dtype)
    scratch = _scratch(p, min(numba.get_num_threads(), rois.shape[0]))
    with kernel_threads():
        deform_psroi_pool_forward_kernel(input, rois, trans, out, geometry, merge_allowed(input), *scratch)
    return out


def deform_psroi_pool_backward(
    grad_out: np.ndarray,
    input: np.ndarray,
    rois: np.ndarray,
    trans: np.ndarray | None,
    p: DeformPSRoIPoolParams,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients ``(grad_input, grad_trans)``; ``grad_trans`` is None when ``trans`` is None."""
    rois, trans64 = _geometry_inputs(rois, trans, p.part_size)
    geometry = _geometry(input, p)
    grad_input = np.zeros_like(input)
    scratch = _scratch(p, min(numba.get_num_threads(), p.output_dim))
    with kernel_threads():
        deform_psroi_pool_grad_input_kernel(
            grad_out, rois, trans64, grad_input, geometry, merge_allowed(grad_out), *scratch
        )
    if trans is None:
        return grad_input, None
    grad_trans = np.zeros(trans.shape, np.float64)
    scratch = _scratch(p, min(numba.get_num_threads(), rois.shape[0]))
    merge = merge_allowed(input, grad_out)
    with kernel_threads():
        deform_psroi_pool_grad_trans_kernel(
            grad_out, input, rois, trans64, grad_trans, geometry, merge, *scratch
        )
    return grad_input, grad_trans.astype(trans.dtype)
