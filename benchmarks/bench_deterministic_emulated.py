"""Cost of ``cudcn.deterministic()`` on the emulated backend: the backward of each op with float
atomics against the same backward with the deterministic fixed-point scatters (two launches, per-element
scales: docs/determinism.md), side by side in one process.

The emulated backend runs the CUDA kernels on the host (``CUDCN_EMULATED_MODE`` as set, default
``auto``), so these are host timings of the same kernels and launch code the GPU runs, not GPU
numbers. The two modes take turns within each repeat; medians in ms and their ratio. Before timing,
each mode's results are checked: deterministic twice gives the same bits, and the two modes agree
within the atomic sums' summation-order bound.

Last, the design the mode did not take, measured for the choice: sort-by-destination with segmented
sums, as a float32 NumPy prototype of the conv input gradient (its pairs, memory, sort and sums),
checked against the fixed-point result.

Run: python benchmarks/bench_deterministic_emulated.py [--repeats 9] [--dtypes float32 float16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

import cudcn
import cudcn.backends.emulated as emulated
from cudcn import reference
from cudcn.ops.deform_conv2d import DeformConv2dParams
from cudcn.ops.deform_psroi_pool import DeformPSRoIPoolParams
from cudcn.ops.deform_roi_pool import DeformRoIPoolParams
from cudcn.testing import summation_order_tolerance

CONV = DeformConv2dParams(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, offset_groups=1)
ROI = DeformRoIPoolParams(
    pooled_h=7, pooled_w=7, spatial_scale=0.25, sampling_ratio=2, gamma=0.1, aligned=True
)
PSROI = DeformPSRoIPoolParams(
    spatial_scale=0.25,
    output_dim=8,
    group_size=7,
    pooled_size=7,
    part_size=7,
    sample_per_part=2,
    trans_std=0.1,
)


def _rois(rng: np.random.Generator, n: int, batch: int, size: float) -> np.ndarray:
    corners = rng.uniform(0, size * 0.7, (n, 2))
    sides = rng.uniform(size * 0.1, size * 0.3, (n, 2))
    return np.column_stack([rng.integers(0, batch, n), corners, corners + sides])


def conv_inputs(dtype, b: int = 4, c: int = 32, h: int = 28) -> tuple[np.ndarray, ...]:
    """(grad_out, input, offset, weight, mask) of the conv case: 3x3, padding 1, offsets in +-2."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, c, h, h)).astype(dtype)
    offset = rng.uniform(-2, 2, (b, 18, h, h)).astype(dtype)
    weight = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(dtype)
    mask = rng.uniform(0, 1, (b, 9, h, h)).astype(dtype)
    grad = rng.standard_normal((b, c, h, h)).astype(dtype)
    return grad, x, offset, weight, mask


def cases(dtype) -> dict[str, tuple[str, Callable[[], list[np.ndarray]], int]]:
    """name -> (shape text, backward call returning the scattered gradients, terms per element)."""
    rng = np.random.default_rng(1)
    grad, x, offset, weight, mask = conv_inputs(dtype)
    b, c, h = x.shape[:3]

    def conv() -> list[np.ndarray]:
        grads = emulated.deform_conv2d_backward(grad, x, offset, weight, None, mask, CONV)
        return [grads[0]]  # the input gradient is the scattered one

    feat = rng.standard_normal((2, 64, 50, 50)).astype(dtype)
    rois = _rois(rng, 256, 2, 200.0).astype(dtype)
    roi_offset = rng.uniform(-1, 1, (256, 2, 7, 7)).astype(dtype)
    roi_grad = rng.standard_normal((256, 64, 7, 7)).astype(dtype)

    def roi() -> list[np.ndarray]:
        return list(emulated.deform_roi_pool_backward(roi_grad, feat, rois, roi_offset, ROI))

    ps_feat = rng.standard_normal((2, 8 * 49, 50, 50)).astype(dtype)
    trans = rng.uniform(-1, 1, (256, 2, 7, 7)).astype(dtype)
    ps_grad = rng.standard_normal((256, 8, 7, 7)).astype(dtype)

    def psroi() -> list[np.ndarray]:
        return list(emulated.deform_psroi_pool_backward(ps_grad, ps_feat, rois, trans, PSROI))

    return {
        "deform_conv2d": (f"{b}x{c}x{h}x{h}, 3x3", conv, 9 * 4 * c),
        "deform_roi_pool": ("256 RoIs x 64 ch, 7x7, ratio 2", roi, 256 * 4 * 4),
        "deform_psroi_pool": ("256 RoIs x 8 x 7x7, 2x2 samples", psroi, 256 * 4 * 4),
    }


def check(name: str, run: Callable[[], list[np.ndarray]], terms: int, dtype) -> None:
    """Deterministic twice: the same bits; against the atomic sums: within their order bound."""
    with cudcn.deterministic():
        first, second = run(), run()
    atomic = run()
    for a, b, c in zip(first, second, atomic, strict=True):
        if a.tobytes() != b.tobytes():
            raise SystemExit(f"{name}: deterministic mode gave different bits twice")
        a, c = a.astype(np.float64), c.astype(np.float64)
        scale = np.abs(c).max() + 1.0
        if cudcn.dtypes.is_half_dtype(dtype):  # float32 sums, each rounded once: an ulp apart more
            order = summation_order_tolerance(np.float32, scale, terms)
            allowed = order + cudcn.dtypes.eps(dtype) * (np.abs(c) + order)
        else:
            allowed = summation_order_tolerance(dtype, scale, terms)
        diff = np.abs(a - c)
        if not (diff <= allowed).all():
            raise SystemExit(f"{name}: the modes differ by {diff.max():.3g}, beyond the bound")


def time_modes(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median ms of ``run`` with atomics and in deterministic mode, taking turns."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for det in (False, True):
            with cudcn.deterministic(det):
                t = time.perf_counter()
                run()
                times[det].append(time.perf_counter() - t)
    return statistics.median(times[False]) * 1e3, statistics.median(times[True]) * 1e3


def sort_by_destination(grad, x, offset, weight, mask) -> tuple[np.ndarray, dict[str, float]]:
    """The other deterministic design, for the conv input gradient: every contribution written as a
    (destination, value) pair in a fixed slot, a stable sort by destination, then one sum per
    destination in slot order. A float32 NumPy prototype on the host (3x3, stride 1, padding 1, one
    group): returns the input gradient and ms per phase, plus the pairs' count and MiB."""
    t0 = time.perf_counter()
    batch, channels, height, width = x.shape
    gcol = np.einsum("ock,bohw->bckhw", weight.reshape(channels, channels, 9), grad)
    oy = np.arange(height, dtype=np.float32)[:, None]
    ox = np.arange(width, dtype=np.float32)[None, :]
    plane = (np.arange(batch)[:, None] * channels + np.arange(channels)[None, :]) * height
    keys, values = [], []
    for k in range(9):
        y = oy - 1 + k // 3 + offset[:, 2 * k]  # (B, H_out, W_out)
        xx = ox - 1 + k % 3 + offset[:, 2 * k + 1]
        for corner in reference.bilinear_corners(y, xx, height, width):
            dest = (plane[:, :, None, None] + corner.row[:, None]) * width + corner.col[:, None]
            value = gcol[:, :, k] * (corner.w * mask[:, k])[:, None]
            keep = np.broadcast_to(corner.ok[:, None], dest.shape)
            keys.append(dest[keep].astype(np.int32))
            values.append(value[keep].astype(np.float32))
    keys, values = np.concatenate(keys), np.concatenate(values)
    t1 = time.perf_counter()
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    t2 = time.perf_counter()
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    g_input = np.zeros(x.size, np.float32)
    g_input[keys[starts]] = np.add.reduceat(values, starts)
    t3 = time.perf_counter()
    mib = (keys.nbytes + values.nbytes + order.nbytes) / 2**20
    phases = {"pairs": (t1 - t0) * 1e3, "sort": (t2 - t1) * 1e3, "reduce": (t3 - t2) * 1e3}
    return g_input.reshape(x.shape), phases | {"count": float(keys.size), "MiB": mib}


def compare_designs(repeats: int) -> None:
    """Fixed point (the emulated kernels) against the sort prototype, conv input gradient, float32."""
    grad, x, offset, weight, mask = conv_inputs(np.float32)
    with cudcn.deterministic():
        fixed = emulated.deform_conv2d_backward(grad, x, offset, weight, None, mask, CONV)[0]
    runs = [sort_by_destination(grad, x, offset, weight, mask) for _ in range(repeats)]
    sorted_sum, _ = runs[0]
    bound = summation_order_tolerance(np.float32, np.abs(fixed).max() + 1.0, 9 * 4 * x.shape[1])
    diff = float(np.abs(sorted_sum.astype(np.float64) - fixed).max())
    if not diff <= bound:
        raise SystemExit(f"the sort prototype differs from the fixed-point sums by {diff:.3g}")
    med = {k: statistics.median(r[1][k] for r in runs) for k in runs[0][1]}
    print(
        f"\nsort-by-destination prototype, conv input gradient {tuple(x.shape)}, float32: "
        f"{int(med['count'])} pairs ({med['MiB']:.0f} MiB with the sort's index), making them "
        f"{med['pairs']:.1f} ms, stable sort {med['sort']:.1f} ms, segmented sums "
        f"{med['reduce']:.1f} ms (medians of {repeats}); equals the fixed-point sums within "
        f"{diff:.2g} (bound {bound:.2g}). The fixed-point path's extra memory: a record of four "
        f"int64 words per input element, {x.size * 32 / 2**20:.1f} MiB."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "float16"],
        choices=["float64", "float32", "float16", "bfloat16"],
    )
    args = parser.parse_args()
    mode = os.environ.get("CUDCN_EMULATED_MODE", "auto")
    print(
        f"emulated backend, CUDCN_EMULATED_MODE={mode}; load average "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print(f"{'op':<18}{'dtype':<10}{'shape':<34}{'atomic ms':>10}{'determ. ms':>11}{'ratio':>7}")
    for name in ("float64", "float32", "float16", "bfloat16"):
        if name not in args.dtypes:
            continue
        dtype = cudcn.dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)
        for op, (shape, run, terms) in cases(dtype).items():
            check(op, run, terms, dtype)
            atomic, det = time_modes(run, args.repeats)
            print(f"{op:<18}{name:<10}{shape:<34}{atomic:10.1f}{det:11.1f}{det / atomic:7.2f}")
    compare_designs(max(3, args.repeats // 3))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
