"""Plain NumPy float64 definitions of cudcn's ops: the ground truth every backend is tested against.

Readable over fast. One module per op; each function has the signature of the backends' array-level
function of the same name, ``(arrays..., params)`` with the op's parameters object from
``cudcn.ops.<op>``, computes in float64 whatever the input dtype and returns float64 arrays. The
exact semantics are written down in docs/spec.md.
"""

from cudcn.reference.bilinear import Corner, bilinear_corners
from cudcn.reference.dcnv3 import dcnv3_backward, dcnv3_forward, dcnv4_backward, dcnv4_forward
from cudcn.reference.deform_conv2d import deform_conv2d_backward, deform_conv2d_forward
from cudcn.reference.deform_psroi_pool import (
    deform_psroi_pool_backward,
    deform_psroi_pool_forward,
    round_half_away,
)
from cudcn.reference.deform_roi_pool import deform_roi_pool_backward, deform_roi_pool_forward
from cudcn.reference.ms_deform_attn import ms_deform_attn_backward, ms_deform_attn_forward

__all__ = [
    "Corner",
    "bilinear_corners",
    "dcnv3_backward",
    "dcnv3_forward",
    "dcnv4_backward",
    "dcnv4_forward",
    "deform_conv2d_backward",
    "deform_conv2d_forward",
    "deform_psroi_pool_backward",
    "deform_psroi_pool_forward",
    "deform_roi_pool_backward",
    "deform_roi_pool_forward",
    "ms_deform_attn_backward",
    "ms_deform_attn_forward",
    "round_half_away",
]
