"""CUDA backend: CuPy arrays, raw CUDA kernels from ``cudcn/kernels`` through ``cupy.RawModule``.

Each function runs the op's launch code (``cudcn.backends.launch.<op>``, shared with the emulated
backend) with CuPy and the ``RawModule`` loader (:mod:`cudcn.backends.cuda.loader`), on the device of
its first array (the ops layer has checked that every array is on that device). CuPy is imported on
the first call, never by ``import cudcn``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from cudcn.backends.cuda.loader import cuda_kernels, import_cupy
from cudcn.backends.launch import deform_conv2d, deform_psroi_pool, deform_roi_pool, ms_deform_attn


def _on_device(launch: Callable[..., Any], stem: str) -> Callable[..., Any]:
    """``launch(cupy, get_kernel, *arrays, params)`` run on the first array's device."""

    @functools.wraps(launch)
    def run(first: Any, *rest: Any) -> Any:
        with first.device:
            return launch(import_cupy(), cuda_kernels(stem), first, *rest)

    return run


deform_conv2d_forward = _on_device(deform_conv2d.deform_conv2d_forward, "deform_conv2d")
deform_conv2d_backward = _on_device(deform_conv2d.deform_conv2d_backward, "deform_conv2d")
deform_roi_pool_forward = _on_device(deform_roi_pool.deform_roi_pool_forward, "deform_roi_pool")
deform_roi_pool_backward = _on_device(deform_roi_pool.deform_roi_pool_backward, "deform_roi_pool")
deform_psroi_pool_forward = _on_device(deform_psroi_pool.deform_psroi_pool_forward, "deform_psroi_pool")
deform_psroi_pool_backward = _on_device(deform_psroi_pool.deform_psroi_pool_backward, "deform_psroi_pool")
ms_deform_attn_forward = _on_device(ms_deform_attn.ms_deform_attn_forward, "ms_deform_attn")
ms_deform_attn_backward = _on_device(ms_deform_attn.ms_deform_attn_backward, "ms_deform_attn")
