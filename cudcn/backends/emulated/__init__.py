"""Emulated backend: the CUDA kernels of ``cudcn/kernels``, compiled for the host, on NumPy arrays.

For tests and for debugging a kernel on a machine without a GPU (gdb, AddressSanitizer,
ThreadSanitizer). Each function runs the op's launch code unchanged (``cudcn.backends.launch.<op>``,
shared with the CUDA backend) with ``xp = numpy`` and the host loader
(:mod:`cudcn.backends.emulated.loader`) in place of CuPy and ``RawModule``: the same kernel source, the
same name expressions, the same arguments. Select it with ``cudcn.use_backend("emulated")`` or
``CUDCN_BACKEND=emulated``. The first call builds the op's kernels with g++ (a few seconds; cached on
disk, see :mod:`cudcn.backends.emulated.build`); how launches run (concurrent or serial, workers, block
order) is set by the environment (see :mod:`cudcn.backends.emulated.loader`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from cudcn.backends.emulated.loader import host_kernels
from cudcn.backends.launch import deform_conv2d, deform_psroi_pool, deform_roi_pool, ms_deform_attn


def _on_host(launch: Callable[..., Any], stem: str) -> Callable[..., Any]:
    """``launch(numpy, get_kernel, *arrays, params)`` with the host build of the op's kernels."""

    @functools.wraps(launch)
    def run(*arrays_and_params: Any) -> Any:
        return launch(np, host_kernels(stem), *arrays_and_params)

    return run


deform_conv2d_forward = _on_host(deform_conv2d.deform_conv2d_forward, "deform_conv2d")
deform_conv2d_backward = _on_host(deform_conv2d.deform_conv2d_backward, "deform_conv2d")
deform_roi_pool_forward = _on_host(deform_roi_pool.deform_roi_pool_forward, "deform_roi_pool")
deform_roi_pool_backward = _on_host(deform_roi_pool.deform_roi_pool_backward, "deform_roi_pool")
deform_psroi_pool_forward = _on_host(deform_psroi_pool.deform_psroi_pool_forward, "deform_psroi_pool")
deform_psroi_pool_backward = _on_host(deform_psroi_pool.deform_psroi_pool_backward, "deform_psroi_pool")
ms_deform_attn_forward = _on_host(ms_deform_attn.ms_deform_attn_forward, "ms_deform_attn")
ms_deform_attn_backward = _on_host(ms_deform_attn.ms_deform_attn_backward, "ms_deform_attn")
