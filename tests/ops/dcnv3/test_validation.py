"""dcnv3's argument checks: each bad argument is a TypeError or ValueError naming it."""

from __future__ import annotations

import numpy as np
import pytest

from cudcn.ops import dcnv3_backward, dcnv3_forward, dcnv3_to_deform_conv2d, deform_conv2d_to_dcnv3


def good_args(dtype=np.float32) -> dict:
    rng = np.random.default_rng(0)
    return {
        "input": rng.standard_normal((2, 5, 6, 4)).astype(dtype),
        "offset": rng.standard_normal((2, 5, 6, 2 * 9 * 2)).astype(dtype),
        "mask": rng.standard_normal((2, 5, 6, 2 * 9)).astype(dtype),
        "kernel_size": 3,
        "padding": 1,
        "group": 2,
    }


def call(**changes):
    return dcnv3_forward(**{**good_args(), **changes})


def test_good_arguments_pass():
    assert call().shape == (2, 5, 6, 4)
    assert call(
        remove_center=True,
        offset=np.zeros((2, 5, 6, 32), np.float32),
        mask=np.zeros((2, 5, 6, 16), np.float32),
    ).shape == (2, 5, 6, 4)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"input": np.zeros((2, 5, 6), np.float32)}, ValueError, r"input must be 4-D \(N, H, W, G·D\)"),
        ({"input": np.zeros((2, 0, 6, 4), np.float32)}, ValueError, r"input must have H, W >= 1"),
        (
            {"input": np.zeros((2, 5, 6, 3), np.float32)},
            ValueError,
            r"input channels \(3\) must be divisible by group",
        ),
        ({"input": np.zeros((2, 5, 6, 4), np.float64)}, TypeError, r"offset has dtype float32 but input"),
        ({"input": np.zeros((2, 5, 6, 4), np.int32)}, TypeError, r"input must have dtype float16"),
        (
            {"offset": np.zeros((2, 5, 6, 35), np.float32)},
            ValueError,
            r"offset must have shape \(2, 5, 6, 36\)",
        ),
        (
            {"offset": np.zeros((2, 5, 5, 36), np.float32)},
            ValueError,
            r"offset must have shape \(2, 5, 6, 36\)",
        ),
        ({"offset": np.zeros((2, 5, 36), np.float32)}, ValueError, r"offset must be 4-D"),
        ({"offset": [0.0]}, TypeError, r"offset must be a numpy.ndarray"),
        ({"mask": np.zeros((2, 5, 6, 9), np.float32)}, ValueError, r"mask must have shape \(2, 5, 6, 18\)"),
        ({"mask": None}, TypeError, r"mask must be a numpy.ndarray or cupy.ndarray, got None"),
        ({"kernel_size": 0}, ValueError, r"kernel_size must be >= 1"),
        ({"kernel_size": (3, 3, 3)}, TypeError, r"kernel_size must be an int or a pair"),
        ({"stride": 0}, ValueError, r"stride must be >= 1"),
        ({"padding": -1}, ValueError, r"padding must be >= 0"),
        ({"dilation": 1.5}, TypeError, r"dilation must be an int or a pair"),
        ({"group": 0}, ValueError, r"group must be >= 1"),
        ({"group": 2.0}, TypeError, r"group must be an int"),
        ({"offset_scale": np.nan}, ValueError, r"offset_scale must be finite"),
        ({"offset_scale": "1"}, TypeError, r"offset_scale must be a real number"),
        ({"remove_center": 1}, TypeError, r"remove_center must be a bool"),
        ({"remove_center": True, "kernel_size": (3, 2)}, ValueError, r"remove_center needs odd kernel sizes"),
        (
            {"padding": 0, "input": np.zeros((2, 1, 6, 4), np.float32)},
            ValueError,
            r"output size must be at least 1x1",
        ),
    ],
)
def test_bad_arguments(changes, error, match):
    with pytest.raises(error, match=match):
        call(**changes)


def test_bad_grad_out():
    args = good_args()
    with pytest.raises(ValueError, match=r"grad_out must have shape \(2, 5, 6, 4\)"):
        dcnv3_backward(np.zeros((2, 6, 5, 4), np.float32), **args)
    with pytest.raises(TypeError, match=r"grad_out has dtype float64 but input"):
        dcnv3_backward(np.zeros((2, 5, 6, 4)), **args)


def test_converter_checks():
    args = good_args()
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 5, 6, 18\)"):
        dcnv3_to_deform_conv2d(args["offset"], args["mask"][..., :9], 3, group=2)
    with pytest.raises(ValueError, match=r"offset must have shape \(2, 5, 6, 18\)"):
        dcnv3_to_deform_conv2d(args["offset"], args["mask"], 3, group=1)
    off2, mask2 = dcnv3_to_deform_conv2d(args["offset"], args["mask"], 3, group=2)
    with pytest.raises(ValueError, match=r"offset_scale must not be 0"):
        deform_conv2d_to_dcnv3(off2, mask2, 3, offset_scale=0.0)
    with pytest.raises(ValueError, match=r"offset.shape\[1\] must be a positive multiple of 2·kh·kw = 50"):
        deform_conv2d_to_dcnv3(off2, mask2, 5)
