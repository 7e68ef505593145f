"""Array-level ops (no tape): ``<op>_forward`` and ``<op>_backward`` for each op.

``<op>_backward(grad_out, <the forward's arguments>)`` returns the gradients of the differentiable
inputs in order (``deform_conv2d``: input, offset, weight, bias, mask; ``deform_roi_pool``: input,
offset; ``deform_psroi_pool``: input, trans; ``ms_deform_attn``: value, sampling_locations,
attention_weights; ``dcnv3``: input, offset, mask; ``dcnv4``: input, offset_mask), ``None`` where an
optional input was ``None``. Nothing is kept between the two calls, so they can be wired into any
autograd (a PyTorch ``autograd.Function``, a JAX ``custom_vjp``, ...).
"""

from cudcn.ops.dcnv3 import dcnv3_backward, dcnv3_forward
from cudcn.ops.dcnv3_layout import (
    dcnv3_to_dcnv4,
    dcnv3_to_deform_conv2d,
    dcnv4_to_dcnv3,
    deform_conv2d_to_dcnv3,
)
from cudcn.ops.dcnv4 import dcnv4_backward, dcnv4_forward
from cudcn.ops.deform_conv2d import deform_conv2d_backward, deform_conv2d_forward
from cudcn.ops.deform_psroi_pool import deform_psroi_pool_backward, deform_psroi_pool_forward
from cudcn.ops.deform_roi_pool import deform_roi_pool_backward, deform_roi_pool_forward
from cudcn.ops.ms_deform_attn import ms_deform_attn_backward, ms_deform_attn_forward
from cudcn.ops.roi_align import roi_align_backward, roi_align_forward

__all__ = [
    "dcnv3_backward",
    "dcnv3_forward",
    "dcnv3_to_dcnv4",
    "dcnv3_to_deform_conv2d",
    "dcnv4_backward",
    "dcnv4_forward",
    "dcnv4_to_dcnv3",
    "deform_conv2d_backward",
    "deform_conv2d_forward",
    "deform_conv2d_to_dcnv3",
    "deform_psroi_pool_backward",
    "deform_psroi_pool_forward",
    "deform_roi_pool_backward",
    "deform_roi_pool_forward",
    "ms_deform_attn_backward",
    "ms_deform_attn_forward",
    "roi_align_backward",
    "roi_align_forward",
]
