"""float16 and bfloat16 on the CPU backend: the Numba kernels run in float32.

A 16-bit value converts to float32 exactly, so running the float32 kernels on float32 copies of the
arguments is computing in float32 from 16-bit storage (SPEC): coordinates, interpolation weights and
every sum in float32. Each result is then rounded once, to nearest even, to the input dtype
(NumPy's ``astype`` for float16, ml_dtypes' for bfloat16).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from cudcn.dtypes import float32, is_half_dtype


def computed_in_float32(function: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a backend function whose positional arguments are arrays (or None) of one dtype: for
    float16 / bfloat16 arrays it runs on float32 copies and returns its arrays in the input dtype."""

    @functools.wraps(function)
    def run(*arrays: Any, **params: Any) -> Any:
        dtype = next((a.dtype for a in arrays if isinstance(a, np.ndarray)), None)
        if dtype is None or not is_half_dtype(dtype):
            return function(*arrays, **params)
        wide = [a.astype(float32) if isinstance(a, np.ndarray) else a for a in arrays]
        result = function(*wide, **params)
        if isinstance(result, tuple):
            return tuple(None if r is None else r.astype(dtype) for r in result)
        return result.astype(dtype)

    return run
