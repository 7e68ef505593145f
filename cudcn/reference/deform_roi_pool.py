"""deform_roi_pool (and roi_align, its offset-free case) in plain NumPy float64: the definition the
backends are tested against. Loops over RoIs, bins and samples, each step vectorised over the
channels."""

from __future__ import annotations

import numpy as np

from cudcn.ops.deform_roi_pool import DeformRoIPoolParams
from cudcn.reference.bilinear import as_float64
from cudcn.reference.roi_align import roi_align_geometry, roi_align_grid, roi_align_sample


def _bins(height: int, width: int, rois: np.ndarray, offset, p: DeformRoIPoolParams):
    """Every bin of every RoI with its inside samples (``roi_align_sample`` results).

    Yields ``(r, i, j, b, roi_h, roi_w, count, samples)``; ``count = max(grid_h * grid_w, 1)`` is the
    divisor of the bin, outside samples included.
    """
    pooled_h, pooled_w, gamma = p.pooled_h, p.pooled_w, p.gamma
    for r in range(rois.shape[0]):
        b, roi_y, roi_x, roi_h, roi_w = roi_align_geometry(rois[r], p.spatial_scale, p.aligned)
        bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
        grid_h = roi_align_grid(roi_h, pooled_h, p.sampling_ratio)
        grid_w = roi_align_grid(roi_w, pooled_w, p.sampling_ratio)
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
                        s = roi_align_sample(height, width, y, x)
                        if s is not None:
                            samples.append(s)
                yield r, i, j, b, roi_h, roi_w, count, samples


def deform_roi_pool_forward(
    input: np.ndarray, rois: np.ndarray, offset: np.ndarray | None, p: DeformRoIPoolParams
) -> np.ndarray:
    """(R, C, pooled_h, pooled_w): each bin averages RoIAlign samples on its (shifted) grid."""
    x, rois, offset = as_float64(input), as_float64(rois), as_float64(offset)
    _, channels, height, width = x.shape
    out = np.zeros((rois.shape[0], channels, p.pooled_h, p.pooled_w))
    bins = _bins(height, width, rois, offset, p)
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
    grad_out: np.ndarray,
    input: np.ndarray,
    rois: np.ndarray,
    offset: np.ndarray | None,
    p: DeformRoIPoolParams,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients (input, offset) of :func:`deform_roi_pool_forward`; offset's is None without one.

    The offset gradient is the derivative of the forward as written: along an axis where the sample
    was clamped to 0 or snapped to the last row/column the point does not move, so it adds 0.
    """
    g, x, rois, offset = (
        as_float64(grad_out),
        as_float64(input),
        as_float64(rois),
        as_float64(offset),
    )
    _, _, height, width = x.shape
    g_input = np.zeros_like(x)
    g_offset = None if offset is None else np.zeros_like(offset)
    bins = _bins(height, width, rois, offset, p)
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
            g_offset[r, 0, i, j] += p.gamma * roi_w * np.dot(g_bin, d_x)
            g_offset[r, 1, i, j] += p.gamma * roi_h * np.dot(g_bin, d_y)
    return g_input, g_offset
