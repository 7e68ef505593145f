"""RoIAlign's sampling rule on the CPU: Numba helpers shared by deform_roi_pool and roi_align.

The formulas and names of ``kernels/roi_align.cuh`` (``roi_align_geometry``, ``roi_align_grid``,
``roi_align_inside``, ``roi_align_weights``); the float64 definition is ``reference/roi_align.py``.
"""

from __future__ import annotations

import math

import numba


@numba.njit(cache=True, nogil=True)
def roi_align_geometry(roi, spatial_scale, aligned):
    """Batch index, start (y, x) and size (h, w) of one RoI in input pixels. aligned: the -0.5 shift,
    no minimum size (mmcv); not aligned: no shift and sizes of at least 1 (torchvision)."""
    shift = 0.5 if aligned else 0.0
    start_x = roi[1] * spatial_scale - shift
    start_y = roi[2] * spatial_scale - shift
    roi_w = (roi[3] * spatial_scale - shift) - start_x
    roi_h = (roi[4] * spatial_scale - shift) - start_y
    if not aligned:
        roi_w = max(roi_w, 1.0)
        roi_h = max(roi_h, 1.0)
    return int(roi[0]), start_y, start_x, roi_h, roi_w


@numba.njit(cache=True, nogil=True)
def roi_align_grid(roi_size, pooled, sampling_ratio):
    """Samples per bin along one axis: ``sampling_ratio``, or ``ceil(roi_size / pooled)`` when 0."""
    if sampling_ratio > 0:
        return sampling_ratio
    return max(math.ceil(roi_size / pooled), 0)


@numba.njit(cache=True, nogil=True)
def roi_align_inside(height, width, y, x):
    """RoIAlign's range: ``[-1, H] x [-1, W]``; false for NaN."""
    return y >= -1.0 and y <= height and x >= -1.0 and x <= width


@numba.njit(cache=True, nogil=True)
def roi_align_weights(height, width, y, x):
    """Taps and fractions of an inside point: clamp to 0, snap to the last row/column.

    Returns ``(y_low, y_high, x_low, x_high, ly, lx, y_moves, x_moves)``; ``y_moves`` is false where
    the point was clamped or snapped along y (the derivative along y is then 0).
    """
    y_moves = y > 0.0
    x_moves = x > 0.0
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low = int(y)
    x_low = int(x)
    if y_low >= height - 1:
        y_low = height - 1
        y_high = y_low
        y = float(y_low)
        y_moves = False
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = width - 1
        x_high = x_low
        x = float(x_low)
        x_moves = False
    else:
        x_high = x_low + 1
    return y_low, y_high, x_low, x_high, y - y_low, x - x_low, y_moves, x_moves
