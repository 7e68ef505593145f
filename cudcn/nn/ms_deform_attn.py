"""Multi-scale deformable attention, the layer: mmcv's ``MultiScaleDeformableAttention`` (the
attention of Deformable DETR's encoder and decoder) with mmcv's names, shapes and initialisation, so
an mmcv or Deformable DETR checkpoint loads with ``load_state_dict`` after a NumPy conversion.

Parameters (C = embed_dims, M heads, L levels, P points, C_v = C · value_proj_ratio):

| name | shape |
|---|---|
| sampling_offsets.weight, .bias | (M·L·P·2, C), (M·L·P·2,) |
| attention_weights.weight, .bias | (M·L·P, C), (M·L·P,) |
| value_proj.weight, .bias | (C_v, C), (C_v,) |
| output_proj.weight, .bias | (C, C_v), (C,) |

Deformable DETR's ``MSDeformAttn`` has the same four Linear layers under the same names; its forward
returns ``output_proj(...)`` without the dropout and the residual this layer adds (pass
``identity=0`` and ``dropout=0`` to get it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cudcn.arrays import Array, array_module
from cudcn.autograd import Tensor, cast, exp, reshape, transpose
from cudcn.functional import log_softmax, ms_deform_attn
from cudcn.nn import init
from cudcn.nn.layers import Dropout, Linear
from cudcn.nn.module import Module
from cudcn.ops._checks import positive_int
from cudcn.ops.ms_deform_attn import host_ints

__all__ = ["MultiScaleDeformableAttention"]


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in getattr(x, "shape", ()))


class MultiScaleDeformableAttention(Module):
    """mmcv's ``MultiScaleDeformableAttention``: each query attends, per head, to ``num_points``
    points on each of ``num_levels`` feature levels, placed around its reference point by offsets
    predicted from the query, with softmax weights over the ``num_levels · num_points`` points.

    Args:
        embed_dims: C, the channels of query and value; divisible by ``num_heads``.
        num_heads: M.
        num_levels: L, the number of feature levels in ``value``.
        num_points: P, sampling points per head and level.
        im2col_step: accepted for mmcv's signature and ignored (cudcn's kernels have no im2col step).
        dropout: probability of the Dropout on the attention's output (before the residual).
        batch_first: query, value and the output are (bs, n, C) when True, (n, bs, C) otherwise
            (mmcv's default).
        value_proj_ratio: ``value_proj`` maps C to ``int(C · value_proj_ratio)`` channels, split
            into M heads.
        rng: generator for the initial weights and the dropout masks (default:
            :func:`cudcn.nn.init.default_rng`).

    Initialisation (mmcv's ``init_weights``, Deformable DETR's ``_reset_parameters``):
    ``sampling_offsets.weight`` 0, its bias a grid: head m points in direction
    ``θ_m = 2πm / M``, ``(cos θ_m, sin θ_m)`` scaled so its larger component is ±1, times ``p + 1``
    for point p, the same on every level; ``attention_weights`` 0 (uniform attention);
    ``value_proj`` and ``output_proj`` Xavier-uniform weights and zero biases.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        im2col_step: int = 64,
        dropout: float = 0.1,
        batch_first: bool = False,
        value_proj_ratio: float = 1.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.embed_dims = positive_int("embed_dims", embed_dims)
        self.num_heads = positive_int("num_heads", num_heads)
        self.num_levels = positive_int("num_levels", num_levels)
        self.num_points = positive_int("num_points", num_points)
        value_dims = int(embed_dims * value_proj_ratio)
        if embed_dims % num_heads or value_dims < 1 or value_dims % num_heads:
            raise ValueError(
                f"embed_dims ({embed_dims}) and embed_dims * value_proj_ratio ({value_dims}) must be "
                f"positive multiples of num_heads ({num_heads})"
            )
        self.im2col_step, self.batch_first, self.value_dims = im2col_step, bool(batch_first), value_dims
        self.dropout = Dropout(dropout, rng)
        points = num_heads * num_levels * num_points
        self.sampling_offsets = Linear(embed_dims, points * 2, rng=rng)
        self.attention_weights = Linear(embed_dims, points, rng=rng)
        self.value_proj = Linear(embed_dims, value_dims, rng=rng)
        self.output_proj = Linear(value_dims, embed_dims, rng=rng)
        self.init_weights(rng)

    def init_weights(self, rng: np.random.Generator | None = None) -> None:
        """mmcv's initialisation (see the class docstring)."""
        init.zeros_(self.sampling_offsets.weight)
        # in float32, as mmcv computes it (so cos(π/2) is float32's -4.4e-8, not 0)
        theta = np.arange(self.num_heads, dtype=np.float32) * np.float32(2.0 * math.pi / self.num_heads)
        grid = np.stack([np.cos(theta), np.sin(theta)], axis=-1)  # (M, 2)
        grid = grid / np.abs(grid).max(axis=-1, keepdims=True)
        scale = np.arange(1, self.num_points + 1, dtype=np.float32).reshape(1, 1, -1, 1)  # p + 1
        shape = (self.num_heads, self.num_levels, self.num_points, 2)
        bias = np.broadcast_to(grid[:, None, None, :] * scale, shape)
        init._fill(self.sampling_offsets.bias, bias.reshape(-1))
        init.zeros_(self.attention_weights.weight)
        init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            init.xavier_uniform_(layer.weight, rng=rng)
            init.zeros_(layer.bias)

    def forward(
        self,
        query: Array,
        key: Array | None = None,
        value: Array | None = None,
        identity: Array | None = None,
        query_pos: Array | None = None,
        key_padding_mask: Array | None = None,
        reference_points: Array | None = None,
        spatial_shapes: Any = None,
        level_start_index: Any = None,
    ) -> Array:
        """Attend from ``query`` to the levels in ``value``.

        Args (bs batch, nq queries, S = Σ_l H_l·W_l value rows; (bs, n, C) with ``batch_first``,
        else (n, bs, C)):
            query: (nq, bs, C).
            key: unused (mmcv's signature).
            value: (S, bs, C), the levels flattened row-major and concatenated; default ``query``.
            identity: added to the output, shaped as ``query``; default ``query`` (before
                ``query_pos``).
            query_pos: added to ``query`` before the offsets and weights are predicted, or None.
            key_padding_mask: (bs, S) booleans, True where ``value`` is padding; those rows of the
                projected value are multiplied by 0 (mmcv fills them with 0: the same except where
                the projection is not finite).
            reference_points: (bs, nq, L, 2) normalised (x, y) in [0, 1] per level, (0, 0) the
                top-left corner; or (bs, nq, L, 4) boxes (cx, cy, w, h).
            spatial_shapes: (L, 2) integers (H_l, W_l): an integer array or a sequence of ints.
            level_start_index: (L,) integers, checked against ``spatial_shapes``; default their
                running sum.

        Returns:
            (nq, bs, C): ``dropout(output_proj(attention)) + identity``. The sampling locations
            are ``ref + offset / (W_l, H_l)`` for points, ``ref[:2] + offset / P · ref[2:] · 0.5``
            for boxes, sampled with :func:`cudcn.functional.ms_deform_attn`.
        """
        value = query if value is None else value
        identity = query if identity is None else identity
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query, value = transpose(query, (1, 0, 2)), transpose(value, (1, 0, 2))
        shapes, starts = self._check(query, value, reference_points, spatial_shapes, level_start_index)
        bs, nq, _ = _shape(query)
        nv = _shape(value)[1]
        m, levels, p = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value)
        if key_padding_mask is not None:
            keep = 1 - cast(key_padding_mask, value.dtype)
            value = value * reshape(keep, (bs, nv, 1))
        value = reshape(value, (bs, nv, m, self.value_dims // m))
        offsets = reshape(self.sampling_offsets(query), (bs, nq, m, levels, p, 2))
        logits = reshape(self.attention_weights(query), (bs, nq, m, levels * p))
        weights = reshape(exp(log_softmax(logits, -1)), (bs, nq, m, levels, p))
        locations = self._locations(reference_points, offsets, shapes)
        out = ms_deform_attn(value, shapes, starts, locations, weights)
        out = self.output_proj(out)
        if not self.batch_first:
            out = transpose(out, (1, 0, 2))
        return self.dropout(out) + identity

    def _locations(self, reference_points: Any, offsets: Any, shapes: list[list[int]]) -> Any:
        """(bs, nq, M, L, P, 2) normalised sampling locations (see ``forward``)."""
        bs, nq, levels, corners = _shape(reference_points)
        dtype = offsets.dtype
        if reference_points.dtype != dtype:
            reference_points = cast(reference_points, dtype)
        if corners == 2:
            xp = array_module(offsets.data if isinstance(offsets, Tensor) else offsets)
            size = xp.asarray(np.array([[w, h] for h, w in shapes], dtype=dtype).reshape(levels, 1, 2))
            return reshape(reference_points, (bs, nq, 1, levels, 1, 2)) + offsets / size
        centre = reshape(reference_points[..., :2], (bs, nq, 1, levels, 1, 2))
        size = reshape(reference_points[..., 2:], (bs, nq, 1, levels, 1, 2))
        return centre + offsets / self.num_points * size * 0.5

    def _check(
        self, query: Any, value: Any, reference_points: Any, spatial_shapes: Any, level_start_index: Any
    ) -> tuple[list[list[int]], list[int]]:
        """Validate the shapes (query and value batch first); return the levels as lists of ints."""
        c, levels = self.embed_dims, self.num_levels
        q, v = _shape(query), _shape(value)
        order = "(bs, n, C)" if self.batch_first else "(n, bs, C)"
        for name, s in (("query", q), ("value", v)):
            if len(s) != 3 or s[2] != c:
                raise ValueError(f"{name} must be {order} with C = embed_dims = {c}, got shape {s}")
        if v[0] != q[0]:
            raise ValueError(f"query and value must have the same batch size, got shapes {q} and {v}")
        if spatial_shapes is None or reference_points is None:
            raise ValueError("reference_points and spatial_shapes are required")
        like = value.data if isinstance(value, Tensor) else value
        shapes = host_ints("spatial_shapes", spatial_shapes, like, "(L, 2)")
        if shapes.shape != (levels, 2):
            raise ValueError(
                f"spatial_shapes must be (num_levels = {levels}, 2) rows (H_l, W_l), got shape {shapes.shape}"
            )
        if level_start_index is None:
            starts = np.concatenate(([0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]))
        else:
            starts = host_ints("level_start_index", level_start_index, like, "(L,)")
        r = _shape(reference_points)
        if len(r) != 4 or r[:3] != (q[0], q[1], levels) or r[3] not in (2, 4):
            raise ValueError(
                f"reference_points must be (bs, num_query, num_levels, 2 or 4) = ({q[0]}, {q[1]}, "
                f"{levels}, 2 or 4), got shape {r}"
            )
        return shapes.tolist(), starts.tolist()

    def extra_repr(self) -> str:
        return (
            f"embed_dims={self.embed_dims}, num_heads={self.num_heads}, num_levels={self.num_levels}, "
            f"num_points={self.num_points}, batch_first={self.batch_first}"
        )
