"""A PyTorch multi-scale deformable attention, written for the tests from the published definition
(Deformable DETR's equations; mmcv's parameter names and layout), on ``torch.nn.functional.
grid_sample``. Imported only where torch is installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_sample_msda(value, shapes, locations, weights):
    """value (N, S, M, D), locations (N, Q, M, L, P, 2) normalised (x, y), weights (N, Q, M, L, P)
    -> (N, Q, M·D): per level, ``grid_sample`` of the (N·M, D, H, W) planes at ``2·loc − 1``."""
    n, _, m, d = value.shape
    q, points = locations.shape[1], locations.shape[4]
    total = 0
    start = 0
    for level, (h, w) in enumerate(shapes):
        planes = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        grid = 2 * locations[:, :, :, level] - 1  # (N, Q, M, P, 2)
        grid = grid.permute(0, 2, 1, 3, 4).reshape(n * m, q, points, 2)
        samples = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        lw = weights[:, :, :, level].permute(0, 2, 1, 3).reshape(n * m, 1, q, points)
        total = total + (samples * lw).sum(-1)  # (N·M, D, Q)
        start += h * w
    return total.reshape(n, m, d, q).permute(0, 3, 1, 2).reshape(n, q, m * d)


class TorchMSDA(torch.nn.Module):
    """Batch-first attention with mmcv's four Linear layers; ``forward(query, value,
    reference_points, shapes, key_padding_mask)`` returns ``output_proj(...) + query``."""

    def __init__(self, embed_dims: int, heads: int, levels: int, points: int) -> None:
        super().__init__()
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = torch.nn.Linear(embed_dims, heads * levels * points * 2)
        self.attention_weights = torch.nn.Linear(embed_dims, heads * levels * points)
        self.value_proj = torch.nn.Linear(embed_dims, embed_dims)
        self.output_proj = torch.nn.Linear(embed_dims, embed_dims)

    def forward(self, query, value, reference_points, shapes, key_padding_mask=None):
        bs, nq, _ = query.shape
        m, lv, p = self.heads, self.levels, self.points
        v = self.value_proj(value)
        if key_padding_mask is not None:
            v = v.masked_fill(key_padding_mask[..., None], 0.0)
        v = v.view(bs, value.shape[1], m, -1)
        offsets = self.sampling_offsets(query).view(bs, nq, m, lv, p, 2)
        weights = self.attention_weights(query).view(bs, nq, m, lv * p).softmax(-1).view(bs, nq, m, lv, p)
        ref = reference_points[:, :, None, :, None, :]
        if reference_points.shape[-1] == 2:
            size = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype)
            locations = ref + offsets / size[:, None, :]
        else:
            locations = ref[..., :2] + offsets / p * ref[..., 2:] * 0.5
        return self.output_proj(grid_sample_msda(v, shapes, locations, weights)) + query
