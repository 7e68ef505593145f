"""``cudcn bench``: a compact deform_conv2d timing table that runs from an installed wheel.

float32, 3x3 kernel, padding 1, with mask and bias, offsets uniform in [-2, 2]. Times are medians in
milliseconds after warm-up calls (which include Numba's compilation on a first run); ``fwd+bwd`` is one
forward plus one backward giving every gradient. Columns:

* cudcn CPU — ``cudcn.ops.deform_conv2d_forward`` / ``_backward`` on NumPy arrays (Numba backend);
* torchvision CPU — ``torchvision.ops.deform_conv2d`` and ``torch.autograd.grad``, when torch and
  torchvision import (never required);
* cudcn CUDA — the same calls on CuPy arrays, when CuPy sees a GPU (synchronised around each call).

The fuller scripts live in the repository's ``benchmarks/`` folder.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cudcn.ops import deform_conv2d_backward, deform_conv2d_forward

SHAPES = ((8, 32, 32, 28, 28), (2, 64, 64, 56, 56))  # (B, C_in, C_out, H, W)
QUICK_SHAPES = ((2, 16, 16, 14, 14),)
NAMES = ("input", "offset", "weight", "bias", "mask")


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def make_inputs(shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 inputs of deform_conv2d for (B, C_in, C_out, H, W), 3x3, padding 1."""
    b, cin, cout, h, w = shape
    rng = np.random.default_rng(seed)
    return {
        "input": rng.standard_normal((b, cin, h, w), dtype=np.float32),
        "offset": rng.uniform(-2, 2, (b, 18, h, w)).astype(np.float32),
        "weight": rng.standard_normal((cout, cin, 3, 3), dtype=np.float32) / float(np.sqrt(9 * cin)),
        "bias": rng.standard_normal(cout, dtype=np.float32),
        "mask": rng.uniform(0, 1, (b, 9, h, w)).astype(np.float32),
    }


def _cudcn_pair(a: dict[str, Any], sync: Callable[[], None]) -> tuple[Callable, Callable]:
    args = (a["input"], a["offset"], a["weight"], a["bias"])

    def forward() -> Any:
        out = deform_conv2d_forward(*args, padding=1, mask=a["mask"])
        sync()
        return out

    grad = forward()

    def both() -> None:
        deform_conv2d_forward(*args, padding=1, mask=a["mask"])
        deform_conv2d_backward(grad, *args, padding=1, mask=a["mask"])
        sync()

    return forward, both


def _torchvision_pair(a: dict[str, np.ndarray]) -> tuple[Callable, Callable] | None:
    try:
        import torch
        from torchvision.ops import deform_conv2d
    except ImportError:
        return None
    t = {k: torch.from_numpy(v).requires_grad_() for k, v in a.items()}

    def forward() -> Any:
        with torch.no_grad():
            return deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], padding=1, mask=t["mask"])

    def both() -> None:
        out = deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], padding=1, mask=t["mask"])
        torch.autograd.grad(out, list(t.values()), torch.ones_like(out))

    return forward, both


def _cuda_module() -> Any:
    from cudcn.check import cuda_device

    if not cuda_device()[0]:
        return None
    import cupy

    return cupy


def rows(quick: bool = False) -> list[dict[str, Any]]:
    """One dict per shape: the shape and the median ms of each available column."""
    repeats = 1 if quick else 5
    cupy = _cuda_module()
    table = []
    for shape in QUICK_SHAPES if quick else SHAPES:
        a = make_inputs(shape)
        row: dict[str, Any] = {"shape": shape}
        fwd, both = _cudcn_pair(a, lambda: None)
        row["cudcn cpu"] = (median_ms(fwd, repeats), median_ms(both, repeats))
        pair = _torchvision_pair(a)
        if pair is not None:
            row["torchvision cpu"] = tuple(median_ms(f, repeats) for f in pair)
        if cupy is not None:
            device = {k: cupy.asarray(v) for k, v in a.items()}
            fwd, both = _cudcn_pair(device, cupy.cuda.Device().synchronize)
            row["cudcn cuda"] = (median_ms(fwd, repeats * 4), median_ms(both, repeats * 4))
        table.append(row)
    return table


def format_table(table: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: one row per shape, fwd and fwd+bwd per column."""
    columns = [k for k in table[0] if k != "shape"]
    head = "| B, C_in, C_out, H, W | " + " | ".join(f"{c} fwd | {c} fwd+bwd" for c in columns) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(columns))]
    for row in table:
        cells = " | ".join(f"{row[c][0]:.2f} | {row[c][1]:.2f}" for c in columns)
        lines.append(f"| {', '.join(map(str, row['shape']))} | {cells} |")
    return lines


def main(quick: bool = False) -> None:
    """Print the table (milliseconds, median)."""
    import numba

    print(
        f"deform_conv2d, float32, 3x3, padding 1, mask and bias; median ms "
        f"({'1 call' if quick else '5 calls'} after 2 warm-up calls); Numba threads "
        f"{numba.get_num_threads()}"
    )
    table = rows(quick)
    for line in format_table(table):
        print(line)
    if "torchvision cpu" not in table[0]:
        print("(torchvision column skipped: torch/torchvision not installed)")
