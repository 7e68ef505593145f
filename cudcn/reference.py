"""Plain NumPy float64 definitions of cudcn's ops: the ground truth every backend is tested against.

Readable over fast. Each function has the signature of the backends' array-level function of the same
name (see ``cudcn.backends``), computes in float64 whatever the input dtype and returns float64 arrays.

deform_conv2d: loops over batch items, offset groups and kernel taps; each step is vectorised over the
output positions and the channels of one offset group. Notation: ``K = kh·kw`` taps, tap ``k = i·kw + j``;
``og`` offset groups of ``C_in / og`` channels; ``groups`` weight groups of ``C_in / groups`` input and
``C_out / groups`` output channels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

__all__ = [
    "Corner",
    "bilinear_corners",
    "deform_conv2d_backward",
    "deform_conv2d_forward",
]

Pair = tuple[int, int]


class Corner(NamedTuple):
    """One bilinear neighbour of a set of points; every field is an array shaped like the points.

    ``ok``: the neighbour is used (the point is in range and the neighbour inside the image);
    ``row``, ``col``: its pixel (0 where not ok, so that indexing stays in range); ``w``: its bilinear
    weight (0 where not ok); ``dw_dy``, ``dw_dx``: the weight's derivatives with respect to the point.
    """

    ok: np.ndarray
    row: np.ndarray
    col: np.ndarray
    w: np.ndarray
    dw_dy: np.ndarray
    dw_dx: np.ndarray

    def value(self, img: np.ndarray) -> np.ndarray:
        """The neighbour's pixel of ``img`` (C, H, W) for every point, 0 where not ok: (C, *points)."""
        return np.where(self.ok, img[:, self.row, self.col], 0.0)


def bilinear_corners(y: np.ndarray, x: np.ndarray, height: int, width: int) -> list[Corner]:
    """The four floor-based neighbours (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1) of ``(y, x)``.

    A neighbour outside the image is not used (it counts as 0). A point with ``y < -1``, ``y >= height``,
    ``x < -1`` or ``x >= width`` (NaN included) uses no neighbour. At ``y = -1`` exactly the formula
    itself gives the value 0 (the only inside neighbour, row 0, has weight 0) and the forward-difference
    gradient ``v(0) − 0``, as torchvision does; so the value is 0 whenever ``y <= -1``. The range is
    checked before any float-to-int conversion, so non-finite points are safe.
    """
    inside = (y >= -1) & (y < height) & (x >= -1) & (x < width)
    ys = np.where(inside, y, 0.0)
    xs = np.where(inside, x, 0.0)
    y0 = np.floor(ys)
    x0 = np.floor(xs)
    ly = ys - y0
    lx = xs - x0
    y0 = y0.astype(np.int64)
    x0 = x0.astype(np.int64)
    corners = []
    for row, wy, dwy in ((y0, 1.0 - ly, -1.0), (y0 + 1, ly, 1.0)):
        for col, wx, dwx in ((x0, 1.0 - lx, -1.0), (x0 + 1, lx, 1.0)):
            ok = inside & (row >= 0) & (row < height) & (col >= 0) & (col < width)
            corners.append(
                Corner(
                    ok,
                    np.where(ok, row, 0),
                    np.where(ok, col, 0),
                    np.where(ok, wy * wx, 0.0),
                    np.where(ok, dwy * wx, 0.0),
                    np.where(ok, wy * dwx, 0.0),
                )
            )
    return corners


def _taps(
    offset: np.ndarray,
    kernel: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    offset_groups: int,
) -> Iterator[tuple[int, int, int, np.ndarray, np.ndarray]]:
    """Yield ``(b, g, k, y, x)``: the sampling points (H_out, W_out) of item b, offset group g, tap k."""
    batch, _, out_h, out_w = offset.shape
    kh, kw = kernel
    oy = np.arange(out_h, dtype=np.float64)[:, None]
    ox = np.arange(out_w, dtype=np.float64)[None, :]
    for b in range(batch):
        for g in range(offset_groups):
            for i in range(kh):
                for j in range(kw):
                    k = i * kw + j
                    ch = 2 * (g * kh * kw + k)
                    y = oy * stride[0] - padding[0] + i * dilation[0] + offset[b, ch]
                    x = ox * stride[1] - padding[1] + j * dilation[1] + offset[b, ch + 1]
                    yield b, g, k, y, x


def _columns(
    x: np.ndarray, offset: np.ndarray, kernel: Pair, stride, padding, dilation, offset_groups: int
) -> np.ndarray:
    """Bilinear samples (B, C_in, K, H_out, W_out) of the input at every tap's sampling points."""
    batch, channels, height, width = x.shape
    per_group = channels // offset_groups
    cols = np.zeros((batch, channels, kernel[0] * kernel[1], *offset.shape[2:]))
    for b, g, k, y, xx in _taps(offset, kernel, stride, padding, dilation, offset_groups):
        img = x[b, g * per_group : (g + 1) * per_group]
        for corner in bilinear_corners(y, xx, height, width):
            cols[b, g * per_group : (g + 1) * per_group, k] += corner.value(img) * corner.w
    return cols


def _modulation(mask: np.ndarray | None, cols: np.ndarray, offset_groups: int) -> np.ndarray:
    """The mask broadcast to the columns' shape (B, C_in, K, H_out, W_out); ones without a mask."""
    if mask is None:
        return np.ones_like(cols)
    batch, channels, taps = cols.shape[:3]
    m = mask.reshape(batch, offset_groups, 1, taps, *mask.shape[2:])
    m = np.broadcast_to(m, (batch, offset_groups, channels // offset_groups, *m.shape[3:]))
    return m.reshape(cols.shape)


def _as_f64(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.float64)


def deform_conv2d_forward(
    input: np.ndarray,
    offset: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    mask: np.ndarray | None,
    *,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
    offset_groups: int,
) -> np.ndarray:
    """Deformable convolution, float64. Shapes as in SPEC: input (B, C_in, H, W), offset
    (B, 2·og·K, H_out, W_out), weight (C_out, C_in/groups, kh, kw), bias (C_out,) or None, mask
    (B, og·K, H_out, W_out) or None. Returns (B, C_out, H_out, W_out)."""
    x, offset, weight, bias, mask = map(_as_f64, (input, offset, weight, bias, mask))
    c_out, c_per_group, kh, kw = weight.shape
    o_per_group = c_out // groups
    cols = _columns(x, offset, (kh, kw), stride, padding, dilation, offset_groups)
    cols *= _modulation(mask, cols, offset_groups)
    out = np.zeros((x.shape[0], c_out, *offset.shape[2:]))
    for g in range(groups):
        o = slice(g * o_per_group, (g + 1) * o_per_group)
        c = slice(g * c_per_group, (g + 1) * c_per_group)
        w = weight[o].reshape(o_per_group, c_per_group, kh * kw)
        out[:, o] = np.einsum("ock,bckhw->bohw", w, cols[:, c])
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def deform_conv2d_backward(
    grad_out: np.ndarray,
    input: np.ndarray,
    offset: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    mask: np.ndarray | None,
    *,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
    offset_groups: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gradients ``(g_input, g_offset, g_weight, g_bias, g_mask)`` of ``sum(grad_out · forward(...))``,
    float64, shaped like the corresponding arguments; ``g_bias``/``g_mask`` are None when bias/mask are.
    The offset gradient differentiates the floor-based bilinear formula (a forward difference at integer
    coordinates); a sample outside the image, or at a non-finite point, has zero gradients."""
    grad_out, x, offset, weight, mask = map(_as_f64, (grad_out, input, offset, weight, mask))
    channels, height, width = x.shape[1:]
    c_out, c_per_group, kh, kw = weight.shape
    o_per_group = c_out // groups
    per_offset_group = channels // offset_groups
    taps = kh * kw
    samples = _columns(x, offset, (kh, kw), stride, padding, dilation, offset_groups)
    modulation = _modulation(mask, samples, offset_groups)

    g_cols = np.zeros_like(samples)  # gradient of the modulated columns
    g_weight = np.zeros(weight.shape)
    for g in range(groups):
        o = slice(g * o_per_group, (g + 1) * o_per_group)
        c = slice(g * c_per_group, (g + 1) * c_per_group)
        w = weight[o].reshape(o_per_group, c_per_group, taps)
        g_cols[:, c] = np.einsum("ock,bohw->bckhw", w, grad_out[:, o])
        gw = np.einsum("bohw,bckhw->ock", grad_out[:, o], samples[:, c] * modulation[:, c])
        g_weight[o] = gw.reshape(o_per_group, c_per_group, kh, kw)

    g_input = np.zeros(x.shape)
    g_offset = np.zeros(offset.shape)
    g_mask = None if mask is None else np.zeros(mask.shape)
    for b, g, k, y, xx in _taps(offset, (kh, kw), stride, padding, dilation, offset_groups):
        chans = slice(g * per_offset_group, (g + 1) * per_offset_group)
        img = x[b, chans]
        gc = g_cols[b, chans, k]  # (C_in/og, H_out, W_out)
        m = modulation[b, chans.start, k]
        dv_dy = np.zeros(gc.shape)
        dv_dx = np.zeros(gc.shape)
        for corner in bilinear_corners(y, xx, height, width):
            v = corner.value(img)
            dv_dy += v * corner.dw_dy
            dv_dx += v * corner.dw_dx
            np.add.at(g_input[b, chans], (slice(None), corner.row, corner.col), gc * m * corner.w)
        ch = 2 * (g * taps + k)
        g_offset[b, ch] = (gc * dv_dy).sum(axis=0) * m
        g_offset[b, ch + 1] = (gc * dv_dx).sum(axis=0) * m
        if g_mask is not None:
            g_mask[b, g * taps + k] = (gc * samples[b, chans, k]).sum(axis=0)
    g_bias = None if bias is None else grad_out.sum(axis=(0, 2, 3))
    return g_input, g_offset, g_weight, g_bias, g_mask


# ---------------------------------------------------------------------------------------------------
# deform_roi_pool: deformable RoIAlign (mmcv's semantics); roi_align is the same op without offset.
# Loops over RoIs, bins and samples, each step vectorised over the channels.


def _roi_align_geometry(
    roi: np.ndarray, spatial_scale: float, aligned: bool
) -> tuple[int, float, float, float, float]:
    """Batch index, start (y, x) and size (h, w) of one RoI in input pixels."""
    shift = 0.5 if aligned else 0.0
    start_x = roi[1] * spatial_scale - shift
    start_y = roi[2] * spatial_scale - shift
    roi_w = (roi[3] * spatial_scale - shift) - start_x
    roi_h = (roi[4] * spatial_scale - shift) - start_y
    if not aligned:
        roi_w = max(roi_w, 1.0)
        roi_h = max(roi_h, 1.0)
    return int(roi[0]), start_y, start_x, roi_h, roi_w


def _roi_align_grid(roi_size: float, pooled: int, sampling_ratio: int) -> int:
    """Samples per bin along one axis: ``sampling_ratio``, or ``ceil(roi_size / pooled)`` when 0."""
    if sampling_ratio > 0:
        return sampling_ratio
    return max(int(np.ceil(roi_size / pooled)), 0)


def _roi_align_sample(height: int, width: int, y: float, x: float):
    """RoIAlign's bilinear rule at (y, x).

    ``None`` when the sample is outside ``[-1, H] x [-1, W]`` (or not finite). Otherwise the taps
    ``(y_low, y_high, x_low, x_high)``, the fractions ``(ly, lx)`` of the clamped point, and whether the
    point moves with y and with x (0 where it was clamped to 0 or snapped to the last row/column).
    """
    if not (-1.0 <= y <= height and -1.0 <= x <= width):
        return None
    y_moves, x_moves = float(y > 0.0), float(x > 0.0)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y, y_moves = float(y_low), 0.0
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x, x_moves = float(x_low), 0.0
    else:
        x_high = x_low + 1
    return y_low, y_high, x_low, x_high, y - y_low, x - x_low, y_moves, x_moves


def _roi_align_bins(
    height, width, rois, offset, pooled_h, pooled_w, spatial_scale, sampling_ratio, gamma, aligned
):
    """Every bin of every RoI with its inside samples (``_roi_align_sample`` results).

    Yields ``(r, i, j, b, roi_h, roi_w, count, samples)``; ``count = max(grid_h * grid_w, 1)`` is the
    divisor of the bin, outside samples included.
    """
    for r in range(rois.shape[0]):
        b, roi_y, roi_x, roi_h, roi_w = _roi_align_geometry(rois[r], spatial_scale, aligned)
        bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
        grid_h = _roi_align_grid(roi_h, pooled_h, sampling_ratio)
        grid_w = _roi_align_grid(roi_w, pooled_w, sampling_ratio)
        count = max(grid_h * grid_w, 1)
        for i in range(pooled_h):
            for j in range(pooled_w):
                start_y, start_x = roi_y, roi_x
                if offset is not None:
                    start_x += gamma * roi_w * offset[r, 0, i, j]
                    start_y += gamma * roi_h * offset[r, 1, i, j]
                samples = []
                for iy in range(grid_h):
                    y = start_y + i * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_x + j * bin_w + (ix + 0.5) * bin_w / grid_w
                        s = _roi_align_sample(height, width, y, x)
                        if s is not None:
                            samples.append(s)
                yield r, i, j, b, roi_h, roi_w, count, samples


def deform_roi_pool_forward(
    input, rois, offset, *, pooled_h, pooled_w, spatial_scale, sampling_ratio, gamma, aligned
) -> np.ndarray:
    """(R, C, pooled_h, pooled_w): each bin averages RoIAlign samples on its (shifted) grid."""
    x, rois, offset = _as_f64(input), _as_f64(rois), _as_f64(offset)
    _, channels, height, width = x.shape
    out = np.zeros((rois.shape[0], channels, pooled_h, pooled_w))
    bins = _roi_align_bins(
        height,
        width,
        rois,
        offset,
        pooled_h,
        pooled_w,
        spatial_scale,
        sampling_ratio,
        gamma,
        aligned,
    )
    for r, i, j, b, _, _, count, samples in bins:
        for y_low, y_high, x_low, x_high, ly, lx, _, _ in samples:
            hy, hx = 1.0 - ly, 1.0 - lx
            out[r, :, i, j] += (
                hy * hx * x[b, :, y_low, x_low]
                + hy * lx * x[b, :, y_low, x_high]
                + ly * hx * x[b, :, y_high, x_low]
                + ly * lx * x[b, :, y_high, x_high]
            )
        out[r, :, i, j] /= count
    return out


def deform_roi_pool_backward(
    grad_out,
    input,
    rois,
    offset,
    *,
    pooled_h,
    pooled_w,
    spatial_scale,
    sampling_ratio,
    gamma,
    aligned,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients (input, offset) of :func:`deform_roi_pool_forward`; offset's is None without one.

    The offset gradient is the derivative of the forward as written: along an axis where the sample
    was clamped to 0 or snapped to the last row/column the point does not move, so it adds 0.
    """
    g, x, rois, offset = _as_f64(grad_out), _as_f64(input), _as_f64(rois), _as_f64(offset)
    _, _, height, width = x.shape
    g_input = np.zeros_like(x)
    g_offset = None if offset is None else np.zeros_like(offset)
    bins = _roi_align_bins(
        height,
        width,
        rois,
        offset,
        pooled_h,
        pooled_w,
        spatial_scale,
        sampling_ratio,
        gamma,
        aligned,
    )
    for r, i, j, b, roi_h, roi_w, count, samples in bins:
        g_bin = g[r, :, i, j] / count
        for y_low, y_high, x_low, x_high, ly, lx, y_moves, x_moves in samples:
            hy, hx = 1.0 - ly, 1.0 - lx
            g_input[b, :, y_low, x_low] += hy * hx * g_bin
            g_input[b, :, y_low, x_high] += hy * lx * g_bin
            g_input[b, :, y_high, x_low] += ly * hx * g_bin
            g_input[b, :, y_high, x_high] += ly * lx * g_bin
            if g_offset is None:
                continue
            v1, v2 = x[b, :, y_low, x_low], x[b, :, y_low, x_high]
            v3, v4 = x[b, :, y_high, x_low], x[b, :, y_high, x_high]
            d_x = x_moves * (hy * (v2 - v1) + ly * (v4 - v3))
            d_y = y_moves * (hx * (v3 - v1) + lx * (v4 - v2))
            g_offset[r, 0, i, j] += gamma * roi_w * np.dot(g_bin, d_x)
            g_offset[r, 1, i, j] += gamma * roi_h * np.dot(g_bin, d_y)
    return g_input, g_offset


# ---------------------------------------------------------------------------------------------------
# deform_psroi_pool: deformable position-sensitive RoI pooling (R-FCN, the original operator).
# Scalar loops over RoIs, output channels, bins and samples.


def round_half_away(v: float) -> float:
    """C's ``round``: halves go away from zero (NumPy's ``round`` goes to even)."""
    t = float(np.trunc(v))
    if abs(v - t) >= 0.5:
        t += float(np.copysign(1.0, v))
    return t


def _psroi_geometry(
    roi: np.ndarray, spatial_scale: float
) -> tuple[int, float, float, float, float]:
    """Batch index, start (y, x) and size (h, w) of one rounded RoI in input pixels."""
    start_x = round_half_away(roi[1]) * spatial_scale - 0.5
    start_y = round_half_away(roi[2]) * spatial_scale - 0.5
    end_x = (round_half_away(roi[3]) + 1.0) * spatial_scale - 0.5
    end_y = (round_half_away(roi[4]) + 1.0) * spatial_scale - 0.5
    return int(roi[0]), start_y, start_x, max(end_y - start_y, 0.1), max(end_x - start_x, 0.1)


def _psroi_corners(h: float, w: float) -> tuple[int, int, int, int, float, float]:
    """Taps floor/ceil (y0, y1, x0, x1) of a clamped sample and its fractions; at an integer
    coordinate both taps of that axis coincide."""
    y0, x0 = int(np.floor(h)), int(np.floor(w))
    return y0, int(np.ceil(h)), x0, int(np.ceil(w)), h - y0, w - x0


def _psroi_bins(
    input,
    rois,
    trans,
    spatial_scale,
    output_dim,
    group_size,
    pooled_size,
    part_size,
    sample_per_part,
    trans_std,
):
    """Every output element with its input plane and its valid (clamped) sample points.

    Yields ``(r, ctop, i, j, b, c, roi_h, roi_w, trans_channel, part_i, part_j, points)``.
    """
    height, width = input.shape[2:]
    per_class = output_dim // (1 if trans is None else trans.shape[1] // 2)
    for r in range(rois.shape[0]):
        b, start_y, start_x, roi_h, roi_w = _psroi_geometry(rois[r], spatial_scale)
        bin_h, bin_w = roi_h / pooled_size, roi_w / pooled_size
        sub_h, sub_w = bin_h / sample_per_part, bin_w / sample_per_part
        for ctop in range(output_dim):
            cls = ctop // per_class
            for i in range(pooled_size):
                for j in range(pooled_size):
                    part_i, part_j = i * part_size // pooled_size, j * part_size // pooled_size
                    gh = min(i * group_size // pooled_size, group_size - 1)
                    gw = min(j * group_size // pooled_size, group_size - 1)
                    c = (ctop * group_size + gh) * group_size + gw
                    h0, w0 = i * bin_h + start_y, j * bin_w + start_x
                    if trans is not None:
                        w0 += trans[r, 2 * cls, part_i, part_j] * trans_std * roi_w
                        h0 += trans[r, 2 * cls + 1, part_i, part_j] * trans_std * roi_h
                    points = []
                    for ih in range(sample_per_part):
                        for iw in range(sample_per_part):
                            h, w = h0 + ih * sub_h, w0 + iw * sub_w
                            if not (-0.5 <= w <= width - 0.5 and -0.5 <= h <= height - 0.5):
                                continue
                            points.append(
                                (min(max(h, 0.0), height - 1.0), min(max(w, 0.0), width - 1.0))
                            )
                    yield r, ctop, i, j, b, c, roi_h, roi_w, 2 * cls, part_i, part_j, points


def deform_psroi_pool_forward(
    input,
    rois,
    trans,
    *,
    spatial_scale,
    output_dim,
    group_size,
    pooled_size,
    part_size,
    sample_per_part,
    trans_std,
) -> np.ndarray:
    """(R, output_dim, pooled_size, pooled_size): mean of the valid samples of each bin."""
    x, rois, trans = _as_f64(input), _as_f64(rois), _as_f64(trans)
    out = np.zeros((rois.shape[0], output_dim, pooled_size, pooled_size))
    bins = _psroi_bins(
        x,
        rois,
        trans,
        spatial_scale,
        output_dim,
        group_size,
        pooled_size,
        part_size,
        sample_per_part,
        trans_std,
    )
    for r, ctop, i, j, b, c, *_, points in bins:
        for h, w in points:
            y0, y1, x0, x1, dy, dx = _psroi_corners(h, w)
            out[r, ctop, i, j] += (
                (1 - dx) * (1 - dy) * x[b, c, y0, x0]
                + (1 - dx) * dy * x[b, c, y1, x0]
                + dx * (1 - dy) * x[b, c, y0, x1]
                + dx * dy * x[b, c, y1, x1]
            )
        if points:
            out[r, ctop, i, j] /= len(points)
    return out


def deform_psroi_pool_backward(
    grad_out,
    input,
    rois,
    trans,
    *,
    spatial_scale,
    output_dim,
    group_size,
    pooled_size,
    part_size,
    sample_per_part,
    trans_std,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients (input, trans) of :func:`deform_psroi_pool_forward`; trans's is None without one.

    Along an axis where the clamped sample sits on an integer (floor == ceil) the trans gradient is 0.
    """
    g, x, rois, trans = _as_f64(grad_out), _as_f64(input), _as_f64(rois), _as_f64(trans)
    g_input = np.zeros_like(x)
    g_trans = None if trans is None else np.zeros_like(trans)
    bins = _psroi_bins(
        x,
        rois,
        trans,
        spatial_scale,
        output_dim,
        group_size,
        pooled_size,
        part_size,
        sample_per_part,
        trans_std,
    )
    for r, ctop, i, j, b, c, roi_h, roi_w, t, pi, pj, points in bins:
        if not points:
            continue
        g_bin = g[r, ctop, i, j] / len(points)
        for h, w in points:
            y0, y1, x0, x1, dy, dx = _psroi_corners(h, w)
            g_input[b, c, y0, x0] += (1 - dx) * (1 - dy) * g_bin
            g_input[b, c, y1, x0] += (1 - dx) * dy * g_bin
            g_input[b, c, y0, x1] += dx * (1 - dy) * g_bin
            g_input[b, c, y1, x1] += dx * dy * g_bin
            if g_trans is None:
                continue
            u00, u01, u10, u11 = x[b, c, y0, x0], x[b, c, y1, x0], x[b, c, y0, x1], x[b, c, y1, x1]
            d_x = u11 * dy + u10 * (1 - dy) - u01 * dy - u00 * (1 - dy)
            d_y = u11 * dx + u01 * (1 - dx) - u10 * dx - u00 * (1 - dx)
            g_trans[r, t, pi, pj] += d_x * trans_std * roi_w * g_bin
            g_trans[r, t + 1, pi, pj] += d_y * trans_std * roi_h * g_bin
    return g_input, g_trans
