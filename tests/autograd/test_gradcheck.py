"""cudcn.testing: gradcheck accepts correct gradients and rejects wrong ones; tolerance helpers;
poison_outputs."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cudcn.autograd import Function, Tensor
from cudcn.backends import new_output
from cudcn.testing import (
    GradcheckError,
    assert_allclose_to_reference,
    gradcheck,
    poison_outputs,
    reference_tolerance,
)

SEED = 7


class Square(Function):
    """x², with a backward scaled by ``factor`` (2 is correct)."""

    factor = 2.0

    def forward(self, x):
        self.save_for_backward(x)
        return x * x

    def backward(self, grad_out):
        (x,) = self.saved
        return (self.factor * x * grad_out,)


class WrongSquare(Square):
    factor = 2.2  # 10 % off: a plausible bug


class WeightedSum(Function):
    """x * w summed over the last axis; the gradient of ``w`` is wrong in its last element."""

    def forward(self, x, w):
        self.save_for_backward(x, w)
        return (x * w).sum(axis=-1)

    def backward(self, grad_out):
        x, w = self.saved
        g = grad_out[..., None]
        gw = (g * x).reshape(-1, w.shape[-1]).sum(axis=0)
        gw[-1] += 0.5
        return g * w, gw


@pytest.fixture
def rng() -> np.random.Generator:
    print(f"seed={SEED}")
    return np.random.default_rng(SEED)


def test_passes_on_correct_function(rng):
    x = rng.standard_normal((2, 3))
    assert gradcheck(Square.apply, [x], seed=SEED) is True


def test_passes_with_constant_tensor_input(rng):
    x, w = rng.standard_normal((2, 3)), rng.standard_normal(3)
    # A Tensor without requires_grad is a constant: WeightedSum's wrong gradient for w is not checked.
    assert gradcheck(WeightedSum.apply, [x, Tensor(w)], seed=SEED)


def test_rejects_wrong_backward(rng):
    x = rng.uniform(0.5, 1.5, (2, 3))
    with pytest.raises(GradcheckError, match=r"input 0 differs at index \(\d, \d\)") as info:
        gradcheck(WrongSquare.apply, [x], seed=SEED)
    assert "tape" in str(info.value) and "finite difference" in str(info.value)
    assert isinstance(info.value, AssertionError)


def test_names_the_wrong_input_and_element(rng):
    x, w = rng.standard_normal((2, 3)), rng.standard_normal(3)
    with pytest.raises(GradcheckError, match=r"input 1 differs at index \(2,\)"):
        gradcheck(WeightedSum.apply, [x, w], seed=SEED)


def test_reports_both_values():
    x = np.array([1.0])
    with pytest.raises(GradcheckError) as info:
        gradcheck(WrongSquare.apply, [x], seed=SEED)
    found = re.search(r"tape (\S+), finite difference (\S+) ", str(info.value))
    assert found, str(info.value)
    v = np.random.default_rng(SEED).standard_normal(1)[0]  # gradcheck's cotangent for this seed
    # d/dx <v, x²> = 2 v x at x = 1; the wrong backward gives 2.2 v.
    assert float(found[1]) == pytest.approx(2.2 * v, rel=1e-12)
    assert float(found[2]) == pytest.approx(2.0 * v, rel=1e-6)


def test_does_not_modify_inputs(rng):
    x = rng.standard_normal(4)
    before = x.copy()
    gradcheck(lambda t: (t * t).sum(), [x], seed=SEED)
    np.testing.assert_array_equal(x, before)


def test_input_not_used_has_zero_gradient(rng):
    x, y = rng.standard_normal(3), rng.standard_normal(2)
    assert gradcheck(lambda a, b: a.exp(), [x, y], seed=SEED)


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_type_error_on_non_float64_input(rng, dtype):
    x = rng.standard_normal(3)
    bad = np.ones(3, dtype)
    with pytest.raises(TypeError, match=r"inputs\[1\].*float64"):
        gradcheck(lambda a, b: a * b, [x, bad])
    with pytest.raises(TypeError, match=r"inputs\[0\].*float64"):
        gradcheck(lambda a: a * 2.0, [Tensor(np.ones(3, np.float32), requires_grad=True)])


def test_type_error_on_non_array_input_and_output():
    with pytest.raises(TypeError, match=r"inputs\[0\]"):
        gradcheck(lambda a: a, [[1.0, 2.0]])
    with pytest.raises(TypeError, match="must return a Tensor"):
        gradcheck(lambda a: a.data, [np.ones(2)])


def test_reference_tolerance_accepts_rounding_and_rejects_errors(rng):
    reference = rng.standard_normal((3, 4)) * 100
    actual = reference.astype(np.float32)
    assert_allclose_to_reference(actual, reference, name="rounded")
    actual[1, 2] += 1e-3 * 100
    with pytest.raises(AssertionError, match=r"bumped: 1 of 12 .* worst at \(1, 2\)"):
        assert_allclose_to_reference(actual, reference, name="bumped")


def test_reference_tolerance_per_element_scale():
    reference = np.array([1e-3, 1e3])
    actual = reference + np.array([1e-7, 0.0])
    # With the default scale (max|reference| = 1e3) a 1e-7 error on the small element is allowed ...
    assert_allclose_to_reference(actual, reference, np.float32)
    # ... but not against a per-element scale.
    with pytest.raises(AssertionError, match=r"worst at \(0,\)"):
        assert_allclose_to_reference(actual, reference, np.float32, scale=np.abs(reference))
    assert reference_tolerance(np.float64, 1.0, factor=1.0) == np.finfo(np.float64).eps


def test_reference_tolerance_nan_fails():
    with pytest.raises(AssertionError, match="1 of 2"):
        assert_allclose_to_reference(np.array([1.0, np.nan]), np.array([1.0, 2.0]))


def test_poison_outputs_fills_new_outputs_with_nan():
    with poison_outputs():
        poisoned = new_output(np, (2, 2), np.float32)
    assert np.isnan(poisoned).all()
