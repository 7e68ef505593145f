"""Shared fixtures: the ``backend`` fixture runs a test on every backend.

``cpu`` and ``emulated`` run everywhere; ``cuda`` is marked ``gpu`` and skipped, with the reason shown in
the summary, when CuPy or a CUDA device is missing.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import cudcn
from cudcn.dtypes import check_library_dtype


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """Why the CUDA backend cannot run here, or None when it can."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (no GPU tests on this machine)"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises its own CUDARuntimeError without a driver
        return f"no CUDA device: {exc}"
    return None if count > 0 else "no CUDA device"


@dataclass(frozen=True)
class Backend:
    """How a test moves arrays to a backend and runs ops on it."""

    name: str

    def asarray(self, a: np.ndarray) -> Any:
        """A copy of host array ``a`` on this backend's device."""
        if self.name == "cuda":
            import cupy

            try:
                check_library_dtype(cupy, a.dtype, "GPU test")
            except TypeError as exc:
                pytest.skip(str(exc))
            return cupy.asarray(a)
        return np.array(a, copy=True)

    def to_numpy(self, a: Any) -> np.ndarray:
        """Host copy of a backend array (or None)."""
        if a is None:
            return None
        if self.name == "cuda":
            return a.get()
        return np.asarray(a)

    def context(self) -> contextlib.AbstractContextManager:
        """The context under which cudcn dispatches NumPy arrays to this backend."""
        if self.name == "cuda":
            return contextlib.nullcontext()
        return cudcn.use_backend(self.name)


BACKEND_PARAMS = [
    pytest.param("cpu"),
    pytest.param("emulated"),
    pytest.param("cuda", marks=pytest.mark.gpu),
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request) -> Backend:
    """Each backend in turn: cpu, emulated, cuda (GPU only)."""
    return Backend(request.param)


def pytest_collection_modifyitems(config, items):
    reason = cuda_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"GPU test skipped: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
