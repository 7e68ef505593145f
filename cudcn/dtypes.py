"""The floating dtypes cudcn accepts and the precision each one computes in.

float32 and float64 compute in themselves. float16 and bfloat16 (``ml_dtypes.bfloat16``; NumPy has no
bfloat16 of its own) are storage types: every op reads them, computes coordinates, interpolation
weights and every sum in float32, and rounds each result once to the input dtype (docs/spec.md,
"Arrays, backends and dtypes").

NumPy does not call bfloat16 floating: ``np.dtype(ml_dtypes.bfloat16).kind`` is ``'V'``, so checks
written as ``dtype.kind == "f"`` or ``np.issubdtype(dtype, np.floating)`` reject it. Use
:func:`is_float_dtype` instead.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

float16 = np.dtype(np.float16)
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)


def __getattr__(name: str) -> Any:
    """``bfloat16``, ``FLOAT_DTYPES`` (float16, bfloat16, float32, float64) and ``HALF_DTYPES``
    (float16, bfloat16), built on first access: importing ml_dtypes takes about half a second, so
    ``import cudcn`` does not (an array can only be bfloat16 once ml_dtypes is imported)."""
    if name not in ("bfloat16", "FLOAT_DTYPES", "HALF_DTYPES"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    bfloat16 = np.dtype(importlib.import_module("ml_dtypes").bfloat16)
    values = {
        "bfloat16": bfloat16,
        "FLOAT_DTYPES": (float16, bfloat16, float32, float64),
        "HALF_DTYPES": (float16, bfloat16),
    }
    globals().update(values)
    return values[name]


def _dtype(dtype: Any) -> np.dtype | None:
    try:
        return np.dtype(dtype)
    except TypeError:
        return None


def is_bfloat16(dtype: Any) -> bool:
    """Whether ``dtype`` is ml_dtypes' bfloat16 (without importing ml_dtypes)."""
    dtype = _dtype(dtype)
    ml_dtypes = sys.modules.get("ml_dtypes")  # not imported: nothing can be bfloat16 yet
    return ml_dtypes is not None and dtype == np.dtype(ml_dtypes.bfloat16)


def is_float_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` is one of cudcn's floating dtypes (float16, bfloat16, float32, float64)."""
    if dtype is float32 or dtype is float64:  # the common case, without converting anything
        return True
    dtype = _dtype(dtype)
    return dtype in (float16, float32, float64) or is_bfloat16(dtype)


def is_half_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` is float16 or bfloat16 (stored in 16 bits, computed in float32)."""
    if dtype is float32 or dtype is float64:
        return False
    dtype = _dtype(dtype)
    return dtype == float16 or is_bfloat16(dtype)


def compute_dtype(dtype: Any) -> np.dtype:
    """The dtype an op computes in for inputs of ``dtype``: float32 for float16 and bfloat16, else
    ``dtype`` itself."""
    return float32 if is_half_dtype(dtype) else np.dtype(dtype)


def eps(dtype: Any) -> float:
    """Machine epsilon (the gap from 1 to the next value) of a floating dtype, bfloat16 included:
    2**-10 for float16, 2**-7 for bfloat16, 2**-23 for float32, 2**-52 for float64."""
    if is_bfloat16(_dtype(dtype)):
        return 2.0**-7
    return float(np.finfo(np.dtype(dtype)).eps)


def describe_floats() -> str:
    """The accepted dtypes in words, for error messages."""
    return "float16, bfloat16 (ml_dtypes.bfloat16), float32 or float64"


def widen(a: Any) -> Any:
    """``a`` (a NumPy or CuPy array, or None) in its compute dtype: a float32 copy of a float16 or
    bfloat16 array (exact), else ``a`` itself. Sums over 16-bit data run on the widened array,
    since NumPy and ml_dtypes accumulate a 16-bit reduction in 16 bits (bfloat16: 1000 ones sum
    to 256)."""
    if a is None or not is_half_dtype(a.dtype):
        return a
    return a.astype(float32)


def narrow(a: Any, dtype: Any) -> Any:
    """``a`` rounded once (to nearest even) to ``dtype``; ``a`` itself when it has that dtype."""
    if a is None or a.dtype is dtype:
        return a
    dtype = np.dtype(dtype)
    return a if a.dtype == dtype else a.astype(dtype)


def check_library_dtype(xp: Any, dtype: Any, what: str) -> None:
    """Raise a ``TypeError`` naming ``what`` when the array library ``xp`` (``numpy`` or ``cupy``)
    cannot hold ``dtype``: CuPy has float16 everywhere, but bfloat16 only where the installed
    version knows ``ml_dtypes.bfloat16``, so only that pair is probed (one empty array)."""
    if xp is np or not is_bfloat16(np.dtype(dtype)):
        return
    try:
        xp.empty(0, dtype=np.dtype(dtype))
    except (TypeError, ValueError, NotImplementedError) as exc:
        version = getattr(xp, "__version__", "?")
        raise TypeError(
            f"{what}: the installed {xp.__name__} {version} has no {np.dtype(dtype)} dtype "
            f"({type(exc).__name__}: {exc}); use float16 or float32 on this array library"
        ) from exc


def computed_in_float32(
    function: Callable[..., Any], *, keep_float32: tuple[int, ...] = ()
) -> Callable[..., Any]:
    """Wrap an array-level function whose positional arguments are NumPy arrays (or None) of one
    dtype (the first array's; others may already be float32): for float16 / bfloat16 arrays it runs
    on float32 copies and returns its arrays rounded once, to nearest even, to that dtype (NumPy's
    ``astype``; ml_dtypes' for bfloat16), except the results whose tuple indices are in
    ``keep_float32``, returned in float32 (results defined in the compute dtype, such as
    ms_deform_attn's location gradient).

    A 16-bit value converts to float32 exactly, so this is computing in float32 from 16-bit storage
    (docs/spec.md); the CPU backend runs its float32 Numba kernels this way."""

    @functools.wraps(function)
    def run(*arrays: Any, **params: Any) -> Any:
        first = arrays[0] if arrays else None
        dtype = (
            first.dtype
            if isinstance(first, np.ndarray)
            else next((a.dtype for a in arrays if isinstance(a, np.ndarray)), None)
        )
        if dtype is None or not is_half_dtype(dtype):
            return function(*arrays, **params)
        result = function(*(widen(a) if isinstance(a, np.ndarray) else a for a in arrays), **params)
        if isinstance(result, tuple):
            return tuple(r if i in keep_float32 else narrow(r, dtype) for i, r in enumerate(result))
        return narrow(result, dtype)

    return run
