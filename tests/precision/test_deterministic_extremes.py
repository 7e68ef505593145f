"""``cudcn.deterministic()`` at the extremes of float64 (issue 22, item 7): one huge entry in
grad_out must not cost the other elements their digits, a grad_out of order 1e-300 keeps its
digits, magnitudes near float64's maximum raise nothing, and the results stay bitwise equal for
every schedule with NaN and infinities propagated.

The bound checked is docs/determinism.md's, per element and relative to that element's own
contributions: every scattered element within a small multiple of float64 (or float32) rounding of
its own magnitude sum, here ``64 eps`` of the float64 reference run on ``|grad_out|`` (and
``|weight|``), as test_deterministic.py checks ordinary inputs. The offset and trans gradients,
whose magnitude sums the reference cannot give, are checked per bin: the huge bin against the
reference relative to its value, every other bin against the reference without the huge entry.
"""

from __future__ import annotations

import numpy as np
import pytest

import cudcn
import cudcn.backends.emulated as emulated
from cudcn import reference
from cudcn.ops.deform_roi_pool import DeformRoIPoolParams
from cudcn.testing import assert_allclose_to_reference, summation_order_tolerance

from .test_deterministic import CONV, OPS, PARAMS, TERMS, _backward, _identical, _inputs, _under_schedules

FACTOR = 64


def _reference(op: str, args: tuple) -> list[np.ndarray]:
    """The float64 reference's scattered gradients, in _backward's order (conv: input only)."""
    args = tuple(a.astype(np.float64) for a in args)
    if op == "deform_conv2d":
        grad, x, offset, weight, mask = args
        return [reference.deform_conv2d_backward(grad, x, offset, weight, None, mask, CONV)[0]]
    return list(getattr(reference, f"{op}_backward")(*args, PARAMS[op]))


def _magnitude(op: str, args: tuple) -> np.ndarray:
    """Per element of the input gradient, the sum of its contributions' magnitudes (an upper
    bound for the conv, whose column gradient is bounded by |weight|^T |grad_out|; ms_deform_attn's
    contributions are bilinear weight x attention weight x grad_out)."""
    args = list(args)
    args[0] = np.abs(args[0])
    if op in ("deform_conv2d", "ms_deform_attn"):
        args[3] = np.abs(args[3])
    return _reference(op, tuple(args))[0]


def _want(op: str, args: tuple, dtype) -> list[np.ndarray]:
    """What the deterministic sums are compared with: the float64 reference, or for float32 the
    atomic scatter of the same contributions (the float32 kernels' own coordinate rounding puts
    their contributions further from the reference than any summation does)."""
    if dtype == np.float64:
        return _reference(op, args)
    with cudcn.deterministic(False):
        return [g.astype(np.float64) for g in _backward(op, args)]


def _check_input_gradient(op: str, args: tuple, got: np.ndarray, dtype) -> None:
    want = _want(op, args, dtype)[0]
    scale = _magnitude(op, args)
    if dtype == np.float32:  # the atomic sums' own error: (terms - 1) roundings of the magnitude
        allowed = summation_order_tolerance(np.float32, scale, TERMS[op])
        np.testing.assert_array_less(np.abs(got - want), allowed + 1e-38)
        return
    assert_allclose_to_reference(
        got, want, dtype, scale=scale + 1e-300, factor=FACTOR, name=f"{op} grad_input"
    )


def _with_entry(args: tuple, index: int, value: float) -> tuple:
    grad = args[0].copy()
    grad.flat[index] = value
    return (grad, *args[1:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_one_huge_entry_in_grad_out_leaves_every_other_element_its_digits(op, dtype):
    """Issue 22's case: one 1e30 in grad_out zeroed most of the input gradient (a launch-wide scale)."""
    args = _with_entry(_inputs(op, dtype), 7, 1e30)
    with cudcn.deterministic():
        got = _backward(op, args)
    _check_input_gradient(op, args, got[0], dtype)
    if op == "deform_conv2d":
        return
    # The shift (offset / trans) gradient: the huge entry reaches the two elements of its own bin;
    # ms_deform_attn's location gradient (a warp sum, no scatter): the L x P (x, y) of its query.
    full, rest = _want(op, args, dtype)[1], _want(op, _with_entry(args, 7, 0.0), dtype)[1]
    huge = np.abs(full - rest) > 1e20
    assert 0 < huge.sum() <= (2 * 2 * 2 if op == "ms_deform_attn" else 2)
    np.testing.assert_allclose(got[1][huge], full[huge], rtol=FACTOR * np.finfo(dtype).eps)
    allowed = FACTOR * np.finfo(dtype).eps * (np.abs(rest).max() + 1.0)
    np.testing.assert_array_less(np.abs(got[1][~huge] - full[~huge]), allowed)


@pytest.mark.parametrize("op", OPS)
def test_grad_out_of_order_1e_minus_300_keeps_its_digits(op):
    """Issue 22: relative error 3.8-40 (the scale exponent was capped)."""
    args = _inputs(op, np.float64)
    args = (args[0] * 1e-300, *args[1:])
    with cudcn.deterministic():
        got = _backward(op, args)
    _check_input_gradient(op, args, got[0], np.float64)
    if op != "deform_conv2d":
        want = _reference(op, args)[1]
        allowed = FACTOR * np.finfo(np.float64).eps * np.abs(want).max()
        np.testing.assert_array_less(np.abs(got[1] - want), allowed)


@pytest.mark.parametrize("op", OPS)
def test_magnitudes_near_the_float64_maximum_raise_nothing(op):
    """A launch whose contributions' magnitudes add up past float64's range (an OverflowError
    before): every element's own sum is finite, and within the bound."""
    args = _inputs(op, np.float64)
    args = (args[0] * (1e307 if op == "ms_deform_attn" else 3e306), *args[1:])  # its grad_out is small
    assert not np.isfinite(np.abs(args[0]).sum())
    with cudcn.deterministic():
        got = _backward(op, args)
    # ms_deform_attn's location and weight gradients are warp sums, not scatters: they may overflow.
    assert all(np.isfinite(g).all() for g in (got[:1] if op == "ms_deform_attn" else got))
    _check_input_gradient(op, args, got[0], np.float64)


def _pixel_rois(grads: list[float]) -> tuple[np.ndarray, ...]:
    """deform_roi_pool inputs whose RoIs each put their one sample exactly on pixel (2, 2) of a
    4 x 4 map: the input gradient there is the exact sum of ``grads``."""
    rois = np.array([[0, 1.5, 1.5, 2.5, 2.5]] * len(grads))
    grad = np.array(grads, dtype=np.float64).reshape(-1, 1, 1, 1)
    return grad, np.zeros((1, 1, 4, 4)), rois


PIXEL = DeformRoIPoolParams(
    pooled_h=1, pooled_w=1, spatial_scale=1.0, sampling_ratio=1, gamma=0.0, aligned=False
)


@pytest.mark.parametrize(
    ("grads", "want"),
    [
        ([1.7e308, -1.7e308, 1.0], 1.0),  # magnitude sum past float64, exact sum 1
        ([1.7e308, 1.7e308, -1.0], np.inf),  # the exact sum itself past float64
        ([1e-300, 3e-300, -2e-300], 2e-300),
    ],
)
def test_an_element_whose_magnitude_sum_overflows(grads, want):
    """The bound (docs/determinism.md) at one element: ``|result - S| <= 2**-51 |S| +
    m 2**(E + L - 112) + m 2**(E + 2L - 124)`` for the exact sum S of m < 2**L contributions, the
    largest below 2**E; inf exactly where the exact sum is past float64's range."""
    grad, x, rois = _pixel_rois(grads)
    with cudcn.deterministic():
        got = emulated.deform_roi_pool_backward(grad, x, rois, None, PIXEL)[0][0, 0, 2, 2]
    assert np.count_nonzero(emulated.deform_roi_pool_backward(grad, x, rois, None, PIXEL)[0]) == 1
    if np.isinf(want):
        assert got == want
        return
    m, exponent = len(grads), int(np.frexp(max(abs(g) for g in grads))[1])
    width = int(np.frexp(float(m))[1])
    allowed = (
        2.0**-51 * abs(want) + m * 2.0 ** (exponent + width - 112) + m * 2.0 ** (exponent + 2 * width - 124)
    )
    assert abs(got - want) <= allowed, (got, want, allowed)


@pytest.mark.parametrize("op", OPS)
def test_extremes_stay_bitwise_identical_for_every_schedule(monkeypatch, op):
    args = _with_entry(_inputs(op, np.float64), 7, 1e300)
    args = (args[0] * 1e-290, *args[1:])  # entries of 1e-290 beside one of 1e10
    with cudcn.deterministic():
        runs = _under_schedules(monkeypatch, op, args)
    assert all(_identical(runs[0], run) for run in runs[1:]), f"{op}: schedules changed the bits"


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("op", OPS)
def test_non_finite_grad_out_beside_huge_values_propagates(op, value):
    args = _with_entry(_with_entry(_inputs(op, np.float64), 7, 1e300), 5, value)
    atomic = _backward(op, args)
    with cudcn.deterministic():
        exact = _backward(op, args)
    assert not np.isfinite(atomic[0]).all()
    for a, d in zip(atomic, exact, strict=True):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(d))
        np.testing.assert_array_equal(np.isposinf(a), np.isposinf(d))
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(d))
