"""Emulated backend: the CUDA kernels of ``cudcn/kernels``, compiled for the host, on NumPy arrays.

For tests and for debugging a kernel on a machine without a GPU (gdb, AddressSanitizer,
ThreadSanitizer). It runs the CUDA backend's launch code unchanged (``cudcn.backends.cuda.<op>``,
bound by :func:`cudcn.backends.cuda.binding.bind`) with ``xp = numpy`` and the host loader
(:mod:`cudcn.backends.emulated.loader`) in place of CuPy and ``RawModule``: the same kernel source, the
same name expressions, the same arguments. Select it with ``cudcn.use_backend("emulated")`` or
``CUDCN_BACKEND=emulated``. The first call builds the op's kernels with g++ (a few seconds; cached on
disk, see :mod:`cudcn.backends.emulated.build`); how launches run (concurrent or serial, workers, block
order) is set by the environment (see :mod:`cudcn.backends.emulated.loader`).
"""

from __future__ import annotations

import numpy as np

from cudcn.backends.cuda.binding import bind
from cudcn.backends.emulated.loader import host_kernels

_BOUND = bind(lambda: np, host_kernels)
globals().update(_BOUND)  # deform_conv2d_forward, ..., deform_psroi_pool_backward
__all__ = sorted(_BOUND)
