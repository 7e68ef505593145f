"""CPU backend: Numba kernels, GEMMs through NumPy's BLAS. Deterministic (no atomics).

Importing it selects Numba's ``workqueue`` threading layer unless one was chosen (see ``threads``)."""

from cudcn.backends.cpu.deform_conv2d import deform_conv2d_backward, deform_conv2d_forward
from cudcn.backends.cpu.deform_psroi_pool import (
    deform_psroi_pool_backward,
    deform_psroi_pool_forward,
)
from cudcn.backends.cpu.deform_roi_pool import deform_roi_pool_backward, deform_roi_pool_forward

__all__ = [
    "deform_conv2d_backward",
    "deform_conv2d_forward",
    "deform_psroi_pool_backward",
    "deform_psroi_pool_forward",
    "deform_roi_pool_backward",
    "deform_roi_pool_forward",
]
