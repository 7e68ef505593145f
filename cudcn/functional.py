"""The public differentiable ops.

Each function takes NumPy or CuPy arrays or :class:`cudcn.Tensor` objects. If any argument is a
``Tensor`` the result is a ``Tensor`` recorded on the tape (plain arrays among the arguments are
constants); if all are plain arrays the result is a plain array of the same library.
"""

from __future__ import annotations

from cudcn.arrays import Array
from cudcn.ops.activation import dropout, gelu, log_softmax, relu
from cudcn.ops.conv import conv2d
from cudcn.ops.dcnv3 import dcnv3
from cudcn.ops.dcnv4 import dcnv4
from cudcn.ops.deform_conv2d import DeformConv2dFunction
from cudcn.ops.deform_psroi_pool import deform_psroi_pool
from cudcn.ops.deform_roi_pool import deform_roi_pool
from cudcn.ops.layer_norm import layer_norm
from cudcn.ops.linear import linear
from cudcn.ops.loss import cross_entropy, mse_loss, smooth_l1_loss
from cudcn.ops.ms_deform_attn import ms_deform_attn
from cudcn.ops.norm import batch_norm
from cudcn.ops.pool import adaptive_avg_pool2d, avg_pool2d, global_avg_pool2d, max_pool2d
from cudcn.ops.roi_align import roi_align

__all__ = [
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "cross_entropy",
    "dcnv3",
    "dcnv4",
    "deform_conv2d",
    "deform_psroi_pool",
    "deform_roi_pool",
    "dropout",
    "gelu",
    "global_avg_pool2d",
    "layer_norm",
    "linear",
    "log_softmax",
    "max_pool2d",
    "ms_deform_attn",
    "mse_loss",
    "relu",
    "roi_align",
    "smooth_l1_loss",
]


def deform_conv2d(
    input: Array,
    offset: Array,
    weight: Array,
    bias: Array | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Array | None = None,
) -> Array:
    """Deformable convolution (DCNv1), modulated (DCNv2) when ``mask`` is given.

    The torchvision signature and layouts. Notation: B batch, C_in / C_out channels, H x W the input,
    kh x kw the kernel, ``groups = C_in // weight.shape[1]`` weight groups,
    ``og = offset.shape[1] // (2 * kh * kw)`` offset groups (independent of the weight groups; input
    channel c uses offset group ``c // (C_in / og)``).

    Args:
        input: (B, C_in, H, W).
        offset: (B, 2 * og * kh * kw, H_out, W_out). For offset group g and kernel tap k = i * kw + j,
            channel ``2 * (g * kh * kw + k)`` is **dy** (rows) and the next channel is **dx** (columns),
            in input pixels.
        weight: (C_out, C_in / groups, kh, kw).
        bias: (C_out,) or None.
        stride, padding, dilation: an int or an (h, w) pair.
        mask: (B, og * kh * kw, H_out, W_out) or None; channel ``g * kh * kw + k``. Used as given (apply
            a sigmoid yourself if you want one).

    Returns:
        (B, C_out, H_out, W_out) with
        ``H_out = (H + 2 * padding_h - (dilation_h * (kh - 1) + 1)) // stride_h + 1`` (same for W).

    Output (oy, ox), tap (i, j) samples the input at ``y = oy * stride_h - padding_h + i * dilation_h +
    dy`` and ``x = ox * stride_w - padding_w + j * dilation_w + dx`` by bilinear interpolation with
    zeros outside the image (``grid_sample(align_corners=False, padding_mode="zeros")``).

    Precision: float32 and float64 compute in their own dtype. float16 and bfloat16 are read as
    stored and computed in float32: sampling positions (so an offset of 0.3 px at x = 1500 is
    kept), bilinear weights, the column buffer, the GEMMs with the weight (float32 GEMMs, not
    cuBLAS's half ones) and every gradient sum, each result rounded once to the input dtype.
    The GPU's input gradient is an atomic float32 scatter whose last bits vary run to run, unless
    under ``cudcn.deterministic()``; the CPU backend is deterministic always.

    Example:
        >>> import numpy as np, cudcn
        >>> x = np.ones((1, 2, 5, 5), np.float32)
        >>> w = np.ones((4, 2, 3, 3), np.float32)
        >>> off = np.zeros((1, 18, 5, 5), np.float32)
        >>> cudcn.functional.deform_conv2d(x, off, w, padding=1)[0, 0, 2, 2]
        np.float32(18.0)
    """
    return DeformConv2dFunction.apply(
        input, offset, weight, bias, mask, stride=stride, padding=padding, dilation=dilation
    )
