"""CPU benchmark of deform_roi_pool / roi_align and deform_psroi_pool against torchvision.

Run from the repository root in a default environment (no thread variables set by hand), with a
Python that has cudcn and, for the torchvision rows, torch and torchvision installed::

    pip install -e . torch torchvision
    python benchmarks/bench_roi_pool.py --repeats 10

Without torch or torchvision only cudcn's rows are printed.

Detection-head sizes: 512 RoIs on a 2 x C x 64 x 64 float32 feature map, spatial_scale 1/16 (RoIs
of 16 to 400 image pixels, some crossing the border), 7 x 7 bins.

* RoIAlign, C = 256, sampling_ratio 2: cudcn's ``roi_align`` (no offset, aligned=True) and
  ``deform_roi_pool`` (with offset), against ``torchvision.ops.roi_align`` (aligned=True).
* R-FCN, output_dim 21, group_size 7, 1029 input channels, sample_per_part 4: cudcn's
  ``deform_psroi_pool`` without and with ``trans``; torchvision's ``ps_roi_align`` (sampling 4, no
  deformation, different sample placement) as a yardstick only.

Times are medians (ms) over ``--repeats`` runs after warm-up, through the array-level ops (CPU
backend). ``fwd+bwd`` is one forward plus one backward giving every gradient (input, and offset /
trans when given); torch's backward is ``out.backward(grad)`` with the input requiring grad.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable

import numpy as np

from cudcn.ops import (
    deform_psroi_pool_backward,
    deform_psroi_pool_forward,
    deform_roi_pool_backward,
    deform_roi_pool_forward,
)

BATCH, SIZE, N_ROIS, POOLED, SCALE = 2, 64, 512, 7, 1 / 16
PSROI = {
    "spatial_scale": SCALE,
    "output_dim": 21,
    "group_size": 7,
    "pooled_size": POOLED,
    "sample_per_part": 4,
    "trans_std": 0.1,
}


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def make_rois(rng: np.random.Generator) -> np.ndarray:
    image = SIZE / SCALE
    xy = rng.uniform(-0.05 * image, 0.95 * image, (N_ROIS, 2))
    wh = rng.uniform(16, 400, (N_ROIS, 2))
    index = np.arange(N_ROIS) % BATCH
    return np.column_stack([index, xy, xy + wh]).astype(np.float32)


def fwd_and_fwd_bwd(
    forward: Callable[[], np.ndarray], backward: Callable[[np.ndarray], object], repeats: int
) -> tuple[float, float]:
    def both():
        backward(forward())

    return median_ms(forward, repeats), median_ms(both, repeats)


def bench_roi_align(rng: np.random.Generator, repeats: int, torch_rows: bool) -> list[tuple]:
    x = rng.standard_normal((BATCH, 256, SIZE, SIZE), dtype=np.float32)
    rois = make_rois(rng)
    offset = rng.uniform(-0.5, 0.5, (N_ROIS, 2, POOLED, POOLED)).astype(np.float32)
    rows = []
    for name, off in (("cudcn roi_align (no offset)", None), ("cudcn deform_roi_pool", offset)):
        args = (x, rois, off, POOLED, SCALE, 2)
        rows.append(
            (
                name,
                *fwd_and_fwd_bwd(
                    lambda a=args: deform_roi_pool_forward(*a),
                    lambda g, a=args: deform_roi_pool_backward(g, *a),
                    repeats,
                ),
            )
        )
    if torch_rows:
        import torch
        from torchvision.ops import roi_align

        xt, rt = torch.from_numpy(x), torch.from_numpy(rois)
        leaf = xt.clone().requires_grad_()
        with torch.no_grad():
            fwd = median_ms(lambda: roi_align(xt, rt, POOLED, SCALE, 2, True), repeats)

        def both():
            out = roi_align(leaf, rt, POOLED, SCALE, 2, True)
            out.backward(torch.ones_like(out))

        rows.append(("torchvision roi_align", fwd, median_ms(both, repeats)))
    return rows


def bench_psroi(rng: np.random.Generator, repeats: int, torch_rows: bool) -> list[tuple]:
    x = rng.standard_normal((BATCH, 21 * 49, SIZE, SIZE), dtype=np.float32)
    rois = make_rois(rng)
    trans = rng.uniform(-0.5, 0.5, (N_ROIS, 2, POOLED, POOLED)).astype(np.float32)
    rows = []
    for name, tr in (
        ("cudcn deform_psroi_pool (no trans)", None),
        ("cudcn deform_psroi_pool (trans)", trans),
    ):
        rows.append(
            (
                name,
                *fwd_and_fwd_bwd(
                    lambda t=tr: deform_psroi_pool_forward(x, rois, t, **PSROI),
                    lambda g, t=tr: deform_psroi_pool_backward(g, x, rois, t, **PSROI),
                    repeats,
                ),
            )
        )
    if torch_rows:
        import torch
        from torchvision.ops import ps_roi_align

        xt, rt = torch.from_numpy(x), torch.from_numpy(rois)
        leaf = xt.clone().requires_grad_()
        with torch.no_grad():
            fwd = median_ms(lambda: ps_roi_align(xt, rt, POOLED, SCALE, 4), repeats)

        def both():
            out = ps_roi_align(leaf, rt, POOLED, SCALE, 4)
            out.backward(torch.ones_like(out))

        rows.append(("torchvision ps_roi_align (yardstick)", fwd, median_ms(both, repeats)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch_rows = all(importlib.util.find_spec(m) for m in ("torch", "torchvision"))
    rng = np.random.default_rng(0)
    print(f"{'op (512 RoIs, 7x7, 2x64x64 map, float32)':<40} {'fwd ms':>8} {'fwd+bwd ms':>11}")
    for title, bench in (
        ("RoIAlign, C=256, sampling 2", bench_roi_align),
        ("R-FCN, 1029 channels, output_dim 21, group 7", bench_psroi),
    ):
        print(f"-- {title}")
        for name, fwd, fb in bench(rng, args.repeats, torch_rows):
            print(f"{name:<40} {fwd:8.2f} {fb:11.2f}", flush=True)


if __name__ == "__main__":
    main()
