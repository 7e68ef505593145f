"""RoIAlign's sampling rule in plain NumPy float64: RoI geometry, samples per bin, and the bilinear
rule with its clamp and snap (docs/spec.md), shared by deform_roi_pool and roi_align."""

from __future__ import annotations

import numpy as np


def roi_align_geometry(
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


def roi_align_grid(roi_size: float, pooled: int, sampling_ratio: int) -> int:
    """Samples per bin along one axis: ``sampling_ratio``, or ``ceil(roi_size / pooled)`` when 0."""
    if sampling_ratio > 0:
        return sampling_ratio
    return max(int(np.ceil(roi_size / pooled)), 0)


def roi_align_sample(height: int, width: int, y: float, x: float):
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
