"""Every kernel of every op, forward and backward, float32, float64, float16 and bfloat16 (the
16-bit ones with 32-bit indices only), 32- and 64-bit indices, atomic and deterministic
(fixed-point) scatters, on small launches compared with the reference (16-bit: with the float32
kernels run on the widened inputs, rounded to the dtype):
the workload test_sanitizers.py runs in a subprocess under AddressSanitizer and ThreadSanitizer
(and, for the mutation test, on a copy of the package whose atomicAdd calls became plain
additions).

Blocks of 32 threads, at most 2 blocks per launch, so every grid-stride loop wraps; the emulated
backend's mode and worker count come from the environment (the tests ask for concurrent, 3 workers).
Inputs include exact pixel and border coordinates, offsets far outside the image and, for the conv
and ms_deform_attn, non-finite offsets and locations. A mismatch is reported and counted, and the
run goes on to the other ops, so that a sanitizer sees every kernel; the exit status is 1 if anything
mismatched.

Usage: python tests/backends/sanitized_kernels.py [--one] [op ...]   (default: every op; --one: only the
first configuration of each, float32 with 32-bit indices)
"""

from __future__ import annotations

import itertools
import sys

import ml_dtypes
import numpy as np

import cudcn.backends.emulated as emulated
from cudcn import dtypes, reference
from cudcn.backends import deterministic, poisoning
from cudcn.backends.launch import common as launch
from cudcn.backends.launch import deform_conv2d as dc_launch
from cudcn.dtypes import computed_in_float32
from cudcn.ops.deform_conv2d import DeformConv2dParams
from cudcn.ops.deform_psroi_pool import DeformPSRoIPoolParams
from cudcn.ops.deform_roi_pool import DeformRoIPoolParams
from cudcn.ops.ms_deform_attn import MSDeformAttnParams

SMALL_LAUNCHES = {"THREADS_PER_BLOCK": 32, "MAX_BLOCKS": 2}  # set on cudcn.backends.launch.common
COLUMN_BUDGET_BYTES = 2000  # several batch chunks in the conv
INDEX_LIMITS = (launch.INDEX32_LIMIT, 0)  # 0: every launch takes the long long instantiations
mismatches: list[str] = []


def compare(what: str, got: list, want: list, dtype) -> None:
    # 16-bit: both sides round one float32 result whose summation order may differ (atomics), so
    # they agree within one unit in the last place, eps(dtype) relative to the largest value.
    tol = {np.float32: 1e-4, np.float64: 1e-10}.get(np.dtype(dtype).type, dtypes.eps(dtype))
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if w is None:
            continue
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        try:
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol * max(1.0, float(np.abs(w).max())))
        except AssertionError as error:
            mismatches.append(f"{what} result {i}: {str(error).splitlines()[3:5]}")


def conv(
    seed,
    dtype,
    batch,
    channels,
    size,
    out_channels,
    kernel,
    stride,
    padding,
    dilation,
    groups,
    offset_groups,
    use_mask,
    scale,
) -> None:
    rng = np.random.default_rng(seed)
    kh, kw = kernel
    out_h = (size[0] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (size[1] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    taps = offset_groups * kh * kw
    x = rng.standard_normal((batch, channels, *size)).astype(dtype)
    offset = rng.uniform(-scale, scale, (batch, 2 * taps, out_h, out_w)).astype(dtype)
    offset.flat[::9] = np.round(offset.flat[::9])  # exact pixel and border coordinates
    offset.flat[1::17] = np.nan
    offset.flat[2::23] = np.inf
    offset.flat[3::29] = -min(1.0e30, float(ml_dtypes.finfo(dtype).max) / 2)
    weight = rng.standard_normal((out_channels, channels // groups, kh, kw)).astype(dtype)
    bias = rng.standard_normal(out_channels).astype(dtype)
    mask = rng.uniform(0.1, 1, (batch, taps, out_h, out_w)).astype(dtype) if use_mask else None
    grad_out = rng.standard_normal((batch, out_channels, out_h, out_w)).astype(dtype)
    p = DeformConv2dParams(stride, padding, dilation, groups, offset_groups)
    check_op("deform_conv2d", seed, dtype, (x, offset, weight, bias, mask), grad_out, p)


def rois_for(rng, n, batch, height, width, scale):
    """RoIs partly outside the map, some on exact pixel corners."""
    x1 = rng.uniform(-2, width / scale, n)
    y1 = rng.uniform(-2, height / scale, n)
    w, h = rng.uniform(0.5, width / scale, n), rng.uniform(0.5, height / scale, n)
    rois = np.stack([rng.integers(0, batch, n), x1, y1, x1 + w, y1 + h], axis=1)
    rois[::3, 1:] = np.round(rois[::3, 1:])
    return rois


def roi(seed, dtype, aligned, sampling_ratio, use_offset) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 6, 7)).astype(dtype)
    rois = rois_for(rng, 7, 2, 6, 7, 0.5).astype(dtype)
    offset = rng.uniform(-3, 3, (7, 2, 3, 2)).astype(dtype) if use_offset else None
    if use_offset:
        offset.flat[::5] = np.round(offset.flat[::5])
    p = DeformRoIPoolParams(
        3, 2, spatial_scale=0.5, sampling_ratio=sampling_ratio, gamma=0.2, aligned=aligned
    )
    grad_out = rng.standard_normal((7, 3, 3, 2)).astype(dtype)
    check_op("deform_roi_pool", seed, dtype, (x, rois, offset), grad_out, p)


def psroi(seed, dtype, use_trans) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 4 * 4, 7, 6)).astype(dtype)  # output_dim 4, group_size 2
    rois = rois_for(rng, 6, 2, 7, 6, 0.5).astype(dtype)
    trans = rng.uniform(-2, 2, (6, 4, 3, 3)).astype(dtype) if use_trans else None  # 2 classes
    p = DeformPSRoIPoolParams(
        spatial_scale=0.5,
        output_dim=4,
        group_size=2,
        pooled_size=3,
        part_size=3,
        sample_per_part=2,
        trans_std=0.2,
    )
    grad_out = rng.standard_normal((6, 4, 3, 3)).astype(dtype)
    check_op("deform_psroi_pool", seed, dtype, (x, rois, trans), grad_out, p)


def msda(seed, dtype, levels, batch, queries, heads, channels, points, normalized) -> None:
    """The deformable-aggregation core: points inside, outside and on exact pixel coordinates,
    NaN, inf and huge locations; several queries per level so that blocks scatter onto the same
    value gradient elements."""
    rng = np.random.default_rng(seed)
    spatial = sum(h * w for h, w in levels)
    starts = tuple(int(s) for s in np.cumsum([0, *(h * w for h, w in levels)])[:-1])
    value = rng.standard_normal((batch, spatial, heads, channels)).astype(dtype)
    shape = (batch, queries, heads, len(levels), points, 2)
    size = max(max(level) for level in levels)
    loc = rng.uniform(-0.3, 1.3, shape) if normalized else rng.uniform(-2, size + 1, shape)
    loc.flat[::7] = np.round(loc.flat[::7] * 8) / 8  # exact coordinates, borders included
    loc.flat[1::19] = np.nan
    loc.flat[2::23] = np.inf
    loc.flat[3::29] = -1.0e30
    weights = rng.standard_normal(shape[:-1]).astype(dtype)
    grad_out = rng.standard_normal((batch, queries, heads, channels)).astype(dtype)
    p = MSDeformAttnParams(tuple(levels), starts, normalized)
    locations = loc.astype(dtypes.compute_dtype(dtype))
    check_op("ms_deform_attn", seed, dtype, (value, locations, weights), grad_out, p)


OPS = ("deform_conv2d", "deform_roi_pool", "deform_psroi_pool", "ms_deform_attn")


def forward_backward(module, op: str, args: tuple, grad_out, params) -> list:
    """``[out, *gradients]`` of ``op`` from a backend module (or the reference)."""
    forward, backward = getattr(module, f"{op}_forward"), getattr(module, f"{op}_backward")
    return [forward(*args, params), *backward(grad_out, *args, params)]


def check_op(op: str, seed: int, dtype, args: tuple, grad_out, params) -> None:
    """The emulated kernels (outputs poisoned) against the reference, or, for 16-bit, against the
    float32 kernels on the widened inputs (:class:`Widened`)."""
    with poisoning():
        got = forward_backward(emulated, op, args, grad_out, params)
    truth = Widened if dtypes.is_half_dtype(dtype) else reference
    want = forward_backward(truth, op, args, grad_out, params)
    compare(f"{op} seed {seed} {np.dtype(dtype)}", got, want, dtype)


class Widened:
    """The emulated float32 kernels on widened 16-bit inputs, results rounded to the input dtype:
    what the 16-bit instantiations must compute (no Numba, which a sanitized process should not JIT)."""


for _name in (f"{op}_{way}" for op in OPS for way in ("forward", "backward")):
    setattr(Widened, _name, staticmethod(computed_in_float32(getattr(emulated, _name))))


def run_op(op: str, one: bool) -> int:
    """Run op's configurations with 32-bit, then 64-bit indices, with atomic and then deterministic
    (fixed-point) scatters; returns how many ran."""
    runs = 0
    for limit, exact in itertools.product(INDEX_LIMITS, (False, True)):
        if one and (limit != INDEX_LIMITS[0] or exact):
            continue
        launch.INDEX32_LIMIT = limit
        # The 16-bit instantiations differ from float's only in their loads and stores, which the
        # index type does not change: they run with 32-bit indices only, to keep the run short.
        kinds = dtypes.FLOAT_DTYPES if limit == INDEX_LIMITS[0] else (np.float32, np.float64)
        with deterministic(exact):
            for dtype in (np.float32,) if one else kinds:
                runs += run_configurations(op, dtype)
    return runs


def run_configurations(op: str, dtype) -> int:
    """op's configurations in ``dtype``; returns how many ran."""
    if op == "deform_conv2d":
        conv(1, dtype, 2, 6, (5, 6), 4, (2, 3), (2, 1), (1, 0), (2, 1), 2, 3, True, 4.0)
        conv(2, dtype, 2, 4, (4, 4), 4, (3, 3), (1, 1), (2, 2), (1, 1), 1, 2, False, 6.0)
        return 2
    if op == "deform_roi_pool":
        roi(3, dtype, True, 2, True)
        roi(4, dtype, False, 0, True)
        roi(5, dtype, True, 0, False)
        return 3
    if op == "ms_deform_attn":
        # An odd head count, so that the two blocks' groups share heads (and scatter targets).
        msda(8, dtype, ((3, 4), (2, 2)), 1, 3, 3, 3, 2, True)
        msda(9, dtype, ((4, 3),), 1, 4, 1, 40, 2, False)
        return 2
    psroi(6, dtype, True)
    psroi(7, dtype, False)
    return 2


def main(args: list[str]) -> int:
    for name, value in SMALL_LAUNCHES.items():
        setattr(launch, name, value)
    dc_launch.COLUMN_BUDGET_BYTES = COLUMN_BUDGET_BYTES
    ops = [a for a in args if a != "--one"]
    for op in ops or OPS:
        print(f"checked {op} {run_op(op, '--one' in args)}", flush=True)
    for line in mismatches:
        print("MISMATCH", line, flush=True)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
