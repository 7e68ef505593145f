"""The PyTorch peer of ms_deform_attn: ``torch.nn.functional.grid_sample`` per level, weighted and
summed (the composition Deformable DETR and mmcv run on the CPU). Used by the ``torch``-marked test
and by ``benchmarks/bench_ms_deform_attn_cpu.py``; needs torch, which cudcn never imports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def grid_sample_ms_deform_attn(
    value: Any, spatial_shapes: Sequence[tuple[int, int]], locations: Any, weights: Any
) -> Any:
    """Torch tensors value (N, S, M, D), locations (N, Lq, M, L, P, 2) normalised (x, y), weights
    (N, Lq, M, L, P) -> (N, Lq, M·D): level l sampled by ``grid_sample(value_l, 2·loc − 1,
    "bilinear", "zeros", align_corners=False)`` with value_l (N·M, D, H_l, W_l)."""
    import torch
    import torch.nn.functional as F

    n, _, heads, d = value.shape
    _, lq, _, levels, points, _ = locations.shape
    grid = 2 * locations - 1
    samples = []
    start = 0
    for l, (h, w) in enumerate(spatial_shapes):
        level = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(n * heads, d, h, w)
        level_grid = grid[:, :, :, l].transpose(1, 2).reshape(n * heads, lq, points, 2)
        samples.append(
            F.grid_sample(level, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (N·M, D, Lq, P)
        start += h * w
    stacked = torch.stack(samples, dim=3)  # (N·M, D, Lq, L, P)
    w = weights.transpose(1, 2).reshape(n * heads, 1, lq, levels, points)
    out = (stacked * w).sum(dim=(3, 4))  # (N·M, D, Lq)
    return out.reshape(n, heads * d, lq).transpose(1, 2)
