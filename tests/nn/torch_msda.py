"""A PyTorch multi-scale deformable attention module, written for the tests from the published
definition (Deformable DETR's equations; mmcv's parameter names and layout), on the op's
``grid_sample`` peer (tests/ops/ms_deform_attn/torch_peer.py). Imported only where torch is installed.
"""

from __future__ import annotations

import torch

from tests.ops.ms_deform_attn.torch_peer import grid_sample_ms_deform_attn


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
        return self.output_proj(grid_sample_ms_deform_attn(v, shapes, locations, weights)) + query
