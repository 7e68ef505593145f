"""dcnv3 and dcnv4 (docs/spec.md), in plain NumPy float64, written from InternImage's definition
directly (not through the deformable-aggregation core): the input is padded with zeros, each tap
is placed on InternImage's centred grid in the padded frame and sampled with the bilinear rule
(``reference/bilinear.py``; a point outside the padded image reads zeros, as ``grid_sample`` with
``padding_mode="zeros"`` does).

Arrays as the ops take them: input (N, H, W, G·D) channels last, offset (N, H_out, W_out, G·P·2) as
(x, y) pairs, mask (N, H_out, W_out, G·P); dcnv4's offset_mask (N, H_out, W_out, ≥ G·P·3) holds,
per group g, the P (x, y) pairs then the P mask values at ``g·3P``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cudcn.ops.dcnv3 import DCNv3Params
from cudcn.reference.bilinear import Corner, as_float64, bilinear_corners


def _padded(input: np.ndarray, p: DCNv3Params) -> np.ndarray:
    (ph, pw) = p.padding
    return np.pad(as_float64(input), ((0, 0), (ph, ph), (pw, pw), (0, 0)))


def _points(offset: np.ndarray, p: DCNv3Params) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """For each group g and point k: ``(g, k, x, y)``, the (N, H_out, W_out) sampling positions in
    the padded frame, ``x = c_w + wo·stride_w + (i·dil_w − c_w)·s + offset_x·s`` (same for y)."""
    (kh, kw), (sh, sw), (dh, dw), s = p.kernel_size, p.stride, p.dilation, p.offset_scale
    ch, cw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    ho, wo = p.output_size
    ys = ch + np.arange(ho)[:, None] * sh  # the grid's centre of each output pixel
    xs = cw + np.arange(wo)[None, :] * sw
    k = 0
    for i in range(kw):  # x-major: the width index outer
        for j in range(kh):
            if p.remove_center and i == kw // 2 and j == kh // 2:
                continue
            for g in range(p.group):
                ox = offset[..., 2 * (g * p.points + k)]
                oy = offset[..., 2 * (g * p.points + k) + 1]
                yield g, k, xs + (i * dw - cw) * s + ox * s, ys + (j * dh - ch) * s + oy * s
            k += 1


def _group_images(padded: np.ndarray, n: int, g: int, d: int) -> np.ndarray:
    """Group g's channels of batch n as (D, H_pad, W_pad)."""
    return padded[n, :, :, g * d : (g + 1) * d].transpose(2, 0, 1)


def _corners(x: np.ndarray, y: np.ndarray, n: int, padded: np.ndarray) -> list[Corner]:
    return bilinear_corners(y[n], x[n], padded.shape[1], padded.shape[2])


def dcnv3_forward(input: np.ndarray, offset: np.ndarray, mask: np.ndarray, p: DCNv3Params) -> np.ndarray:
    """out (N, H_out, W_out, G·D), float64."""
    offset, mask = as_float64(offset), as_float64(mask)
    padded = _padded(input, p)
    n_batch, d = padded.shape[0], padded.shape[3] // p.group
    out = np.zeros((n_batch, *p.output_size, padded.shape[3]))
    for g, k, x, y in _points(offset, p):
        for n in range(n_batch):
            img = _group_images(padded, n, g, d)
            sample = sum(c.value(img) * c.w for c in _corners(x, y, n, padded))  # (D, H_out, W_out)
            out[n, :, :, g * d : (g + 1) * d] += (mask[n, :, :, g * p.points + k] * sample).transpose(1, 2, 0)
    return out


def dcnv3_backward(
    grad_out: np.ndarray, input: np.ndarray, offset: np.ndarray, mask: np.ndarray, p: DCNv3Params
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grad_input, grad_offset, grad_mask)`` for ``grad_out`` (N, H_out, W_out, G·D), float64.

    grad_mask = Σ_d grad_out · sample; grad_offset (x, y) = s · mask · Σ_d grad_out · d sample /
    d (x, y); grad_input: each neighbour's bilinear weight times mask · grad_out, scattered into the
    padded input and cropped."""
    grad_out, offset, mask = as_float64(grad_out), as_float64(offset), as_float64(mask)
    padded = _padded(input, p)
    n_batch, d = padded.shape[0], padded.shape[3] // p.group
    g_padded = np.zeros_like(padded)
    g_offset = np.zeros_like(offset)
    g_mask = np.zeros_like(mask)
    for g, k, x, y in _points(offset, p):
        channel = g * p.points + k
        for n in range(n_batch):
            img = _group_images(padded, n, g, d)
            corners = _corners(x, y, n, padded)
            grad = grad_out[n, :, :, g * d : (g + 1) * d].transpose(2, 0, 1)  # (D, H_out, W_out)
            m = mask[n, :, :, channel]
            g_mask[n, :, :, channel] = (grad * sum(c.value(img) * c.w for c in corners)).sum(axis=0)
            dx = sum(c.value(img) * c.dw_dx for c in corners)
            dy = sum(c.value(img) * c.dw_dy for c in corners)
            g_offset[n, :, :, 2 * channel] = p.offset_scale * m * (grad * dx).sum(axis=0)
            g_offset[n, :, :, 2 * channel + 1] = p.offset_scale * m * (grad * dy).sum(axis=0)
            plane = np.zeros_like(img)
            for c in corners:
                c.scatter(plane, grad * m)
            g_padded[n, :, :, g * d : (g + 1) * d] += plane.transpose(1, 2, 0)
    (ph, pw), (h, w) = p.padding, p.input_size
    return g_padded[:, ph : ph + h, pw : pw + w, :], g_offset, g_mask


def dcnv4_unpack(offset_mask: np.ndarray, p: DCNv3Params) -> tuple[np.ndarray, np.ndarray]:
    """dcnv3's (offset, mask) from dcnv4's packed tensor, element by element."""
    om = as_float64(offset_mask)
    g_count, pts = p.group, p.points
    offset = np.zeros((*om.shape[:3], g_count * pts * 2))
    mask = np.zeros((*om.shape[:3], g_count * pts))
    for g in range(g_count):
        for k in range(pts):
            offset[..., 2 * (g * pts + k)] = om[..., g * 3 * pts + 2 * k]
            offset[..., 2 * (g * pts + k) + 1] = om[..., g * 3 * pts + 2 * k + 1]
            mask[..., g * pts + k] = om[..., g * 3 * pts + 2 * pts + k]
    return offset, mask


def dcnv4_forward(input: np.ndarray, offset_mask: np.ndarray, p: DCNv3Params) -> np.ndarray:
    """out (N, H_out, W_out, G·D), float64."""
    return dcnv3_forward(input, *dcnv4_unpack(offset_mask, p), p)


def dcnv4_backward(
    grad_out: np.ndarray, input: np.ndarray, offset_mask: np.ndarray, p: DCNv3Params
) -> tuple[np.ndarray, np.ndarray]:
    """``(grad_input, grad_offset_mask)``, float64; the padding channels get 0."""
    g_input, g_offset, g_mask = dcnv3_backward(grad_out, input, *dcnv4_unpack(offset_mask, p), p)
    g_packed = np.zeros(offset_mask.shape)
    pts = p.points
    for g in range(p.group):
        for k in range(pts):
            g_packed[..., g * 3 * pts + 2 * k] = g_offset[..., 2 * (g * pts + k)]
            g_packed[..., g * 3 * pts + 2 * k + 1] = g_offset[..., 2 * (g * pts + k) + 1]
            g_packed[..., g * 3 * pts + 2 * pts + k] = g_mask[..., g * pts + k]
    return g_input, g_packed
