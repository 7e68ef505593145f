"""Numba kernels of the CPU deform_conv2d: channels-last sampling, fused backward, layout copies.

The input is first copied channels-last with one pixel of zero padding, ``xpad (B, H+2, W+2, C)``, so
that the four bilinear neighbours of any in-range sampling point are valid pixels of ``xpad`` and each
of them is a contiguous vector of channels (no per-neighbour bounds checks, vectorised channel loops).
The columns are ``col (groups, B·H_out·W_out, K, C_in/groups)``: one row per output position and weight
group, so that the convolution is one GEMM per weight group over the whole batch chunk.

Channels are processed in *runs* ``(offset_group, weight_group, c_begin, c_end, part)``: the channels
sharing both groups (offset groups and weight groups may cross); ``part`` numbers the runs of one offset
group. The backward kernel runs one task per (batch item, run, slice of output rows). Each slice
scatters into its own input-gradient buffer ``gin[slice]``, summed afterwards in slice order, and the
offset/mask gradients of the runs of one offset group go to separate ``part`` planes, summed by the
caller in a fixed order: deterministic without atomics, whatever the number of threads.

Shared helpers carry the names of the CUDA kernels' ``__device__`` functions: ``sampling_point``,
``sample_in_range``, ``bilinear_weights``, ``bilinear_sample`` and ``bilinear_backward``. Loop counters
over channels are unsigned (no negative-index wraparound checks), which lets LLVM vectorise those
loops; hot loops index the arrays directly (array views cost reference counting); float32 data stays
float32 (constants are built with the array dtype's own type).

No fast-math flags: with ``reassoc``/``contract`` the rounding depends on how LLVM optimised the code,
and Numba optimises a callee (such as the parallel loop body) once on its own and again inside the
caller whose object code goes to the cache; a process that compiled the kernels runs the first copy,
a process that loaded them the second, so the two gave different bits. The channel sums of the
backward are instead pairwise in an order fixed by the channel count (``channel_sums``).

Each parallel kernel is one ``prange`` loop over a per-task body (``_im2col_row``, ``_col2im_task``,
...), compiled twice by ``SerialOrParallel``: in parallel, and on the calling thread alone for work too
small to wake Numba's pool (its first argument, ``serial``; ``cudcn.backends.cpu.threads``). Tasks
depend on the shape only, never on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from cudcn.backends.cpu.threads import SerialOrParallel


@njit(cache=True)
def sample_in_range(y, x, height, width):
    """True when bilinear sampling at (y, x) can be non-zero: ``-1 <= y < height``, same for x.

    False for NaN and infinities, so no float-to-int conversion happens on them. (At ``y = -1`` the value
    is 0, but the forward-difference offset gradient is not.)"""
    return y >= -1 and y < height and x >= -1 and x < width  # height, width: of the point's type


@njit(cache=True)
def bilinear_weights(y, x):
    """Padded row and column of the top-left neighbour ``(floor(y) + 1, floor(x) + 1)`` and the
    fractional parts ``(ly, lx)`` of an in-range point (the neighbours are at +0/+1 in ``xpad``)."""
    fy = np.floor(y)
    fx = np.floor(x)
    return np.uint64(np.int64(fy) + 1), np.uint64(np.int64(fx) + 1), y - fy, x - fx


@njit(cache=True, inline="always")
def corner_weights(one, ly, lx):
    """The bilinear weights ``(w00, w01, w10, w11)`` of the top-left, top-right, bottom-left and
    bottom-right neighbours for the fractional parts (ly, lx); ``one`` is 1 in their type."""
    hy = one - ly
    hx = one - lx
    return hy * hx, hy * lx, ly * hx, ly * lx


@njit(cache=True)
def bilinear_sample(xpad, b, r, q, ly, lx, scale, c0, n, col, g, pos, k, d0):
    """``col[g, pos, k, d0 + t] = scale · bilinear(xpad[b], channel c0 + t)`` for ``t < n``.

    The mask ``scale`` multiplies the interpolated value, not the weights, as the reference does: with
    an inf mask, ``inf · (w · 0)`` of a zero-padded neighbour would be NaN where the reference's value is
    inf."""
    w00, w01, w10, w11 = corner_weights(xpad.dtype.type(1), ly, lx)
    for t in range(n):
        c = c0 + t
        col[g, pos, k, d0 + t] = scale * (
            w00 * xpad[b, r, q, c]
            + w01 * xpad[b, r, q + 1, c]
            + w10 * xpad[b, r + 1, q, c]
            + w11 * xpad[b, r + 1, q + 1, c]
        )


@njit(cache=True)
def zero_sample(scale, n, col, g, pos, k, d0):
    """``col[g, pos, k, d0 + t] = scale · 0`` for ``t < n``: a sampling point out of range has value 0,
    modulated like any other (NaN for a non-finite mask, as the reference computes)."""
    value = scale * col.dtype.type(0)
    for t in range(n):
        col[g, pos, k, d0 + t] = value


@njit(cache=True)
def zero_sample_sums(gcol, g, pos, k, d0, n):
    """The channel sums of ``bilinear_backward`` for a point out of range, whose value and
    derivatives are 0: ``Σ gcol · 0`` (0, or NaN where the column gradient is not finite, as the
    reference computes)."""
    zero = gcol.dtype.type(0)
    total = zero
    for t in range(n):
        total += gcol[g, pos, k, d0 + t] * zero
    return total


@njit(cache=True)
def bilinear_backward(xpad, gin, s, b, r, q, ly, lx, scale, c0, n, gcol, col, g, pos, k, d0, acc):
    """Backward of ``bilinear_sample`` for the channels ``c0 .. c0 + n`` with column gradient
    ``gcol[g, pos, k, d0 + t]``: adds ``scale · gcol · weight`` to the four neighbours in
    ``gin[s, b]`` and returns ``(Σ gcol·value, Σ gcol·∂value/∂y, Σ gcol·∂value/∂x)`` (unscaled).
    On the way it does ``bilinear_sample``'s job too, writing ``col[g, pos, k, d0 + t]``.
    ``acc`` (3, >= n) is scratch for the three channel sums (see ``channel_sums``)."""
    one = xpad.dtype.type(1)
    hy = one - ly
    hx = one - lx
    for t in range(n):
        c = c0 + t
        v = gcol[g, pos, k, d0 + t]
        a00 = xpad[b, r, q, c]
        a01 = xpad[b, r, q + 1, c]
        a10 = xpad[b, r + 1, q, c]
        a11 = xpad[b, r + 1, q + 1, c]
        value = hy * (hx * a00 + lx * a01) + ly * (hx * a10 + lx * a11)
        col[g, pos, k, d0 + t] = scale * value
        acc[0, t] = v * value
        acc[1, t] = v * (hx * (a10 - a00) + lx * (a11 - a01))
        acc[2, t] = v * (hy * (a01 - a00) + ly * (a11 - a10))
    # A separate loop: with the products in it, LLVM would not vectorise the four scatters (the four
    # neighbours are C channels apart, so no two of them meet within one run of at most C channels).
    w00 = scale * hy * hx
    w01 = scale * hy * lx
    w10 = scale * ly * hx
    w11 = scale * ly * lx
    for t in range(n):
        v = gcol[g, pos, k, d0 + t]
        gin[s, b, r, q, c0 + t] += w00 * v
        gin[s, b, r, q + 1, c0 + t] += w01 * v
        gin[s, b, r + 1, q, c0 + t] += w10 * v
        gin[s, b, r + 1, q + 1, c0 + t] += w11 * v
    return channel_sums(acc, n)


@njit(cache=True)
def channel_sums(acc, n):
    """``(Σ_t acc[0, t], Σ_t acc[1, t], Σ_t acc[2, t])`` over ``t < n``, summed pairwise in an order
    fixed by n alone: each pass adds the top half of the remaining terms onto the bottom half (a loop
    of independent additions, which LLVM vectorises without being allowed to reorder anything).
    Destroys ``acc``."""
    m = np.uint64(n)
    while m > 8:
        half = m // np.uint64(2)
        top = m - half
        for row in range(3):
            for t in range(half):
                acc[row, t] += acc[row, top + t]
        m = top
    zero = acc.dtype.type(0)
    sv = sy = sx = zero
    for t in range(m):
        sv += acc[0, t]
        sy += acc[1, t]
        sx += acc[2, t]
    return sv, sy, sx


@njit(cache=True)
def sampling_point(offset, b, og, i, j, oy, ox, kernel, stride, padding, dilation):
    """Tap ``k = i·kw + j`` of offset group ``og`` at output (oy, ox): ``(k, ch, y, x)`` with ``ch`` the
    offset channel of dy (dx is ``ch + 1``) and (y, x) the sampling point, in the offset's dtype."""
    t = offset.dtype.type
    kh, kw = kernel
    k = i * kw + j
    ch = 2 * (og * kh * kw + k)
    y = t(oy * stride[0] - padding[0] + i * dilation[0]) + offset[b, ch, oy, ox]
    x = t(ox * stride[1] - padding[1] + j * dilation[1]) + offset[b, ch + 1, oy, ox]
    return k, ch, y, x


@njit(cache=True)
def _unsigned_run(runs, index, c_per_group):
    """Run ``index`` as unsigned (weight group, first channel, length, column offset)."""
    g, c0, c1 = runs[index, 1], runs[index, 2], runs[index, 3]
    return np.uint64(g), np.uint64(c0), np.uint64(c1 - c0), np.uint64(c0 - g * c_per_group)


@njit(cache=True)
def _im2col_row(xpad, offset, mask, has_mask, runs, kernel, stride, padding, dilation, col, row):
    """Columns of output row ``row = b·H_out + oy`` (see ``deform_conv2d_im2col``)."""
    t = xpad.dtype.type
    height = t(xpad.shape[1] - 2)
    width = t(xpad.shape[2] - 2)
    out_h, out_w = offset.shape[2], offset.shape[3]
    kh, kw = kernel
    b = row // out_h
    oy = row - b * out_h
    for ox in range(out_w):
        pos = np.uint64(row * out_w + ox)
        for index in range(runs.shape[0]):
            og = runs[index, 0]
            g, c0, n, d0 = _unsigned_run(runs, index, col.shape[3])
            for i in range(kh):
                for j in range(kw):
                    k, _, y, x = sampling_point(
                        offset, b, og, i, j, oy, ox, kernel, stride, padding, dilation
                    )
                    m = mask[b, og * kh * kw + k, oy, ox] if has_mask else t(1)
                    if sample_in_range(y, x, height, width):
                        r, q, ly, lx = bilinear_weights(y, x)
                        bilinear_sample(xpad, b, r, q, ly, lx, m, c0, n, col, g, pos, k, d0)
                    else:
                        zero_sample(m, n, col, g, pos, k, d0)


@SerialOrParallel
def deform_conv2d_im2col(xpad, offset, mask, has_mask, runs, kernel, stride, padding, dilation, col):
    """Modulated columns ``col[g, n, k, c - g·C_in/groups]`` for every output position n of the chunk.

    xpad (Bc, H+2, W+2, C); offset (Bc, 2·og·K, H_out, W_out); mask (Bc, og·K, H_out, W_out) when
    ``has_mask`` (else any 4-d array); runs (R, 5) int64; kernel/stride/padding/dilation (h, w) ints.
    One task per output row."""
    for row in prange(xpad.shape[0] * offset.shape[2]):
        _im2col_row(xpad, offset, mask, has_mask, runs, kernel, stride, padding, dilation, col, row)


@njit(cache=True)
def _col2im_task(
    xpad,
    offset,
    mask,
    has_mask,
    runs,
    kernel,
    stride,
    padding,
    dilation,
    gcol,
    col,
    gin,
    g_off,
    g_mask,
    scratch,
    task,
):
    """Task ``task = (b·runs + run)·slices + s`` of ``deform_conv2d_col2im``."""
    t = xpad.dtype.type
    height = t(xpad.shape[1] - 2)
    width = t(xpad.shape[2] - 2)
    out_h, out_w = offset.shape[2], offset.shape[3]
    kh, kw = kernel
    slices = gin.shape[0]
    nruns = runs.shape[0]
    s = task % slices
    index = (task // slices) % nruns
    b = task // (slices * nruns)
    og, part = runs[index, 0], runs[index, 4]
    g, c0, n, d0 = _unsigned_run(runs, index, gcol.shape[3])
    acc = scratch[task]
    for oy in range(s * out_h // slices, (s + 1) * out_h // slices):
        for ox in range(out_w):
            pos = np.uint64((b * out_h + oy) * out_w + ox)
            for i in range(kh):
                for j in range(kw):
                    k, ch, y, x = sampling_point(
                        offset, b, og, i, j, oy, ox, kernel, stride, padding, dilation
                    )
                    m = mask[b, og * kh * kw + k, oy, ox] if has_mask else t(1)
                    if sample_in_range(y, x, height, width):
                        r, q, ly, lx = bilinear_weights(y, x)
                        gv, gy, gx = bilinear_backward(
                            xpad, gin, s, b, r, q, ly, lx, m, c0, n, gcol, col, g, pos, k, d0, acc
                        )
                    else:
                        zero_sample(m, n, col, g, pos, k, d0)
                        gv = gy = gx = zero_sample_sums(gcol, g, pos, k, d0, n)
                    g_off[part, b, ch, oy, ox] = gy * m
                    g_off[part, b, ch + 1, oy, ox] = gx * m
                    if has_mask:
                        g_mask[part, b, og * kh * kw + k, oy, ox] = gv


@SerialOrParallel
def deform_conv2d_col2im(
    xpad,
    offset,
    mask,
    has_mask,
    runs,
    kernel,
    stride,
    padding,
    dilation,
    gcol,
    col,
    gin,
    g_off,
    g_mask,
    scratch,
):
    """Fused backward of ``deform_conv2d_im2col`` given the column gradient ``gcol``; it also writes
    the columns themselves into ``col`` (same shape), for the weight gradient.

    Scatters into ``gin`` (slices, Bc, H+2, W+2, C), zero on entry: slice s takes output rows
    ``[s·H_out/slices, (s+1)·H_out/slices)``. Writes ``g_off[part]`` (parts, Bc, 2·og·K, H_out, W_out)
    and, when ``has_mask``, ``g_mask[part]`` (parts, Bc, og·K, H_out, W_out) for every element its
    runs cover. One task per (batch item, run, slice); ``scratch`` (tasks, 3, >= C_in/groups) holds
    each task's channel sums (allocated by the caller: nothing is allocated in the parallel loop,
    where Numba would lose a MemoryError)."""
    for task in prange(xpad.shape[0] * runs.shape[0] * gin.shape[0]):
        _col2im_task(
            xpad,
            offset,
            mask,
            has_mask,
            runs,
            kernel,
            stride,
            padding,
            dilation,
            gcol,
            col,
            gin,
            g_off,
            g_mask,
            scratch,
            task,
        )


@njit(cache=True)
def _pad_row(x, xpad, row):
    """Row ``row = b·(H+2) + h`` of ``pad_channels_last``."""
    height, width = x.shape[2], x.shape[3]
    zero = x.dtype.type(0)
    b = row // (height + 2)
    h = row - b * (height + 2)
    if h == 0 or h == height + 1:
        xpad[b, h] = zero
        return
    xpad[b, h, 0] = zero
    xpad[b, h, width + 1] = zero
    for c in range(x.shape[1]):
        for w in range(width):
            xpad[b, h, w + 1, c] = x[b, c, h - 1, w]


@SerialOrParallel
def pad_channels_last(x, xpad):
    """``xpad[b, h+1, w+1, c] = x[b, c, h, w]`` with a zero border; x (B, C, H, W)."""
    for row in prange(x.shape[0] * (x.shape[2] + 2)):
        _pad_row(x, xpad, row)


@njit(cache=True)
def _channels_first_tile(rows, bias, has_bias, out, tile):
    """Tile ``tile = b·tiles + i`` (positions ``64·i ..``) of ``channels_first``."""
    c_out, npos = out.shape[1], out.shape[2]
    tiles = (npos + 63) // 64
    zero = rows.dtype.type(0)
    b = tile // tiles
    p0 = (tile - b * tiles) * 64
    p1 = min(p0 + 64, npos)
    for o in range(c_out):
        add = bias[o] if has_bias else zero
        for p in range(p0, p1):
            out[b, o, p] = rows[b * npos + p, o] + add


@SerialOrParallel
def channels_first(rows, bias, has_bias, out):
    """``out[b, o, p] = rows[b·P + p, o] (+ bias[o])``: GEMM rows (B·P, C_out) to (B, C_out, P).

    Tiles of 64 positions keep the rows being transposed in L1."""
    for tile in prange(out.shape[0] * ((out.shape[2] + 63) // 64)):
        _channels_first_tile(rows, bias, has_bias, out, tile)


@njit(cache=True)
def _sum_row(gin, out, row):
    """Row ``row = b·H + h`` of ``sum_channels_first``."""
    height, width = out.shape[2], out.shape[3]
    b = row // height
    h = row - b * height
    for c in range(out.shape[1]):
        for w in range(width):
            acc = gin[0, b, h + 1, w + 1, c]
            for s in range(1, gin.shape[0]):
                acc += gin[s, b, h + 1, w + 1, c]
            out[b, c, h, w] = acc


@SerialOrParallel
def sum_channels_first(gin, out):
    """``out[b, c, h, w] = Σ_s gin[s, b, h+1, w+1, c]``, summed in slice order; out (B, C, H, W)."""
    for row in prange(out.shape[0] * out.shape[2]):
        _sum_row(gin, out, row)
