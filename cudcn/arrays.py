"""Array-library helpers with no dependency on the tape or the kernels: which library an array
belongs to, and which device a CuPy array lives on. CuPy is never imported for NumPy arrays.

Both the autograd tape (``cudcn.autograd``) and the backends (``cudcn.backends``) use these, so
neither needs the other.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, TypeAlias

import numpy as np

# A numpy.ndarray or a cupy.ndarray. CuPy is optional (and imported lazily), so the alias is ``Any``
# rather than a union of the two; it documents the intent of a signature and is the one place to
# narrow it later.
Array: TypeAlias = Any


def is_cupy_array(a: Any) -> bool:
    """True for a CuPy ndarray, decided without importing CuPy."""
    kind = type(a)
    return kind is not np.ndarray and kind.__module__.split(".", 1)[0] == "cupy"


def array_module(a: Any) -> ModuleType:
    """``cupy`` for a CuPy array, else ``numpy``."""
    if is_cupy_array(a):
        return importlib.import_module("cupy")
    return np


def device_id(a: Any) -> int | None:
    """The CUDA device index of a CuPy array, None for any other array."""
    return int(a.device.id) if is_cupy_array(a) else None


def parse_device(target: str) -> tuple[str, int | None]:
    """``"cpu"`` -> ``("cpu", None)``, ``"cuda"`` -> ``("cuda", None)`` (the current device),
    ``"cuda:N"`` -> ``("cuda", N)``; anything else raises ``ValueError``."""
    kind, sep, index = target.partition(":")
    if kind == "cuda" and sep and index.isdigit():
        return "cuda", int(index)
    if target in ("cpu", "cuda"):
        return target, None
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {target!r}")
