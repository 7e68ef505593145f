"""deform_conv2d in plain NumPy float64: the definition the backends are tested against.

Loops over batch items, offset groups and kernel taps; each step is vectorised over the output
positions and the channels of one offset group. Notation: ``K = kh·kw`` taps, tap ``k = i·kw + j``;
``og`` offset groups of ``C_in / og`` channels; ``groups`` weight groups of ``C_in / groups`` input and
``C_out / groups`` output channels.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cudcn.ops.deform_conv2d import DeformConv2dParams
from cudcn.reference.bilinear import as_float64, bilinear_corners

Pair = tuple[int, int]


def _taps(
    offset: np.ndarray, kernel: Pair, p: DeformConv2dParams
) -> Iterator[tuple[int, int, int, np.ndarray, np.ndarray]]:
    """Yield ``(b, g, k, y, x)``: the sampling points (H_out, W_out) of item b, offset group g, tap k."""
    batch, _, out_h, out_w = offset.shape
    kh, kw = kernel
    stride, padding, dilation = p.stride, p.padding, p.dilation
    oy = np.arange(out_h, dtype=np.float64)[:, None]
    ox = np.arange(out_w, dtype=np.float64)[None, :]
    for b in range(batch):
        for g in range(p.offset_groups):
            for i in range(kh):
                for j in range(kw):
                    k = i * kw + j
                    ch = 2 * (g * kh * kw + k)
                    y = oy * stride[0] - padding[0] + i * dilation[0] + offset[b, ch]
                    x = ox * stride[1] - padding[1] + j * dilation[1] + offset[b, ch + 1]
                    yield b, g, k, y, x


def _columns(x: np.ndarray, offset: np.ndarray, kernel: Pair, p: DeformConv2dParams) -> np.ndarray:
    """Bilinear samples (B, C_in, K, H_out, W_out) of the input at every tap's sampling points."""
    batch, channels, height, width = x.shape
    per_group = channels // p.offset_groups
    cols = np.zeros((batch, channels, kernel[0] * kernel[1], *offset.shape[2:]))
    for b, g, k, y, xx in _taps(offset, kernel, p):
        img = x[b, g * per_group : (g + 1) * per_group]
        for corner in bilinear_corners(y, xx, height, width):
            cols[b, g * per_group : (g + 1) * per_group, k] += corner.value(img) * corner.w
    return cols


def _modulation(mask: np.ndarray | None, cols: np.ndarray, offset_groups: int) -> np.ndarray:
    """The mask broadcast to the columns' shape (B, C_in, K, H_out, W_out); ones without a mask."""
    if mask is None:
        return np.ones_like(cols)
    batch, channels, taps = cols.shape[:3]
    m = mask.reshape(batch, offset_groups, 1, taps, *mask.shape[2:])
    m = np.broadcast_to(m, (batch, offset_groups, channels // offset_groups, *m.shape[3:]))
    return m.reshape(cols.shape)


def deform_conv2d_forward(
    input: np.ndarray,
    offset: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    mask: np.ndarray | None,
    p: DeformConv2dParams,
) -> np.ndarray:
    """Deformable convolution, float64. Shapes as in docs/spec.md: input (B, C_in, H, W), offset
    (B, 2·og·K, H_out, W_out), weight (C_out, C_in/groups, kh, kw), bias (C_out,) or None, mask
    (B, og·K, H_out, W_out) or None. Returns (B, C_out, H_out, W_out)."""
    x, offset, weight = as_float64(input), as_float64(offset), as_float64(weight)
    bias, mask = as_float64(bias), as_float64(mask)
    c_out, c_per_group, kh, kw = weight.shape
    groups = p.groups
    o_per_group = c_out // groups
    cols = _columns(x, offset, (kh, kw), p)
    cols *= _modulation(mask, cols, p.offset_groups)
    out = np.zeros((x.shape[0], c_out, *offset.shape[2:]))
    for g in range(groups):
        o = slice(g * o_per_group, (g + 1) * o_per_group)
        c = slice(g * c_per_group, (g + 1) * c_per_group)
        w = weight[o].reshape(o_per_group, c_per_group, kh * kw)
        out[:, o] = np.einsum("ock,bckhw->bohw", w, cols[:, c])
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def deform_conv2d_backward(
    grad_out: np.ndarray,
    input: np.ndarray,
    offset: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    mask: np.ndarray | None,
    p: DeformConv2dParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gradients ``(g_input, g_offset, g_weight, g_bias, g_mask)`` of ``sum(grad_out · forward(...))``,
    float64, shaped like the corresponding arguments; ``g_bias``/``g_mask`` are None when bias/mask are.
    The offset gradient differentiates the floor-based bilinear formula (a forward difference at integer
    coordinates); a sample outside the image, or at a non-finite point, has zero gradients."""
    grad_out, x, offset = as_float64(grad_out), as_float64(input), as_float64(offset)
    weight, mask = as_float64(weight), as_float64(mask)
    channels, height, width = x.shape[1:]
    c_out, c_per_group, kh, kw = weight.shape
    groups, offset_groups = p.groups, p.offset_groups
    o_per_group = c_out // groups
    per_offset_group = channels // offset_groups
    taps = kh * kw
    samples = _columns(x, offset, (kh, kw), p)
    modulation = _modulation(mask, samples, offset_groups)

    g_cols = np.zeros_like(samples)  # gradient of the modulated columns
    g_weight = np.zeros(weight.shape)
    for g in range(groups):
        o = slice(g * o_per_group, (g + 1) * o_per_group)
        c = slice(g * c_per_group, (g + 1) * c_per_group)
        w = weight[o].reshape(o_per_group, c_per_group, taps)
        g_cols[:, c] = np.einsum("ock,bohw->bckhw", w, grad_out[:, o])
        gw = np.einsum("bohw,bckhw->ock", grad_out[:, o], samples[:, c] * modulation[:, c])
        g_weight[o] = gw.reshape(o_per_group, c_per_group, kh, kw)

    g_input = np.zeros(x.shape)
    g_offset = np.zeros(offset.shape)
    g_mask = None if mask is None else np.zeros(mask.shape)
    for b, g, k, y, xx in _taps(offset, (kh, kw), p):
        chans = slice(g * per_offset_group, (g + 1) * per_offset_group)
        img = x[b, chans]
        gc = g_cols[b, chans, k]  # (C_in/og, H_out, W_out)
        m = modulation[b, chans.start, k]
        dv_dy = np.zeros(gc.shape)
        dv_dx = np.zeros(gc.shape)
        for corner in bilinear_corners(y, xx, height, width):
            v = corner.value(img)
            dv_dy += v * corner.dw_dy
            dv_dx += v * corner.dw_dx
            corner.scatter(g_input[b, chans], gc * m)
        ch = 2 * (g * taps + k)
        g_offset[b, ch] = (gc * dv_dy).sum(axis=0) * m
        g_offset[b, ch + 1] = (gc * dv_dx).sum(axis=0) * m
        if g_mask is not None:
            g_mask[b, g * taps + k] = (gc * samples[b, chans, k]).sum(axis=0)
    g_bias = None if bias is None else grad_out.sum(axis=(0, 2, 3))
    return g_input, g_offset, g_weight, g_bias, g_mask
