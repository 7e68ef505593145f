"""Layout converters between dcnv3, dcnv4 and deform_conv2d offsets and masks (array level, no tape).

dcnv3 with C = G·D channels is deform_conv2d with ``groups = C`` (one all-ones 1 x kh x kw filter
per channel, no bias), G offset groups, the input and output moved between channels-last and NCHW,
and the offsets and mask rearranged by :func:`dcnv3_to_deform_conv2d`. dcnv3's tap (i, j) (i over
the width, outer) is deform_conv2d's tap ``k = j·kw + i`` (row-major), and since dcnv3 scales its
grid by ``offset_scale`` s around the grid's centre ``c = (dil·(k − 1)) // 2``:

    dx = s·offset_x + (1 − s)·(c_w − i·dil_w),   dy = s·offset_y + (1 − s)·(c_h − j·dil_h)

(dx = offset_x, dy = offset_y for s = 1). A removed centre tap gets offset 0 and mask 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cudcn.arrays import Array
from cudcn.backends import array_module
from cudcn.dtypes import compute_dtype
from cudcn.ops._checks import (
    check_arrays,
    check_bool,
    check_ndim,
    check_shape,
    finite_float,
    int_pair,
    positive_int,
)
from cudcn.ops.dcnv4 import pack, packed_width, split

__all__ = ["dcnv3_to_dcnv4", "dcnv3_to_deform_conv2d", "dcnv4_to_dcnv3", "deform_conv2d_to_dcnv3"]


def _grid(kernel_size: Any, dilation: Any, offset_scale: Any, remove_center: Any) -> tuple:
    """(kh, kw), the kept taps' row-major indices k (P,), the grid shift ``(1 − s)·(c − tap)`` as
    (P, 2) (x, y) float64, and s."""
    kh, kw = int_pair("kernel_size", kernel_size, 1)
    dh, dw = int_pair("dilation", dilation, 1)
    s = finite_float("offset_scale", offset_scale)
    remove = check_bool("remove_center", remove_center)
    if remove and (kh % 2 == 0 or kw % 2 == 0):
        raise ValueError(f"remove_center needs odd kernel sizes (a centre tap), got kernel_size {(kh, kw)}")
    ch, cw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    taps = [(i, j) for i in range(kw) for j in range(kh) if not (remove and (i, j) == (kw // 2, kh // 2))]
    rows = np.array([j * kw + i for i, j in taps], dtype=np.int64)
    shift = np.array([((1 - s) * (cw - i * dw), (1 - s) * (ch - j * dh)) for i, j in taps])
    return (kh, kw), rows, shift, s


def dcnv3_to_deform_conv2d(
    offset: Array,
    mask: Array,
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> tuple[Array, Array]:
    """dcnv3's offset (N, H_out, W_out, G·P·2) and mask (N, H_out, W_out, G·P) as deform_conv2d's
    offset (N, 2·G·kh·kw, H_out, W_out) ((dy, dx) per tap, row-major taps) and mask
    (N, G·kh·kw, H_out, W_out), so that (C = G·D, NHWC ↔ NCHW by transposes)::

        dcnv3(x, offset, mask, k, stride, padding, dilation, G, s, rc)
        == deform_conv2d(x.transpose(0, 3, 1, 2), off2, ones((C, 1, kh, kw)), None, stride,
                         padding, dilation, mask2).transpose(0, 2, 3, 1)

    with ``off2, mask2 = dcnv3_to_deform_conv2d(offset, mask, k, dilation, G, s, rc)``. Computed in
    the compute dtype (float32 for 16-bit arrays), rounded once to the input dtype.

    Example:
        >>> import numpy as np, cudcn
        >>> off, mask = np.zeros((1, 2, 2, 18)), np.ones((1, 2, 2, 9))
        >>> off[..., 2 * 3] = 0.5                                # tap (i=1, j=0): x offset
        >>> off2, mask2 = cudcn.ops.dcnv3_to_deform_conv2d(off, mask, 3)
        >>> float(off2[0, 2 * 1 + 1, 0, 0]), off2.shape          # row-major tap 1, its dx
        (0.5, (1, 18, 2, 2))
    """
    check_arrays({"offset": offset, "mask": mask})
    (kh, kw), rows, shift, s = _grid(kernel_size, dilation, offset_scale, remove_center)
    group = positive_int("group", group)
    check_ndim("offset", offset, 4, "(N, H_out, W_out, G·P·2)")
    n, ho, wo = (int(v) for v in offset.shape[:3])
    pts = len(rows)
    check_shape("offset", offset, (n, ho, wo, group * pts * 2), f"(N, H_out, W_out, G·P·2), P = {pts}")
    check_shape("mask", mask, (n, ho, wo, group * pts), f"(N, H_out, W_out, G·P), P = {pts}")
    xp, wide = array_module(offset), compute_dtype(offset.dtype)
    xy = offset.reshape(n, ho, wo, group, pts, 2).astype(wide) * wide.type(s) + xp.asarray(shift.astype(wide))
    out_offset = xp.zeros((n, ho, wo, group, kh * kw, 2), dtype=offset.dtype)
    out_offset[:, :, :, :, rows, 0] = xy[..., 1].astype(offset.dtype)  # dy first
    out_offset[:, :, :, :, rows, 1] = xy[..., 0].astype(offset.dtype)
    out_mask = xp.zeros((n, ho, wo, group, kh * kw), dtype=mask.dtype)
    out_mask[:, :, :, :, rows] = mask.reshape(n, ho, wo, group, pts)
    as_nchw = (0, 3, 1, 2)
    return (
        xp.ascontiguousarray(out_offset.reshape(n, ho, wo, -1).transpose(as_nchw)),
        xp.ascontiguousarray(out_mask.reshape(n, ho, wo, -1).transpose(as_nchw)),
    )


def deform_conv2d_to_dcnv3(
    offset: Array,
    mask: Array,
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> tuple[Array, Array]:
    """The inverse of :func:`dcnv3_to_deform_conv2d`: deform_conv2d's offset (N, 2·G·kh·kw, H_out,
    W_out) and mask (N, G·kh·kw, H_out, W_out) (G offset groups) as dcnv3's offset (N, H_out, W_out,
    G·P·2) and mask (N, H_out, W_out, G·P) for ``offset_scale`` s (not 0). With ``remove_center``
    the centre tap is dropped: equal results need its mask to be 0."""
    check_arrays({"offset": offset, "mask": mask})
    (kh, kw), rows, shift, s = _grid(kernel_size, dilation, offset_scale, remove_center)
    if s == 0:
        raise ValueError("offset_scale must not be 0 (dcnv3 then ignores its offsets)")
    check_ndim("offset", offset, 4, "(N, 2·G·kh·kw, H_out, W_out)")
    n, channels, ho, wo = (int(v) for v in offset.shape)
    if channels == 0 or channels % (2 * kh * kw):
        raise ValueError(
            f"offset.shape[1] must be a positive multiple of 2·kh·kw = {2 * kh * kw}, got {channels}"
        )
    group = channels // (2 * kh * kw)
    check_shape("mask", mask, (n, group * kh * kw, ho, wo), "(N, G·kh·kw, H_out, W_out)")
    xp, wide = array_module(offset), compute_dtype(offset.dtype)
    taps = offset.transpose(0, 2, 3, 1).reshape(n, ho, wo, group, kh * kw, 2)[:, :, :, :, rows]
    xy = xp.stack([taps[..., 1], taps[..., 0]], axis=-1).astype(wide)  # (dy, dx) -> (x, y)
    xy = (xy - xp.asarray(shift.astype(wide))) / wide.type(s)
    out_mask = mask.transpose(0, 2, 3, 1).reshape(n, ho, wo, group, kh * kw)[..., rows]
    return (
        xp.ascontiguousarray(xy.astype(offset.dtype).reshape(n, ho, wo, -1)),
        xp.ascontiguousarray(out_mask.reshape(n, ho, wo, -1)),
    )


def _points(kernel_size: Any, remove_center: Any) -> int:
    kh, kw = int_pair("kernel_size", kernel_size, 1)
    return kh * kw - int(check_bool("remove_center", remove_center))


def dcnv3_to_dcnv4(
    offset: Array,
    mask: Array,
    kernel_size: int | tuple[int, int],
    group: int = 1,
    remove_center: bool = False,
    padded: bool = True,
) -> Array:
    """dcnv3's offset (N, H_out, W_out, G·P·2) and mask (N, H_out, W_out, G·P) packed as dcnv4's
    offset_mask (N, H_out, W_out, L), L = ``ceil(G·P·3 / 8)·8`` when ``padded`` (DCNv4's module),
    else G·P·3; padding channels are 0.

    Example:
        >>> import numpy as np, cudcn
        >>> om = cudcn.ops.dcnv3_to_dcnv4(np.zeros((1, 2, 2, 18)), np.ones((1, 2, 2, 9)), 3)
        >>> om.shape, float(om[0, 0, 0, 18]), float(om[0, 0, 0, 27])
        ((1, 2, 2, 32), 1.0, 0.0)
    """
    check_arrays({"offset": offset, "mask": mask})
    pts, group = _points(kernel_size, remove_center), positive_int("group", group)
    check_ndim("offset", offset, 4, "(N, H_out, W_out, G·P·2)")
    n, ho, wo = (int(v) for v in offset.shape[:3])
    check_shape("offset", offset, (n, ho, wo, group * pts * 2), f"(N, H_out, W_out, G·P·2), P = {pts}")
    check_shape("mask", mask, (n, ho, wo, group * pts), f"(N, H_out, W_out, G·P), P = {pts}")
    width = packed_width(group, pts) if check_bool("padded", padded) else group * pts * 3
    q = ho * wo
    packed = pack(offset.reshape(n, q, group, pts, 2), mask.reshape(n, q, group, pts), width)
    return packed.reshape(n, ho, wo, width)


def dcnv4_to_dcnv3(
    offset_mask: Array,
    kernel_size: int | tuple[int, int],
    group: int = 1,
    remove_center: bool = False,
) -> tuple[Array, Array]:
    """dcnv4's offset_mask (N, H_out, W_out, L ≥ G·P·3) as dcnv3's offset (N, H_out, W_out, G·P·2)
    and mask (N, H_out, W_out, G·P); the padding channels are dropped."""
    check_arrays({"offset_mask": offset_mask})
    pts, group = _points(kernel_size, remove_center), positive_int("group", group)
    check_ndim("offset_mask", offset_mask, 4, "(N, H_out, W_out, L)")
    n, ho, wo, width = (int(v) for v in offset_mask.shape)
    if width < group * pts * 3:
        raise ValueError(f"offset_mask must have L >= G·P·3 = {group * pts * 3} channels, got {width}")
    xp = array_module(offset_mask)
    offset, mask = split(offset_mask, group, pts)
    return (
        xp.ascontiguousarray(offset).reshape(n, ho, wo, -1),
        xp.ascontiguousarray(mask).reshape(n, ho, wo, -1),
    )
