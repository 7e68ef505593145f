"""One test per validation rule of deform_conv2d: the error names the argument, expected and actual."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from cudcn.functional import deform_conv2d
from cudcn.ops import deform_conv2d_backward, deform_conv2d_forward


def good(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {
        "input": rng.standard_normal((2, 4, 5, 6)).astype(dtype),
        "offset": rng.standard_normal((2, 18, 5, 6)).astype(dtype),
        "weight": rng.standard_normal((3, 4, 3, 3)).astype(dtype),
        "bias": rng.standard_normal(3).astype(dtype),
        "mask": rng.uniform(size=(2, 9, 5, 6)).astype(dtype),
    }


def call(**changes):
    args = good()
    kwargs = {"padding": 1}
    for k, v in changes.items():
        (args if k in args else kwargs)[k] = v
    mask = args.pop("mask")
    return deform_conv2d_forward(*args.values(), mask=mask, **kwargs)


def test_good_arguments_pass():
    assert call().shape == (2, 3, 5, 6)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"input": np.zeros((4, 5, 6), np.float32)}, r"input must be 4-D .* got shape \(4, 5, 6\)"),
        ({"weight": np.zeros((3, 4, 3), np.float32)}, r"weight must be 4-D"),
        ({"offset": np.zeros((2, 18, 5), np.float32)}, r"offset must be 4-D"),
        (
            {"weight": np.zeros((3, 3, 3, 3), np.float32)},
            r"weight.shape\[1\] must divide .* got .* 3",
        ),
        (
            {"weight": np.zeros((3, 2, 3, 3), np.float32)},
            r"C_out\) must be divisible by groups = 2",
        ),
        ({"weight": np.zeros((3, 4, 0, 3), np.float32)}, r"weight must have no empty dimension"),
        (
            {"offset": np.zeros((2, 17, 5, 6), np.float32)},
            r"offset.shape\[1\] must be .* 18, got 17",
        ),
        (
            {"offset": np.zeros((2, 54, 5, 6), np.float32), "mask": None},
            r"offset groups \(3 .* divide",
        ),
        (
            {"offset": np.zeros((2, 18, 4, 6), np.float32)},
            r"offset must have shape \(2, 18, 5, 6\)",
        ),
        (
            {"offset": np.zeros((1, 18, 5, 6), np.float32)},
            r"offset must have shape \(2, 18, 5, 6\)",
        ),
        ({"mask": np.zeros((2, 8, 5, 6), np.float32)}, r"mask must have shape \(2, 9, 5, 6\)"),
        ({"mask": np.zeros((2, 9, 5), np.float32)}, r"mask must be 4-D"),
        ({"bias": np.zeros(4, np.float32)}, r"bias must have shape \(3,\) .* got \(4,\)"),
        ({"stride": 0}, r"stride must be >= 1 .* got 0"),
        ({"stride": (1, -1)}, r"stride must be >= 1"),
        ({"dilation": 0}, r"dilation must be >= 1"),
        ({"padding": -1}, r"padding must be >= 0 .* got -1"),
        (
            {"input": np.zeros((2, 4, 1, 1), np.float32), "padding": 0},
            r"output size must be at least 1x1, got -1x-1",
        ),
    ],
)
def test_value_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        call(**changes)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"input": [[1.0]]}, r"input must be a numpy.ndarray or cupy.ndarray, got list"),
        (
            {"weight": np.zeros((3, 4, 3, 3), np.int64)},
            r"weight must have dtype float16, bfloat16 \(ml_dtypes.bfloat16\), float32 or float64, got int64",
        ),
        ({"bias": np.zeros(3, np.float64)}, r"bias has dtype float64 but input has dtype float32"),
        ({"mask": np.zeros((2, 9, 6, 7), np.float16)}, r"mask has dtype float16 but input has"),
        (
            {"offset": np.zeros((2, 18, 6, 7), ml_dtypes.bfloat16)},
            r"offset has dtype bfloat16 but input has dtype float32",
        ),
        ({"stride": 1.5}, r"stride must be an int or a pair of ints, got 1.5"),
        ({"padding": (1, 2, 3)}, r"padding must be an int or a pair of ints"),
        ({"dilation": True}, r"dilation must be an int or a pair of ints"),
    ],
)
def test_type_errors(changes, match):
    with pytest.raises(TypeError, match=match):
        call(**changes)


@pytest.mark.gpu
def test_mixing_numpy_and_cupy_is_a_type_error():
    import cupy

    args = good()
    with pytest.raises(TypeError, match=r"offset is a cupy array but input is a numpy array"):
        deform_conv2d_forward(args["input"], cupy.asarray(args["offset"]), args["weight"])


def test_backward_checks_grad_out_shape():
    args = good()
    mask = args.pop("mask")
    with pytest.raises(ValueError, match=r"grad_out must have shape \(2, 3, 5, 6\)"):
        deform_conv2d_backward(np.zeros((2, 3, 5, 5), np.float32), *args.values(), 1, 1, 1, mask)


def test_functional_validates_too():
    args = good()
    with pytest.raises(ValueError, match=r"offset.shape\[1\]"):
        deform_conv2d(args["input"], args["offset"][:, :17], args["weight"])
