"""ms_deform_attn and the deformable-aggregation core (docs/spec.md), in plain NumPy float64.

Arrays as the core takes them (``cudcn.ops.ms_deform_attn``): value (N, S, M, D), locations
(N, Q, M, L, P, 2) as (x, y), weights (N, Q, M, L, P); output (N, Q, M, D). The bilinear rule is
deform_conv2d's (``reference/bilinear.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cudcn.ops.ms_deform_attn import MSDeformAttnParams
from cudcn.reference.bilinear import Corner, as_float64, bilinear_corners


def _levels(value: np.ndarray, locations: np.ndarray, p: MSDeformAttnParams) -> Iterator[tuple]:
    """For each batch n, head m and level l: ``(n, m, l, img, corners)`` with ``img`` the level's
    (D, H_l, W_l) plane of head m and ``corners`` the bilinear neighbours of its (Q, P) points."""
    n_batch, _, heads, d = value.shape
    for l, ((h, w), start) in enumerate(zip(p.levels, p.starts, strict=True)):
        scale = (w, h) if p.normalized else (1.0, 1.0)
        shift = 0.5 if p.normalized else 0.0
        for n in range(n_batch):
            for m in range(heads):
                img = value[n, start : start + h * w, m, :].reshape(h, w, d).transpose(2, 0, 1)
                x = locations[n, :, m, l, :, 0] * scale[0] - shift
                y = locations[n, :, m, l, :, 1] * scale[1] - shift
                yield n, m, l, img, bilinear_corners(y, x, h, w)


def _sample(img: np.ndarray, corners: list[Corner]) -> np.ndarray:
    """The bilinear samples (D, Q, P)."""
    return sum(c.value(img) * c.w for c in corners)


def ms_deform_attn_forward(
    value: np.ndarray, locations: np.ndarray, weights: np.ndarray, p: MSDeformAttnParams
) -> np.ndarray:
    """out[n, q, m, :] = Σ_{l,p} weights[n, q, m, l, p] · sample (N, Q, M, D), float64."""
    value, locations, weights = (as_float64(a) for a in (value, locations, weights))
    n, _, m, d = value.shape
    out = np.zeros((n, locations.shape[1], m, d))
    for b, h, l, img, corners in _levels(value, locations, p):
        # (D, Q, P) samples times the (Q, P) weights, summed over P.
        out[b, :, h, :] += (_sample(img, corners) * weights[b, :, h, l, :]).sum(axis=2).T
    return out


def ms_deform_attn_backward(
    grad_out: np.ndarray, value: np.ndarray, locations: np.ndarray, weights: np.ndarray, p: MSDeformAttnParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grad_value, grad_locations, grad_weights)`` for ``grad_out`` (N, Q, M, D), float64.

    grad_weights = Σ_d grad_out · sample; grad_locations (x, y) = weight · Σ_d grad_out · d sample /
    d (x, y), times (W_l, H_l) for normalised locations; grad_value: each neighbour's bilinear
    weight times weight · grad_out, scattered."""
    grad_out, value, locations, weights = (as_float64(a) for a in (grad_out, value, locations, weights))
    g_value = np.zeros_like(value)
    g_locations = np.zeros_like(locations)
    g_weights = np.zeros_like(weights)
    for b, h, l, img, corners in _levels(value, locations, p):
        g = grad_out[b, :, h, :].T[:, :, None]  # (D, Q, 1)
        w = weights[b, :, h, l, :]  # (Q, P)
        g_weights[b, :, h, l, :] = (g * _sample(img, corners)).sum(axis=0)
        dy = sum(c.value(img) * c.dw_dy for c in corners)
        dx = sum(c.value(img) * c.dw_dx for c in corners)
        height, width = p.levels[l]
        scale = (width, height) if p.normalized else (1, 1)
        g_locations[b, :, h, l, :, 0] = w * (g * dx).sum(axis=0) * scale[0]
        g_locations[b, :, h, l, :, 1] = w * (g * dy).sum(axis=0) * scale[1]
        start = p.starts[l]
        plane = np.zeros((value.shape[3], height, width))
        for c in corners:
            c.scatter(plane, g * w)
        g_value[b, start : start + height * width, h, :] += plane.reshape(-1, height * width).T
    return g_value, g_locations, g_weights
