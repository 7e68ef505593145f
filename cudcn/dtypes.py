"""The floating dtypes cudcn accepts and the precision each one computes in.

float32 and float64 compute in themselves. float16 and bfloat16 (``ml_dtypes.bfloat16``; NumPy has no
bfloat16 of its own) are storage types: every op reads them, computes coordinates, interpolation
weights and every sum in float32, and rounds each result once to the input dtype (SPEC, "Arrays,
backends, dtypes").

NumPy does not call bfloat16 floating: ``np.dtype(ml_dtypes.bfloat16).kind`` is ``'V'``, so checks
written as ``dtype.kind == "f"`` or ``np.issubdtype(dtype, np.floating)`` reject it. Use
:func:`is_float_dtype` instead.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

float16 = np.dtype(np.float16)
bfloat16 = np.dtype(ml_dtypes.bfloat16)
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)

FLOAT_DTYPES = (float16, bfloat16, float32, float64)
HALF_DTYPES = (float16, bfloat16)  # stored in 16 bits, computed in float32


def _dtype(dtype: Any) -> np.dtype | None:
    try:
        return np.dtype(dtype)
    except TypeError:
        return None


def is_float_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` is one of cudcn's floating dtypes (float16, bfloat16, float32, float64)."""
    return _dtype(dtype) in FLOAT_DTYPES


def is_half_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` is float16 or bfloat16 (stored in 16 bits, computed in float32)."""
    return _dtype(dtype) in HALF_DTYPES


def compute_dtype(dtype: Any) -> np.dtype:
    """The dtype an op computes in for inputs of ``dtype``: float32 for float16 and bfloat16, else
    ``dtype`` itself."""
    dtype = np.dtype(dtype)
    return float32 if dtype in HALF_DTYPES else dtype


def eps(dtype: Any) -> float:
    """Machine epsilon (the gap from 1 to the next value) of a floating dtype, bfloat16 included:
    2**-10 for float16, 2**-7 for bfloat16, 2**-23 for float32, 2**-52 for float64."""
    return float(ml_dtypes.finfo(np.dtype(dtype)).eps)


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
    dtype = np.dtype(dtype)
    return a if a is None or a.dtype == dtype else a.astype(dtype)


def check_library_dtype(xp: Any, dtype: Any, what: str) -> None:
    """Raise a ``TypeError`` naming ``what`` when the array library ``xp`` (``numpy`` or ``cupy``)
    cannot hold ``dtype``: CuPy has float16 everywhere, but bfloat16 only where the installed
    version knows ``ml_dtypes.bfloat16``, so only that pair is probed (one empty array)."""
    if xp is np or np.dtype(dtype) != bfloat16:
        return
    try:
        xp.empty(0, dtype=np.dtype(dtype))
    except (TypeError, ValueError, NotImplementedError) as exc:
        version = getattr(xp, "__version__", "?")
        raise TypeError(
            f"{what}: the installed {xp.__name__} {version} has no {np.dtype(dtype)} dtype "
            f"({type(exc).__name__}: {exc}); use float16 or float32 on this array library"
        ) from exc
