"""A required array given as None is a TypeError naming it, on every op (not an AttributeError from
deep inside the call); the optional ones (bias, mask, offset, trans) may be None (dcnv3's mask is
required)."""

from __future__ import annotations

import numpy as np
import pytest

from cudcn import ops

X = np.zeros((1, 4, 5, 5))
ROIS = np.array([[0.0, 0.0, 0.0, 3.0, 3.0]])
CALLS = {
    "deform_conv2d": (
        ops.deform_conv2d_forward,
        {"input": X, "offset": np.zeros((1, 18, 3, 3)), "weight": np.zeros((2, 4, 3, 3))},
        {},
    ),
    "deform_roi_pool": (
        ops.deform_roi_pool_forward,
        {"input": X, "rois": ROIS},
        {"offset": None, "output_size": 2},
    ),
    "roi_align": (ops.roi_align_forward, {"input": X, "rois": ROIS}, {"output_size": 2}),
    "deform_psroi_pool": (
        ops.deform_psroi_pool_forward,
        {"input": X, "rois": ROIS},
        {"spatial_scale": 1.0, "output_dim": 1, "group_size": 2, "pooled_size": 2},
    ),
    "dcnv3": (
        ops.dcnv3_forward,
        {"input": X, "offset": np.zeros((1, 4, 5, 18)), "mask": np.zeros((1, 4, 5, 9))},
        {"kernel_size": 3, "padding": 1},
    ),
    "dcnv4": (
        ops.dcnv4_forward,
        {"input": X, "offset_mask": np.zeros((1, 4, 5, 32))},
        {"kernel_size": 3, "padding": 1},
    ),
}
CASES = [(op, name) for op, (_, arrays, _) in CALLS.items() for name in arrays]


@pytest.mark.parametrize(("op", "name"), CASES, ids=[f"{op}-{name}" for op, name in CASES])
def test_required_array_none_is_a_type_error_naming_it(op: str, name: str) -> None:
    forward, arrays, rest = CALLS[op]
    forward(**arrays, **rest)  # the complete call runs
    with pytest.raises(TypeError, match=rf"^{name} must be a numpy.ndarray or cupy.ndarray, got None$"):
        forward(**{**arrays, name: None}, **rest)
