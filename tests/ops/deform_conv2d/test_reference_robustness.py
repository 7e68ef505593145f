"""Issue 22, item 11: the float64 reference on an empty image (H = 0, which the ops accept with
padding) and on a non-finite output gradient (no spurious NaN from unused bilinear corners)."""

from __future__ import annotations

import warnings

import numpy as np

from cudcn import reference
from cudcn.ops import deform_conv2d_backward, deform_conv2d_forward
from cudcn.ops.deform_conv2d import DeformConv2dParams


def test_reference_empty_image_matches_ops() -> None:
    x = np.zeros((1, 2, 0, 4))
    w = np.ones((3, 2, 1, 1))
    off = np.zeros((1, 2, 2, 6))
    m = np.ones((1, 1, 2, 6))
    p = DeformConv2dParams.check(x, off, w, None, 1, 1, 1, m)
    np.testing.assert_array_equal(
        reference.deform_conv2d_forward(x, off, w, None, m, p),
        deform_conv2d_forward(x, off, w, None, 1, 1, 1, m),
    )
    go = np.ones((1, 3, 2, 6))
    for got, want in zip(
        reference.deform_conv2d_backward(go, x, off, w, None, m, p),
        deform_conv2d_backward(go, x, off, w, None, 1, 1, 1, m),
        strict=True,
    ):
        assert (got is None) == (want is None)
        if got is not None:
            np.testing.assert_allclose(got, want)


def test_reference_no_nan_from_unused_corners() -> None:
    """Every sample lands outside the image: a non-finite gradient reaches no input pixel."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 4, 4))
    w = rng.standard_normal((3, 2, 3, 3))
    off = np.full((1, 18, 4, 4), 100.0)
    go = rng.standard_normal((1, 3, 4, 4))
    go[0, 1, 2, 2] = np.inf
    p = DeformConv2dParams.check(x, off, w, None, 1, 1, 1, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g_input = reference.deform_conv2d_backward(go, x, off, w, None, None, p)[0]
    np.testing.assert_array_equal(g_input, 0.0)
