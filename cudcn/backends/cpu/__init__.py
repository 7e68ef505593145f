"""CPU backend: Numba kernels, GEMMs through NumPy's BLAS. Deterministic (no atomics). float16 and
bfloat16 arguments are computed in float32 and rounded once to their dtype
(``cudcn.dtypes.computed_in_float32``).

Importing it selects Numba's ``workqueue`` threading layer unless one was chosen (see ``threads``)."""

from cudcn.backends.cpu import deform_conv2d, deform_psroi_pool, deform_roi_pool, ms_deform_attn
from cudcn.dtypes import computed_in_float32

deform_conv2d_forward = computed_in_float32(deform_conv2d.deform_conv2d_forward)
deform_conv2d_backward = computed_in_float32(deform_conv2d.deform_conv2d_backward)
deform_roi_pool_forward = computed_in_float32(deform_roi_pool.deform_roi_pool_forward)
deform_roi_pool_backward = computed_in_float32(deform_roi_pool.deform_roi_pool_backward)
deform_psroi_pool_forward = computed_in_float32(deform_psroi_pool.deform_psroi_pool_forward)
deform_psroi_pool_backward = computed_in_float32(deform_psroi_pool.deform_psroi_pool_backward)
ms_deform_attn_forward = computed_in_float32(ms_deform_attn.ms_deform_attn_forward)
# The location gradient stays in float32, the locations' compute dtype (cudcn.ops.ms_deform_attn).
ms_deform_attn_backward = computed_in_float32(ms_deform_attn.ms_deform_attn_backward, keep_float32=(1,))

__all__ = [
    "deform_conv2d_backward",
    "deform_conv2d_forward",
    "deform_psroi_pool_backward",
    "deform_psroi_pool_forward",
    "deform_roi_pool_backward",
    "deform_roi_pool_forward",
    "ms_deform_attn_backward",
    "ms_deform_attn_forward",
]
