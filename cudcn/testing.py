"""Test helpers: ``gradcheck``, ``poison_outputs`` and tolerances derived from the dtype.

``gradcheck`` compares the tape's gradients with central finite differences. The tolerance helpers
compare a backend's result with the float64 reference (``cudcn.reference``): the allowed error is
``factor * eps(dtype) * scale``, the rounding error of the backend's dtype relative to a magnitude
``scale`` of the computation (flash-attention's way of deriving a tolerance instead of guessing one).
A float16 or bfloat16 result is computed in float32 and rounded once, so its bound is float32's plus
that one rounding: half an ulp of the dtype, ``eps(dtype) / 2 * |result|`` (see
:func:`reference_tolerance`). ``scale`` defaults to ``max|reference|``; for a sum of products,
the per-element sum of ``|terms|`` is tighter where results cancel, e.g. the reference evaluated on
``abs`` of its inputs for an op that is linear in each of them.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from cudcn.autograd import Tensor, no_grad
from cudcn.backends import array_module, is_cupy_array, poisoning
from cudcn.dtypes import compute_dtype, eps, is_float_dtype

__all__ = [
    "GradcheckError",
    "assert_allclose_to_reference",
    "assert_equal_up_to_summation_order",
    "gradcheck",
    "poison_outputs",
    "reference_tolerance",
    "summation_order_tolerance",
    "to_numpy",
]


class GradcheckError(AssertionError):
    """A tape gradient differs from its finite-difference estimate."""


@contextlib.contextmanager
def poison_outputs() -> Iterator[None]:
    """Inside the block every backend fills the output arrays it allocates with NaN before its kernels
    write them, so an element a kernel forgets to write shows up as NaN in the result.

    Example::

        with cudcn.testing.poison_outputs():
            out = cudcn.ops.deform_conv2d_forward(x, offset, weight)
        assert not np.isnan(out).any()
    """
    with poisoning():
        yield


def to_numpy(a: Any) -> np.ndarray:
    """A host NumPy view or copy of ``a`` (a NumPy or CuPy array, a ``Tensor`` or a scalar)."""
    if isinstance(a, Tensor):
        a = a.data
    if is_cupy_array(a):
        return a.get()
    return np.asarray(a)


def _check_input(i: int, x: Any) -> Tensor:
    """``inputs[i]`` as the Tensor gradcheck evaluates ``fn`` on (a private copy when checked)."""
    data = x.data if isinstance(x, Tensor) else x
    if not (isinstance(data, np.ndarray) or is_cupy_array(data)):
        raise TypeError(
            f"gradcheck: inputs[{i}] must be a float64 NumPy/CuPy array or Tensor, got {type(x).__name__}"
        )
    if data.dtype != np.float64:
        why = ""
        if is_float_dtype(data.dtype):
            why = (
                f" (finite differences need float64; in {data.dtype} rounding swamps them: check "
                "the float64 function, and compare 16-bit results with the float64 reference)"
            )
        raise TypeError(
            f"gradcheck: inputs[{i}] must have dtype float64, got {data.dtype}{why}; "
            "convert it with .astype(numpy.float64)"
        )
    if isinstance(x, Tensor) and not x.requires_grad:
        return x  # a constant: not perturbed, not checked
    return Tensor(data.copy(), requires_grad=True)


def gradcheck(
    fn: Callable[..., Tensor],
    inputs: Sequence[Any],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    seed: int | None = None,
) -> bool:
    """Check the tape's gradients of ``fn`` against central finite differences.

    For a random cotangent ``v`` (standard normal, shape of ``fn``'s output) the gradient of
    ``sum(v * fn(*x))`` with respect to each checked input is computed by ``backward`` and, element by
    element, by ``(f(x + eps) - f(x - eps)) / (2 eps)``. They must agree within
    ``atol + rtol * |numerical|``.

    Args:
        fn: takes one Tensor per input and returns a Tensor.
        inputs: float64 NumPy/CuPy arrays (checked: wrapped in Tensors with ``requires_grad=True``) or
            Tensors (checked when ``requires_grad`` is set, else constants). Inputs are copied, never
            modified; CuPy inputs are perturbed on the device.
        eps, atol, rtol: finite-difference step and tolerances.
        seed: seed of the cotangent's random generator.

    Returns:
        True.

    Raises:
        TypeError: an input is not a float64 array or Tensor (the message gives its index).
        ValueError: ``eps`` is not a positive finite number, or ``atol`` / ``rtol`` is negative or
            not finite.
        GradcheckError: the element with the largest excess error, naming the input index, the element
            index and the tape and finite-difference values.
    """
    if not (isinstance(eps, numbers.Real) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"gradcheck: eps must be a positive finite number, got {eps!r}")
    for name, tol in (("atol", atol), ("rtol", rtol)):
        if not (isinstance(tol, numbers.Real) and math.isfinite(tol) and tol >= 0):
            raise ValueError(f"gradcheck: {name} must be a finite number >= 0, got {tol!r}")
    tensors = [_check_input(i, x) for i, x in enumerate(inputs)]
    checked = [i for i, t in enumerate(tensors) if t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input to check (every input is a Tensor without grad)")
    out = fn(*tensors)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    xp = array_module(out.data)
    cotangent = xp.asarray(np.random.default_rng(seed).standard_normal(out.shape))
    if out.requires_grad:
        out.backward(cotangent)

    def objective() -> float:
        with no_grad():
            return float((cotangent * fn(*tensors).data).sum())

    for i in checked:
        leaf = tensors[i]
        tape = leaf.grad if leaf.grad is not None else xp.zeros(leaf.shape)
        flat = leaf.data.reshape(-1)  # a view: leaf.data is our contiguous copy
        numerical = np.empty(flat.size)
        for j in range(flat.size):
            original = float(flat[j])
            flat[j] = original + eps
            plus = objective()
            flat[j] = original - eps
            minus = objective()
            flat[j] = original
            numerical[j] = (plus - minus) / (2 * eps)
        _compare(i, to_numpy(tape).reshape(leaf.shape), numerical.reshape(leaf.shape), atol, rtol)
    return True


def _compare(i: int, tape: np.ndarray, numerical: np.ndarray, atol: float, rtol: float) -> None:
    """Raise GradcheckError for input ``i`` unless ``|tape - numerical| <= atol + rtol |numerical|``."""
    excess = np.abs(tape - numerical) - (atol + rtol * np.abs(numerical))
    bad = ~(excess <= 0)  # NaN counts as a mismatch
    if not bad.any():
        return
    worst = np.where(np.isnan(excess), np.inf, excess)
    idx = tuple(int(k) for k in np.unravel_index(int(np.argmax(worst)), tape.shape))
    a, n = float(tape[idx]), float(numerical[idx])
    raise GradcheckError(
        f"gradcheck: gradient of input {i} differs at index {idx}: tape {a!r}, "
        f"finite difference {n!r} (|diff| {abs(a - n):.3g}, "
        f"atol {atol}, rtol {rtol}; {int(bad.sum())} of {bad.size} elements differ)"
    )


def reference_tolerance(dtype: Any, scale: Any, factor: float = 16.0, reference: Any = None) -> Any:
    """Allowed absolute error for a result stored in ``dtype``: ``factor * eps(c) * scale`` for the
    work done in the compute dtype ``c`` (``cudcn.dtypes.compute_dtype``: float32 for float16 and
    bfloat16, else ``dtype``), plus, for a 16-bit ``dtype``, the one rounding of that result to it:
    ``eps(dtype) / 2 * (|reference| + the first term)``, plus half the dtype's smallest subnormal.

    ``scale`` and ``reference`` (the float64 result; needed for a 16-bit ``dtype``) are floats or
    host arrays broadcastable to the result.
    """
    work = factor * eps(compute_dtype(dtype)) * np.asarray(to_numpy(scale), dtype=np.float64)
    if compute_dtype(dtype) == np.dtype(dtype):
        return work
    if reference is None:
        raise ValueError(f"reference_tolerance: a {np.dtype(dtype)} result needs its reference")
    magnitude = np.abs(np.asarray(to_numpy(reference), dtype=np.float64)) + work
    tiny = float(importlib.import_module("ml_dtypes").finfo(np.dtype(dtype)).smallest_subnormal)
    return work + eps(dtype) / 2 * magnitude + tiny / 2


def summation_order_tolerance(dtype: Any, abs_sum: Any, terms: int) -> Any:
    """Largest difference between two float sums of the same ``terms`` numbers added in different
    orders, as two atomicAdd scatters on a GPU may add them: ``2 * (terms - 1) * eps(dtype) *
    abs_sum`` (twice the worst-case error of recursive summation), per element.

    ``abs_sum`` is ``sum |t|`` per element (a float or a host array); ``terms`` bounds how many
    numbers one element adds up.
    """
    return reference_tolerance(dtype, abs_sum, factor=2.0 * max(terms - 1, 0))


def assert_equal_up_to_summation_order(
    actual: Any, expected: Any, *, exact: bool, abs_sum: Any, terms: int, name: str = ""
) -> None:
    """Assert two results of the same computation agree: bit for bit when ``exact`` (a
    deterministic backend), else within :func:`summation_order_tolerance` of each other (atomic
    scatters, whose order of addition varies run to run)."""
    got, want = to_numpy(actual), to_numpy(expected)
    if exact:
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    allowed = summation_order_tolerance(got.dtype, abs_sum, terms)
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    bad = ~(err <= allowed)
    if bad.any():
        idx = tuple(int(k) for k in np.unravel_index(int(np.argmax(np.where(bad, err, -1))), err.shape))
        raise AssertionError(
            f"{name + ': ' if name else ''}{int(bad.sum())} of {bad.size} elements differ by more "
            f"than the summation-order bound ({terms} terms); worst at {idx}: {got[idx]!r} vs "
            f"{want[idx]!r}, allowed {np.broadcast_to(allowed, err.shape)[idx]:.3g}"
        )


def assert_allclose_to_reference(
    actual: Any,
    reference: Any,
    dtype: Any = None,
    *,
    scale: Any = None,
    factor: float = 16.0,
    name: str = "",
) -> None:
    """Assert that a backend result is within rounding error of the float64 reference.

    Args:
        actual: the backend's result (NumPy or CuPy array, Tensor); compared on the host in float64.
        reference: the float64 reference result, same shape.
        dtype: the dtype of the backend's result (a 16-bit one is computed in float32 and rounded
            once); defaults to ``actual.dtype``.
        scale: magnitude of the computation, a float or an array broadcastable to the result (e.g. the
            sum of ``|terms|`` per element); defaults to ``max|reference|`` (1 when that is 0).
        factor: multiple of ``eps(dtype) * scale`` allowed.
        name: what is compared, for the message.

    Raises:
        AssertionError: naming the count of failing elements and the worst one (index, both values,
            the error and the allowed error).
    """
    got = to_numpy(actual)
    dtype = np.dtype(got.dtype if dtype is None else dtype)
    got = got.astype(np.float64)
    ref = to_numpy(reference).astype(np.float64)
    label = f"{name}: " if name else ""
    if got.shape != ref.shape:
        raise AssertionError(f"{label}shape {got.shape} differs from the reference's {ref.shape}")
    if scale is None:
        scale = float(np.max(np.abs(ref))) if ref.size else 1.0
        scale = scale if scale > 0 else 1.0
    allowed = np.broadcast_to(reference_tolerance(dtype, scale, factor, ref), ref.shape)
    if not np.isfinite(allowed).all():
        raise ValueError(f"{label}the allowed error is not finite everywhere: scale overflowed")
    err = np.abs(got - ref)
    bad = ~(err <= allowed)  # NaN counts as a failure
    if not bad.any():
        return
    worst = np.where(np.isnan(err), np.inf, err - allowed)
    rounding = " + one rounding" if compute_dtype(dtype) != dtype else ""
    idx = tuple(int(k) for k in np.unravel_index(int(np.argmax(worst)), ref.shape))
    raise AssertionError(
        f"{label}{int(bad.sum())} of {bad.size} elements exceed the {dtype} bound ({factor} * "
        f"eps({compute_dtype(dtype)}) * scale{rounding}); "
        f"worst at {idx}: got {float(got[idx])!r}, reference {float(ref[idx])!r}, "
        f"|diff| {err[idx]:.3g} > "
        f"allowed {allowed[idx]:.3g}"
    )
