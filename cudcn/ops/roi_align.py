"""roi_align: torchvision's RoIAlign, run as :mod:`cudcn.ops.deform_roi_pool` without offsets.

Its arguments map onto a :class:`~cudcn.ops.deform_roi_pool.DeformRoIPoolParams` (``gamma`` 0,
``sampling_ratio <= 0`` adaptive, ``aligned`` as given), so every backend runs the deform_roi_pool
kernels; the RoIAlign sampling rule they share lives in ``reference/roi_align.py``,
``backends/cpu/roi_align.py`` and ``kernels/roi_align.cuh``.
"""

from __future__ import annotations

import numbers
from typing import Any

from cudcn.arrays import Array
from cudcn.ops._checks import check_bool
from cudcn.ops.deform_roi_pool import (
    DeformRoIPoolFunction,
    DeformRoIPoolParams,
    run_backward,
    run_forward,
)


def roi_align(
    input: Array,
    rois: Array,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Array:
    """RoIAlign with torchvision's signature, defaults and results (``torchvision.ops.roi_align``).

    Args:
        input: (B, C, H, W).
        rois: (R, 5) rows ``(batch_index, x1, y1, x2, y2)``, as in :func:`deform_roi_pool`.
        output_size: ph, or a pair (ph, pw).
        spatial_scale: input pixels per image unit.
        sampling_ratio: samples per bin along each axis; ``<= 0`` means ``ceil(roi_size / pooled)``.
        aligned: True shifts the RoI by -0.5 pixel (pixel-centre model, as :func:`deform_roi_pool`);
            False (torchvision's default) does not shift, and forces RoI sizes to at least 1 pixel.

    Returns:
        (R, C, ph, pw), the average of bilinear samples per bin under the rules of
        :func:`deform_roi_pool` with no offset. Gradients flow to ``input``.

    Precision: as :func:`deform_roi_pool` (16-bit inputs computed in float32, rounded once).

    Example:
        >>> import numpy as np, cudcn
        >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
        >>> rois = np.array([[0.0, 1.0, 1.0, 3.0, 3.0]])
        >>> cudcn.functional.roi_align(x, rois, 1)[0, 0, 0, 0]
        np.float64(10.0)
    """
    return DeformRoIPoolFunction.apply(
        input, rois, None, **_roi_align_params(output_size, spatial_scale, sampling_ratio, aligned)
    )


def _roi_align_params(
    output_size: Any, spatial_scale: Any, sampling_ratio: Any, aligned: Any
) -> dict[str, Any]:
    """roi_align's arguments as deform_roi_pool parameters: no offset, ``sampling_ratio <= 0`` is
    adaptive (torchvision), torchvision's geometry when not ``aligned``."""
    if not isinstance(sampling_ratio, numbers.Integral) or isinstance(sampling_ratio, bool):
        raise TypeError(f"sampling_ratio must be an int, got {sampling_ratio!r}")
    return {
        "output_size": output_size,
        "spatial_scale": spatial_scale,
        "sampling_ratio": max(int(sampling_ratio), 0),
        "gamma": 0.0,
        "aligned": check_bool("aligned", aligned),
    }


def roi_align_forward(
    input: Array,
    rois: Array,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Array:
    """Array-level forward of :func:`roi_align` (no tape): (R, C, pooled_h, pooled_w)."""
    p = DeformRoIPoolParams.check(
        input, rois, None, **_roi_align_params(output_size, spatial_scale, sampling_ratio, aligned)
    )
    return run_forward(input, rois, None, p)


def roi_align_backward(
    grad_out: Array,
    input: Array,
    rois: Array,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> tuple[Array]:
    """Array-level backward of :func:`roi_align`: ``(g_input,)`` given ``grad_out``
    (R, C, pooled_h, pooled_w). ``rois`` get no gradient."""
    p = DeformRoIPoolParams.check(
        input, rois, None, **_roi_align_params(output_size, spatial_scale, sampling_ratio, aligned)
    )
    return (run_backward(grad_out, input, rois, None, p)[0],)
