"""Kernel loading for the CUDA backend: one ``cupy.RawModule`` per (device, op), compiled by NVRTC.

The module's code is the joined text of ``cudcn/kernels/<op>.cu`` and its headers
(:func:`~cudcn.backends.cuda.source.kernel_source`), so CuPy's disk cache sees header changes; its
``name_expressions`` are the op's ``NAME_EXPRESSIONS``, and kernels are looked up by those names.
CuPy is imported here, on the first CUDA call, never by ``import cudcn``.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from cudcn.backends.cuda.source import kernel_source, name_expressions
from cudcn.backends.launch.common import GetKernel

# No multiply-add contraction, as in the host build (-ffp-contract=off), so both round alike.
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false")

_lock = threading.Lock()
_modules: dict[tuple[int, str], Any] = {}
_kernels: dict[tuple[int, str, str], Any] = {}


def import_cupy() -> Any:
    """The ``cupy`` module, imported on first use, with a clear error when it is missing."""
    try:
        return importlib.import_module("cupy")
    except ImportError as error:
        raise ImportError(
            "CuPy arrays need CuPy: install cudcn with the cuda13 or cuda12 extra, "
            'e.g. pip install "cudcn[cuda13]"'
        ) from error


def _module(cp: Any, device: int, stem: str) -> Any:
    key = (device, stem)
    with _lock:
        module = _modules.get(key)
        if module is None:
            module = cp.RawModule(
                code=kernel_source(stem),
                options=NVRTC_OPTIONS,
                name_expressions=list(name_expressions(stem)),
            )
            _modules[key] = module
    return module


def cuda_kernels(stem: str) -> GetKernel:
    """``get_kernel(name_expression)`` for op ``stem`` on the current CuPy device."""
    cp = import_cupy()
    device = cp.cuda.Device().id

    def get_kernel(name: str) -> Any:
        key = (device, stem, name)
        kernel = _kernels.get(key)
        if kernel is None:
            kernel = _module(cp, device, stem).get_function(name)
            _kernels[key] = kernel
        return kernel

    return get_kernel
