"""Argument checks shared by every op: one array library, one device, one float dtype, int pairs,
shapes.

Each failure raises ``TypeError`` or ``ValueError`` whose message names the argument, what was expected
and what was given.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from cudcn.arrays import device_id, is_cupy_array
from cudcn.dtypes import describe_floats, is_float_dtype


def _library(a: Any) -> str:
    return "cupy" if is_cupy_array(a) else "numpy"


def check_arrays(arrays: Mapping[str, Any], optional: tuple[str, ...] = ()) -> np.dtype:
    """Check that the given arrays are NumPy or CuPy arrays of one library, one float dtype
    (float16, bfloat16, float32 or float64) and, for CuPy, on the first array's device (the
    input's); return that dtype. The arrays named in ``optional`` may be None (skipped)."""
    first_name = None
    first = None
    for name, a in arrays.items():
        if a is None:
            if name in optional:
                continue
            raise TypeError(f"{name} must be a numpy.ndarray or cupy.ndarray, got None")
        if not (isinstance(a, np.ndarray) or is_cupy_array(a)):
            raise TypeError(f"{name} must be a numpy.ndarray or cupy.ndarray, got {type(a).__name__}")
        if not is_float_dtype(a.dtype):
            raise TypeError(f"{name} must have dtype {describe_floats()}, got {a.dtype}")
        if first is None:
            first_name, first = name, a
            continue
        if type(a) is np.ndarray and type(first) is np.ndarray and a.dtype == first.dtype:
            continue  # the common case: nothing more to check
        if _library(a) != _library(first):
            raise TypeError(
                f"{name} is a {_library(a)} array but {first_name} is a {_library(first)} array; "
                "all arrays of one call must come from the same library"
            )
        if device_id(a) != device_id(first):
            raise ValueError(
                f"{name} is on CUDA device {device_id(a)} but {first_name} is on CUDA device "
                f"{device_id(first)}; every array of one call must live on the {first_name}'s device"
            )
        if a.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {a.dtype} but {first_name} has dtype {first.dtype}; "
                "all arrays of one call must share one dtype"
            )
    if first is None:
        raise TypeError("no array arguments were given")
    return first.dtype


def check_ndim(name: str, a: Any, ndim: int, layout: str) -> None:
    """Require ``a.ndim == ndim``; ``layout`` (e.g. ``"(B, C, H, W)"``) goes into the message."""
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(a.shape)}")


def int_pair(name: str, value: Any, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints → ``(h, w)``, each at least ``minimum``."""
    if type(value) is int:  # the common case first
        pair = (value, value)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum} on each axis, got {value!r}")
    return pair


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """A plain int of at least ``minimum``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """A bool (Python's or NumPy's) as a Python bool; anything else, ``"no"`` or 0 included, is a
    TypeError: a truthy string must not silently read as True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def finite_float(name: str, value: Any) -> float:
    """A finite real number as a Python float."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_shape(name: str, a: Any, expected: tuple[int, ...], meaning: str = "") -> None:
    """Require ``a.shape == expected``; ``meaning`` explains where the expected shape comes from."""
    if tuple(a.shape) != tuple(expected):
        extra = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must have shape {tuple(expected)}{extra}, got {tuple(a.shape)}")


def contiguous(a: Any) -> Any:
    """``a`` as a C-contiguous array of the same library (no copy when it already is one)."""
    if a is None or a.flags.c_contiguous:
        return a
    if is_cupy_array(a):
        import cupy

        return cupy.ascontiguousarray(a)
    return np.ascontiguousarray(a)
