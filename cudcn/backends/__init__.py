"""Backend selection: the array's library picks the backend.

NumPy arrays run on a host backend: ``"cpu"`` (Numba kernels, the default) or ``"emulated"`` (the CUDA
``.cu`` kernels compiled for the host with g++). CuPy arrays run on ``"cuda"``. The host backend is chosen
by :func:`use_backend` (a context manager) or, outside one, by the environment variable ``CUDCN_BACKEND``,
read at each call. CuPy is never imported for NumPy inputs.

Every backend module exposes the same array-level functions, called with validated, C-contiguous arrays
of one dtype and normalised integer parameters (see ``cudcn.ops``).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from cudcn.arrays import array_module, is_cupy_array

__all__ = [
    "HOST_BACKENDS",
    "array_module",
    "backend_name_for",
    "deterministic",
    "deterministic_enabled",
    "get_backend",
    "host_backend",
    "is_cupy_array",
    "new_output",
    "poisoning",
    "use_backend",
]

HOST_BACKENDS = ("cpu", "emulated")
_MODULES = {
    "cpu": "cudcn.backends.cpu",
    "emulated": "cudcn.backends.emulated",
    "cuda": "cudcn.backends.cuda",
}
_loaded: dict[str, ModuleType] = {}  # the backend modules imported so far, by name
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("cudcn_backend", default=None)
_poison: contextvars.ContextVar[bool] = contextvars.ContextVar("cudcn_poison", default=False)
_deterministic: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "cudcn_deterministic", default=None
)


def host_backend() -> str:
    """The backend NumPy arrays run on now: ``use_backend``'s choice, else ``CUDCN_BACKEND``, else cpu."""
    name = _forced.get()
    if name is None:
        name = os.environ.get("CUDCN_BACKEND", "").strip().lower() or "cpu"
        if name not in HOST_BACKENDS:
            raise ValueError(
                f"CUDCN_BACKEND must be one of {HOST_BACKENDS} (CuPy arrays always run on 'cuda'), "
                f"got {name!r}"
            )
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run NumPy inputs on the host backend ``name`` (``"cpu"`` or ``"emulated"``) inside the block.

    Example::

        with cudcn.use_backend("emulated"):
            out = cudcn.functional.deform_conv2d(x, offset, weight)
    """
    if name not in HOST_BACKENDS:
        raise ValueError(f"backend must be one of {HOST_BACKENDS}, got {name!r}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def backend_name_for(a: Any) -> str:
    """The backend an op on array ``a`` runs on."""
    return "cuda" if is_cupy_array(a) else host_backend()


def get_backend(a: Any) -> ModuleType:
    """The backend module for array ``a`` (imported on first use)."""
    name = backend_name_for(a)
    module = _loaded.get(name)
    if module is None:
        module = _loaded[name] = importlib.import_module(_MODULES[name])
    return module


@contextlib.contextmanager
def poisoning(enabled: bool = True) -> Iterator[None]:
    """Inside the block every backend fills the outputs it allocates with NaN before writing them."""
    token = _poison.set(enabled)
    try:
        yield
    finally:
        _poison.reset(token)


def deterministic_enabled() -> bool:
    """Whether gradients must be bitwise reproducible now: ``deterministic``'s choice, else
    ``CUDCN_DETERMINISTIC`` (``1`` / ``0``, read at each call), else off."""
    enabled = _deterministic.get()
    if enabled is not None:
        return enabled
    text = os.environ.get("CUDCN_DETERMINISTIC", "").strip()
    if text not in ("", "0", "1"):
        raise ValueError(f"CUDCN_DETERMINISTIC must be 0 or 1, got {text!r}")
    return text == "1"


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Inside the block every backend computes bitwise reproducible results, run to run and for any
    schedule: the GPU path (``cuda``, ``emulated``) scatters its gradients into exact fixed-point
    integers instead of float atomics (see ``Scatter`` in ``cudcn/kernels/common.cuh``); the ``cpu``
    backend is deterministic always. The default outside a block comes from
    ``CUDCN_DETERMINISTIC=1``.

    Example::

        with cudcn.deterministic():
            grads = cudcn.ops.deform_conv2d_backward(grad_out, x, offset, weight)
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"deterministic(enabled) takes True or False, got {enabled!r}")
    token = _deterministic.set(enabled)
    try:
        yield
    finally:
        _deterministic.reset(token)


def new_output(xp: ModuleType, shape: tuple[int, ...], dtype: Any) -> Any:
    """Allocate an output that a kernel overwrites completely; NaN-filled under ``poisoning``."""
    out = xp.empty(shape, dtype=dtype)
    if _poison.get():
        out.fill(np.nan)
    return out
