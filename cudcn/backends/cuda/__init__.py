"""CUDA backend: CuPy arrays, raw CUDA kernels from ``cudcn/kernels`` through ``cupy.RawModule``.

The launch code lives in one module per op (``cudcn.backends.cuda.deform_conv2d``, ...) and is shared
with the emulated backend; :func:`cudcn.backends.cuda.binding.bind` binds it to CuPy and the RawModule
loader (:mod:`cudcn.backends.cuda.loader`). Each call runs on the device of its first array (the ops
layer has checked that every array is on that device). CuPy is imported on the first call, never by
``import cudcn``.
"""

from __future__ import annotations

from cudcn.backends.cuda.binding import bind
from cudcn.backends.cuda.loader import cuda_kernels, cupy

_BOUND = bind(cupy, cuda_kernels, lambda first: first.device)
globals().update(_BOUND)  # deform_conv2d_forward, ..., deform_psroi_pool_backward
__all__ = sorted(_BOUND)
