"""ms_deform_attn on the CPU: the deformable-aggregation core (``cudcn.ops.ms_deform_attn``) on Numba
kernels (``ms_deform_attn_kernels``).

Organised for CPU speed, with the bilinear rule and helpers of the CPU deform_conv2d: ``value``
(N, S, M, D) is first copied into zero-bordered level planes, one set per batch item and head,
``vpad (N, M, S_pad, D)`` (level l an (H_l + 2) x (W_l + 2) plane), so that the four neighbours of
any in-range point are pixels of the plane, each a contiguous vector of D channels (the innermost
loop), and a head's levels are contiguous (read in place, with the heads M·D apart and a row of
zeros for the neighbours outside, the kernels measured 1.3x slower forward and 1.5x backward at
Deformable DETR's encoder shape: a task keeps to its head's planes). The sampling coefficients (four
neighbours, bilinear weights) are computed once per (n, q, m, l, p) and reused over the D channels.

- forward: one task per (n, m, block of queries); it owns ``out[n, block, m, :]``.
- backward: one task per (n, m, slice of queries); slice s scatters the value gradient into its own
  zero-bordered planes ``gpad[s]`` and writes the location and weight gradients of its queries; the
  slices are then summed in slice order while the border is dropped. The slice count depends on the
  shape and dtype only (``backward_slices``: 16 tasks, within 256 MiB of extra copies):
  deterministic, no atomics, for any number of threads.

Non-finite data follow the float64 reference term by term (docs/spec.md): a point out of range adds
``weight · 0`` to the output and gets the gradients ``Σ_d grad_out · 0`` (NaN where the weight or
grad_out is not finite); a neighbour outside its level reads the border's 0 and scatters only into
the dropped border. Scratch is allocated here, in Python, never in a parallel loop (where Numba would
lose a MemoryError).
"""

from __future__ import annotations

import numpy as np

from cudcn.backends import new_output
from cudcn.backends.cpu.ms_deform_attn_kernels import (
    LANES,
    ms_deform_attn_backward_kernel,
    ms_deform_attn_forward_kernel,
    pad_levels,
    unpad_levels,
)
from cudcn.backends.cpu.threads import kernel_threads
from cudcn.ops.ms_deform_attn import MSDeformAttnParams

BACKWARD_TASKS = 16  # the backward splits queries into slices until N * M * slices reaches this
SLICE_BYTES = 256 * 2**20  # ... as long as the extra gradient planes stay within this many bytes


def _layout(p: MSDeformAttnParams) -> tuple[np.ndarray, np.ndarray, int]:
    """``(levels, rows, S_pad)``: levels (L, 4) int64 rows ``(H_l, W_l, start in S, start in
    S_pad)``, rows (Σ H_l, 2) int64 ``(l, y)`` for every image row, and the padded length."""
    table = p.level_table().astype(np.int64)
    padded = (table[:, 0] + 2) * (table[:, 1] + 2)
    starts = np.concatenate(([0], np.cumsum(padded)[:-1]))
    levels = np.ascontiguousarray(np.column_stack([table, starts]))
    rows = [(l, y) for l, h in enumerate(table[:, 0]) for y in range(h)]
    return levels, np.array(rows, np.int64).reshape(-1, 2), int(padded.sum())


def _padded(value: np.ndarray, p: MSDeformAttnParams, work: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(vpad, levels, rows)`` for ``value`` (see the module docstring and ``_layout``)."""
    levels, rows, s_pad = _layout(p)
    n, _, heads, d = value.shape
    vpad = np.zeros((n, heads, s_pad, d), value.dtype)
    with kernel_threads(work) as serial:
        pad_levels(serial, value.ravel(), rows, levels, (*value.shape, s_pad), vpad.ravel())
    return vpad, levels, rows


def _dims(vpad: np.ndarray, locations: np.ndarray) -> tuple[int, ...]:
    """The kernels' sizes ``(N, Q, M, L, P, D, S_pad)``."""
    n, q, m, levels, points, _ = locations.shape
    return n, q, m, levels, points, vpad.shape[3], vpad.shape[2]


def ms_deform_attn_forward(
    value: np.ndarray, locations: np.ndarray, weights: np.ndarray, p: MSDeformAttnParams
) -> np.ndarray:
    """The core's output (N, Q, M, D) for value (N, S, M, D), locations (N, Q, M, L, P, 2) and
    weights (N, Q, M, L, P), all of one dtype (float32 or float64)."""
    n, _, heads, d = value.shape
    work = weights.size * d
    vpad, levels, _ = _padded(value, p, work)
    out = new_output(np, (n, locations.shape[1], heads, d), value.dtype)
    flat = (vpad.ravel(), locations.ravel(), weights.ravel(), levels, p.normalized, _dims(vpad, locations))
    with kernel_threads(work) as serial:
        ms_deform_attn_forward_kernel(serial, *flat, out.ravel())
    return out


def backward_slices(n: int, heads: int, queries: int, slice_bytes: int) -> int:
    """Query slices of the backward: enough for ``BACKWARD_TASKS`` tasks, at most one per query,
    and no more than ``SLICE_BYTES`` in gradient copies (``slice_bytes`` each) beyond the first."""
    wanted = min(queries, -(-BACKWARD_TASKS // (n * heads)))
    return max(1, min(wanted, 1 + SLICE_BYTES // max(slice_bytes, 1)))


def ms_deform_attn_backward(
    grad_out: np.ndarray, value: np.ndarray, locations: np.ndarray, weights: np.ndarray, p: MSDeformAttnParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grad_value, grad_locations, grad_weights)`` for grad_out (N, Q, M, D); arrays as for the
    forward."""
    n, _, heads, d = value.shape
    work = weights.size * d
    vpad, levels, rows = _padded(value, p, work)
    slices = backward_slices(n, heads, locations.shape[1], vpad.nbytes)
    gpad = np.zeros((slices, *vpad.shape), value.dtype)
    scratch = np.zeros((n * heads * slices, 3 * int(LANES)), value.dtype)
    g_loc = new_output(np, locations.shape, value.dtype)
    g_w = new_output(np, weights.shape, value.dtype)
    g_value = new_output(np, value.shape, value.dtype)
    flat = (grad_out.ravel(), vpad.ravel(), locations.ravel(), weights.ravel(), levels, p.normalized)
    with kernel_threads(work) as serial:
        args = (*flat, _dims(vpad, locations), gpad.ravel(), g_loc.ravel(), g_w.ravel(), scratch)
        ms_deform_attn_backward_kernel(serial, *args)
        unpad_levels(serial, gpad.ravel(), rows, levels, (*value.shape, vpad.shape[2]), g_value.ravel())
    return g_value, g_loc, g_w
