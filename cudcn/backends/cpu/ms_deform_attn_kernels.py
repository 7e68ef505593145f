"""Numba kernels of the CPU ms_deform_attn (the deformable-aggregation core): the gather, the fused
backward, and the copies into and out of the zero-bordered head planes (``pad_levels``,
``unpad_levels``).

The kernels take flat (1-D) views of C-contiguous arrays and the sizes ``dims = (N, Q, M, L, P, D,
S_pad)``; flat offsets keep the address arithmetic of the hot loops to one add per access:

| array | shape | flat offset of the first channel / coordinate |
|---|---|---|
| value planes ``vpad`` | (N, M, S_pad, D) | pixel i of head m: ``((n·M + m)·S_pad + i)·D`` |
| value gradient ``gpad`` | (slices, N, M, S_pad, D) | the same, plus ``s·N·M·S_pad·D`` for slice s |
| out, grad_out | (N, Q, M, D) | query row ``r = (n·Q + q)·M + m``: ``r·D`` |
| weights, grad_weights | (N, Q, M, L, P) | point ``j = (r·L + l)·P + p``: ``j`` |
| locations, grad_locations | (N, Q, M, L, P, 2) | ``2·j`` (x), ``2·j + 1`` (y) |

``levels`` (L, 4) int64 rows ``(H_l, W_l, start in S, start in S_pad)``: level l is an
(H_l + 2) x (W_l + 2) plane with a zero border, so the four neighbours of an in-range point are
pixels of the plane (deform_conv2d's ``sample_in_range`` and ``bilinear_weights``, padded rows and
columns), each a contiguous vector of D channels, read with no bounds checks.

Vectorisation. Numba runs LLVM's loop vectoriser (not its SLP vectoriser) and no fast-math flags are
set (see ``deform_conv2d_kernels``). A channel loop is written over at most ``RUN`` channels: with
that bound LLVM vectorises it one vector (16 float32) per iteration; an unbounded loop would be
unrolled to 64 channels per iteration, leaving D = 32 to its scalar remainder. The channel sums of
the backward (Σ_d for the weight and location gradients) cannot be vectorised as written without
reassociation, so each is kept as ``LANES`` partial sums, lane t adding the channels t, t + LANES,
t + 2·LANES, ... in order (``bilinear_sums``), and the lanes are added in a fixed tree
(``tree16``): the order depends on D alone, never on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from cudcn.backends.cpu.deform_conv2d_kernels import bilinear_weights, corner_weights, sample_in_range
from cudcn.backends.cpu.threads import SerialOrParallel

FORWARD_BLOCK = 64  # queries per forward task
RUN = np.uint64(64)  # channels per inner loop (see the module docstring)
LANES = np.uint64(16)  # partial sums per channel sum of the backward (``bilinear_sums``)
# Unsigned constants: in Numba an unsigned int plus a literal int is a signed int, and a signed
# index is checked for wraparound (which keeps LLVM from vectorising a loop).
ONE = np.uint64(1)
TWO = np.uint64(2)
ACC_DY = LANES  # the lanes of the backward's channel sums in its scratch: value, d/dy, d/dx
ACC_DX = TWO * LANES


@njit(cache=True, inline="always")
def level_geometry(levels, l, t, normalized):
    """Level l's ``(height, width, scale_y, scale_x, shift, row, start)``: its size in the points'
    type ``t``, the factors and shift from a location to pixels (``loc · W_l − 0.5`` when
    normalised, else ``loc``; the scales also turn pixel gradients into location gradients), and its
    padded row length and first padded pixel, unsigned."""
    height = t(levels[l, 0])
    width = t(levels[l, 1])
    one = t(1)
    scale_y = height if normalized else one
    scale_x = width if normalized else one
    shift = t(0.5) if normalized else t(0)
    return height, width, scale_y, scale_x, shift, np.uint64(levels[l, 1] + 2), np.uint64(levels[l, 3])


@njit(cache=True, inline="always")
def corner_offsets(y, x, row, start, plane, d):
    """``corners = (o00, o01, o10, o11, ly, lx)`` of the in-range point (y, x): the flat offsets of
    its four neighbours (top-left, top-right, bottom-left, bottom-right) in the padded level (``row``,
    ``start``) of the head plane at offset ``plane``, and its fractional parts."""
    r, c, ly, lx = bilinear_weights(y, x)
    o00 = plane + (start + r * row + c) * d
    o10 = o00 + row * d
    return o00, o00 + d, o10, o10 + d, ly, lx


@njit(cache=True, inline="always")
def bilinear_accumulate(vpad, corners, weight, out, oo, c0, count):
    """``out[oo + c] += weight · bilinear sample`` for the channels ``c0 .. c0 + count``: the sample
    first (the reference's order of the four terms), then times the weight (an inf weight times a
    zero sample is NaN, as there)."""
    o00, o01, o10, o11, ly, lx = corners
    w00, w01, w10, w11 = corner_weights(vpad.dtype.type(1), ly, lx)
    for t in range(count):
        c = c0 + t
        sample = w00 * vpad[o00 + c] + w01 * vpad[o01 + c] + w10 * vpad[o10 + c] + w11 * vpad[o11 + c]
        out[oo + c] += weight * sample


@njit(cache=True, inline="always")
def bilinear_sums(grad_out, go, vpad, corners, acc, c0, count, first):
    """The channel sums of the backward of ``bilinear_accumulate`` for the channels ``c0 .. c0 +
    count`` (at most LANES), with ``g = grad_out[go + c]``: adds ``g · sample``, ``g · ∂sample/∂y``
    and ``g · ∂sample/∂x`` to the lanes ``acc[t]``, ``acc[ACC_DY + t]`` and ``acc[ACC_DX + t]`` for
    channel ``c0 + t``, or stores them there when ``first`` (``lane_sums`` adds the lanes up)."""
    o00, o01, o10, o11, ly, lx = corners
    one = vpad.dtype.type(1)
    hy = one - ly
    hx = one - lx
    w00, w01, w10, w11 = corner_weights(one, ly, lx)
    for t in range(count):
        c = c0 + t
        g = grad_out[go + c]
        a00 = vpad[o00 + c]
        a01 = vpad[o01 + c]
        a10 = vpad[o10 + c]
        a11 = vpad[o11 + c]
        sv = g * (w00 * a00 + w01 * a01 + w10 * a10 + w11 * a11)
        sy = g * (hx * (a10 - a00) + lx * (a11 - a01))
        sx = g * (hy * (a01 - a00) + ly * (a11 - a10))
        acc[t] = sv if first else acc[t] + sv
        acc[ACC_DY + t] = sy if first else acc[ACC_DY + t] + sy
        acc[ACC_DX + t] = sx if first else acc[ACC_DX + t] + sx


@njit(cache=True, inline="always")
def bilinear_scatter(grad_out, go, gpad, g_plane, corners, weight, c0, count):
    """The value gradient of ``bilinear_accumulate`` for the channels ``c0 .. c0 + count`` (at most
    RUN): adds ``bilinear weight · (weight · grad_out[go + c])`` to the four neighbours in the
    gradient plane (``g_plane`` added to each neighbour's offset). A loop of its own, as in
    deform_conv2d's bilinear_backward: LLVM vectorises the four scatters alone."""
    o00, o01, o10, o11, ly, lx = corners
    w00, w01, w10, w11 = corner_weights(gpad.dtype.type(1), ly, lx)
    for t in range(count):
        c = c0 + t
        v = weight * grad_out[go + c]
        gpad[g_plane + o00 + c] += w00 * v
        gpad[g_plane + o01 + c] += w01 * v
        gpad[g_plane + o10 + c] += w10 * v
        gpad[g_plane + o11 + c] += w11 * v


@njit(cache=True, inline="always")
def tree16(a, o):
    """``a[o] + ... + a[o + 15]`` added pairwise: lane t + 8 onto lane t, then t + 4, t + 2, t + 1."""
    b0 = a[o] + a[o + 8]
    b1 = a[o + 1] + a[o + 9]
    b2 = a[o + 2] + a[o + 10]
    b3 = a[o + 3] + a[o + 11]
    b4 = a[o + 4] + a[o + 12]
    b5 = a[o + 5] + a[o + 13]
    b6 = a[o + 6] + a[o + 14]
    b7 = a[o + 7] + a[o + 15]
    return ((b0 + b4) + (b2 + b6)) + ((b1 + b5) + (b3 + b7))


@njit(cache=True, inline="always")
def lane_sums(acc):
    """The three channel sums of ``bilinear_sums`` from their lanes in ``acc`` (``tree16`` each)."""
    return tree16(acc, 0), tree16(acc, ACC_DY), tree16(acc, ACC_DX)


@njit(cache=True, inline="always")
def unsigned_dims(dims):
    """``dims`` (N, Q, M, L, P, D, S_pad) as unsigned ints (no negative-index checks in the loops)."""
    n_batch, n_q, heads, n_levels, points, d, s_pad = dims
    u = np.uint64
    return u(n_batch), u(n_q), u(heads), u(n_levels), u(points), u(d), u(s_pad)


@njit(cache=True)
def _forward_task(vpad, locations, weights, levels, normalized, dims, out, task):
    """Task ``task = (n·M + m)·blocks + block`` of ``ms_deform_attn_forward_kernel``."""
    _, n_q, heads, n_levels, points, d, s_pad = unsigned_dims(dims)
    t = vpad.dtype.type
    zero = t(0)
    size = np.uint64(FORWARD_BLOCK)
    blocks = (n_q + size - ONE) // size
    u_task = np.uint64(task)
    block = u_task % blocks
    m = (u_task // blocks) % heads
    n = u_task // (blocks * heads)
    plane = (n * heads + m) * s_pad * d
    for q in range(block * size, min((block + ONE) * size, n_q)):
        r = (n * n_q + q) * heads + m
        oo = r * d
        for c in range(d):
            out[oo + c] = zero
        for l in range(n_levels):
            height, width, scale_y, scale_x, shift, row, start = level_geometry(levels, l, t, normalized)
            for p in range(points):
                j = (r * n_levels + l) * points + p
                weight = weights[j]
                x = locations[TWO * j] * scale_x - shift
                y = locations[TWO * j + ONE] * scale_y - shift
                if sample_in_range(y, x, height, width):
                    corners = corner_offsets(y, x, row, start, plane, d)
                    for c0 in range(np.uint64(0), d, RUN):
                        bilinear_accumulate(vpad, corners, weight, out, oo, c0, min(RUN, d - c0))
                else:
                    nothing = weight * zero
                    for c in range(d):
                        out[oo + c] += nothing


@SerialOrParallel
def ms_deform_attn_forward_kernel(vpad, locations, weights, levels, normalized, dims, out):
    """``out = Σ_{l,p} weights · sample`` for every (n, q, m) (flat arrays, see the module
    docstring); one task per (n, m, block of ``FORWARD_BLOCK`` queries)."""
    blocks = (dims[1] + FORWARD_BLOCK - 1) // FORWARD_BLOCK
    for task in prange(dims[0] * dims[2] * blocks):
        _forward_task(vpad, locations, weights, levels, normalized, dims, out, task)


@njit(cache=True)
def _backward_task(grad_out, vpad, locations, weights, levels, normalized, dims, gpad, g_loc, g_w, acc, task):
    """Task ``task = (n·M + m)·slices + s`` of ``ms_deform_attn_backward_kernel``."""
    n_batch, n_q, heads, n_levels, points, d, s_pad = unsigned_dims(dims)
    t = vpad.dtype.type
    zero = t(0)
    slices = np.uint64(gpad.size) // (n_batch * heads * s_pad * d)
    u_task = np.uint64(task)
    s = u_task % slices
    m = (u_task // slices) % heads
    n = u_task // (slices * heads)
    plane = (n * heads + m) * s_pad * d
    g_plane = s * n_batch * heads * s_pad * d  # slice s's value-gradient plane is at plane + g_plane
    for q in range(s * n_q // slices, (s + ONE) * n_q // slices):
        r = (n * n_q + q) * heads + m
        go = r * d
        outside = zero  # Σ_d g · 0: every sum of a point out of range (NaN for a non-finite g)
        for c in range(d):
            outside += grad_out[go + c] * zero
        for l in range(n_levels):
            height, width, scale_y, scale_x, shift, row, start = level_geometry(levels, l, t, normalized)
            for p in range(points):
                j = (r * n_levels + l) * points + p
                weight = weights[j]
                x = locations[TWO * j] * scale_x - shift
                y = locations[TWO * j + ONE] * scale_y - shift
                if sample_in_range(y, x, height, width):
                    corners = corner_offsets(y, x, row, start, plane, d)
                    for c0 in range(np.uint64(0), d, LANES):
                        bilinear_sums(grad_out, go, vpad, corners, acc, c0, min(LANES, d - c0), c0 == 0)
                    for c0 in range(np.uint64(0), d, RUN):
                        bilinear_scatter(grad_out, go, gpad, g_plane, corners, weight, c0, min(RUN, d - c0))
                    gv, gy, gx = lane_sums(acc)
                else:
                    gv = gy = gx = outside
                g_w[j] = gv
                g_loc[TWO * j] = weight * gx * scale_x
                g_loc[TWO * j + ONE] = weight * gy * scale_y


@SerialOrParallel
def ms_deform_attn_backward_kernel(
    grad_out, vpad, locations, weights, levels, normalized, dims, gpad, g_loc, g_w, scratch
):
    """Fused backward (flat arrays, see the module docstring): scatters into ``gpad``, zero on entry
    (slice s takes queries ``[s·Q/slices, (s+1)·Q/slices)``), and writes every element of ``g_loc``
    and ``g_w``. One task per (n, m, slice); ``scratch`` (tasks, 3·LANES), zero on entry, holds each
    task's channel sums."""
    slices = gpad.size // (dims[0] * dims[2] * dims[6] * dims[5])
    for task in prange(dims[0] * dims[2] * slices):
        acc = scratch[task]
        _backward_task(
            grad_out, vpad, locations, weights, levels, normalized, dims, gpad, g_loc, g_w, acc, task
        )


@njit(cache=True, inline="always")
def copy_channels(dst, do, src, so, d, add):
    """``dst[do + c] = src[so + c]`` (or ``+=`` when ``add``) for ``c < d``, in runs of RUN."""
    for c0 in range(np.uint64(0), d, RUN):
        for t in range(min(RUN, d - c0)):
            c = c0 + t
            dst[do + c] = dst[do + c] + src[so + c] if add else src[so + c]


@njit(cache=True, inline="always")
def level_row(rows, levels, task):
    """Image row ``rows[i] = (l, y)`` of batch item n for task ``task = n·R + i``: ``(n, width, the
    row's first pixel in S, its first interior pixel in S_pad)``, unsigned."""
    u_task = np.uint64(task)
    i = u_task % np.uint64(rows.shape[0])
    n = u_task // np.uint64(rows.shape[0])
    l, y = rows[i, 0], rows[i, 1]
    width = levels[l, 1]
    first = levels[l, 2] + y * width
    interior = levels[l, 3] + (y + 1) * (width + 2) + 1
    return n, np.uint64(width), np.uint64(first), np.uint64(interior)


@SerialOrParallel
def pad_levels(value, rows, levels, sizes, vpad):
    """The zero-bordered head planes ``vpad (N, M, S_pad, D)`` (flat, zero on entry: the border stays
    zero) from ``value`` (flat (N, S, M, D); ``sizes = (N, S, M, D, S_pad)``): pixel (y, x) of level
    l at padded pixel (y + 1, x + 1). One task per (n, image row ``rows[i] = (l, y)``)."""
    _, s, heads, d, s_pad = sizes
    u = np.uint64
    for task in prange(sizes[0] * rows.shape[0]):
        n, width, pixel, padded = level_row(rows, levels, task)
        for m in range(u(heads)):
            for x in range(width):
                src = ((n * u(s) + pixel + x) * u(heads) + m) * u(d)
                dst = ((n * u(heads) + m) * u(s_pad) + padded + x) * u(d)
                copy_channels(vpad, dst, value, src, u(d), False)


@SerialOrParallel
def unpad_levels(gpad, rows, levels, sizes, grad_value):
    """``grad_value`` (flat (N, S, M, D)) = the interior of the slices of ``gpad`` (flat (slices, N,
    M, S_pad, D)), added in slice order; ``sizes`` and tasks as in ``pad_levels``."""
    n_batch, s, heads, d, s_pad = sizes
    u = np.uint64
    size = u(n_batch * heads * s_pad * d)  # one slice
    for task in prange(n_batch * rows.shape[0]):
        n, width, pixel, padded = level_row(rows, levels, task)
        for m in range(u(heads)):
            for x in range(width):
                dst = ((n * u(s) + pixel + x) * u(heads) + m) * u(d)
                src = ((n * u(heads) + m) * u(s_pad) + padded + x) * u(d)
                copy_channels(grad_value, dst, gpad, src, u(d), False)
                for k in range(ONE, u(gpad.size) // size):
                    copy_channels(grad_value, dst, gpad, k * size + src, u(d), True)
