"""Moving a :class:`~cudcn.nn.Module` between devices and dtypes (``Module.to`` and its shortcuts).

Parameters keep their objects: only their ``data`` and ``grad`` arrays are replaced, so optimisers
built afterwards see the moved arrays. Floating buffers (BatchNorm's running statistics) take the
compute dtype of the target, float32 for float16 and bfloat16.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import numpy as np

from cudcn.arrays import array_module, is_cupy_array, parse_device
from cudcn.dtypes import check_library_dtype, compute_dtype, describe_floats, is_float_dtype

if TYPE_CHECKING:
    from cudcn.nn.module import Module

__all__ = ["move"]

Device = tuple[str, int | None]


def _move(a: Any, device: Device | None, dtype: np.dtype | None, name: str = "array") -> Any:
    """``a`` on ``device`` (``("cpu", None)``, ``("cuda", None)`` for the current CUDA device or
    ``("cuda", N)``) and, when it is floating, cast to ``dtype``; a ``TypeError`` naming ``name``
    when the target library has no such dtype (bfloat16 on a CuPy without it)."""
    if a is None:
        return None
    if device is not None and device[0] == "cuda" and is_float_dtype(a.dtype):
        check_library_dtype(importlib.import_module("cupy"), a.dtype, f"moving {name} to CUDA")
    if device is not None and device[0] == "cpu" and is_cupy_array(a):
        a = a.get()
    elif device is not None and device[0] == "cuda":
        cupy = importlib.import_module("cupy")
        target = cupy.cuda.Device(device[1]) if device[1] is not None else cupy.cuda.Device()
        if not is_cupy_array(a) or a.device.id != target.id:
            with target:  # a copy on the target device (through the host from another GPU)
                a = cupy.asarray(a.get() if is_cupy_array(a) else a)
    if dtype is not None and is_float_dtype(a.dtype) and a.dtype != dtype:
        check_library_dtype(array_module(a), dtype, f"casting {name}")
        a = a.astype(dtype)
    return a


def move(module: Module, target: Any) -> None:
    """Move ``module``'s parameters, gradients and buffers to the device string ``target``
    (``"cpu"``, ``"cuda"``, ``"cuda:N"``), or cast the floating ones to the dtype ``target``
    (see :meth:`cudcn.nn.Module.to`)."""
    device = dtype = None
    if isinstance(target, str):
        device = parse_device(target)
    else:
        try:
            dtype = np.dtype(target)
        except TypeError:
            dtype = None
        if not is_float_dtype(dtype):
            raise TypeError(f"dtype must be {describe_floats()} (or a device string), got {target!r}")
    buffer_dtype = None if dtype is None else compute_dtype(dtype)
    for module_name, sub in module.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for key, p in sub._parameters.items():
            if p is not None:
                p.data = _move(p.data, device, dtype, prefix + key)
                p.grad = _move(p.grad, device, dtype, f"{prefix}{key}.grad")
        for key, b in sub._buffers.items():
            sub._buffers[key] = _move(b, device, buffer_dtype, prefix + key)
