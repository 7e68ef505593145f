"""deform_psroi_pool (deformable position-sensitive RoI pooling, the original R-FCN operator) in
plain NumPy float64: the definition the backends are tested against. Scalar loops over RoIs, output
channels, bins and samples."""

from __future__ import annotations

import numpy as np

from cudcn.ops.deform_psroi_pool import DeformPSRoIPoolParams
from cudcn.reference.bilinear import as_float64


def round_half_away(v: float) -> float:
    """C's ``round``: halves go away from zero (NumPy's ``round`` goes to even)."""
    t = float(np.trunc(v))
    if abs(v - t) >= 0.5:
        t += float(np.copysign(1.0, v))
    return t


def _psroi_geometry(roi: np.ndarray, spatial_scale: float) -> tuple[int, float, float, float, float]:
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


def _psroi_bins(input: np.ndarray, rois: np.ndarray, trans, p: DeformPSRoIPoolParams):
    """Every output element with its input plane and its valid (clamped) sample points.

    Yields ``(r, ctop, i, j, b, c, roi_h, roi_w, trans_channel, part_i, part_j, points)``.
    """
    height, width = input.shape[2:]
    output_dim, group_size, pooled_size = p.output_dim, p.group_size, p.pooled_size
    part_size, sample_per_part, trans_std = p.part_size, p.sample_per_part, p.trans_std
    per_class = output_dim // (1 if trans is None else trans.shape[1] // 2)
    for r in range(rois.shape[0]):
        b, start_y, start_x, roi_h, roi_w = _psroi_geometry(rois[r], p.spatial_scale)
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
                            points.append((min(max(h, 0.0), height - 1.0), min(max(w, 0.0), width - 1.0)))
                    yield r, ctop, i, j, b, c, roi_h, roi_w, 2 * cls, part_i, part_j, points


def deform_psroi_pool_forward(
    input: np.ndarray, rois: np.ndarray, trans: np.ndarray | None, p: DeformPSRoIPoolParams
) -> np.ndarray:
    """(R, output_dim, pooled_size, pooled_size): mean of the valid samples of each bin."""
    x, rois, trans = as_float64(input), as_float64(rois), as_float64(trans)
    out = np.zeros((rois.shape[0], p.output_dim, p.pooled_size, p.pooled_size))
    bins = _psroi_bins(x, rois, trans, p)
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
    grad_out: np.ndarray,
    input: np.ndarray,
    rois: np.ndarray,
    trans: np.ndarray | None,
    p: DeformPSRoIPoolParams,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients (input, trans) of :func:`deform_psroi_pool_forward`; trans's is None without one.

    Along an axis where the clamped sample sits on an integer (floor == ceil) the trans gradient is 0.
    """
    g, x, rois, trans = as_float64(grad_out), as_float64(input), as_float64(rois), as_float64(trans)
    g_input = np.zeros_like(x)
    g_trans = None if trans is None else np.zeros_like(trans)
    bins = _psroi_bins(x, rois, trans, p)
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
            g_trans[r, t, pi, pj] += d_x * p.trans_std * roi_w * g_bin
            g_trans[r, t + 1, pi, pj] += d_y * p.trans_std * roi_h * g_bin
    return g_input, g_trans
