"""ms_deform_attn: multi-scale deformable attention (Deformable DETR), and the deformable-aggregation
core it shares with dcnv3 / dcnv4.

The core gathers a value map bilinearly at data-dependent points and sums the samples with per-point
weights: for batch n, query q and head (group) m, ``out[n, q, m, :] = Σ_{l,p} weights[n, q, m, l, p]
· sample(value[n, level l, m, :], y, x)``. :class:`MSDeformAttnParams` describes the levels and how
locations are given (normalised (x, y) in [0, 1] as in Deformable DETR, or pixel units as dcnv3
computes them); :func:`aggregate_forward` / :func:`aggregate_backward` run the core on the backend the
arrays select, on arrays shaped as the kernels take them:

| array | shape |
|---|---|
| value | (N, S, M, D), S = Σ_l H_l·W_l, level l at rows ``starts[l] .. starts[l] + H_l·W_l`` |
| locations | (N, Q, M, L, P, 2) (x, y), float32 when ``value`` is 16-bit (positions in float32) |
| weights | (N, Q, M, L, P), value's dtype |
| out | (N, Q, M, D) |

Three layers as for every op: the backends (``cudcn.backends.*``), the array-level pair
:func:`ms_deform_attn_forward` / :func:`ms_deform_attn_backward`, and the differentiable
:func:`ms_deform_attn` (re-exported by ``cudcn.functional``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from cudcn.arrays import Array, is_cupy_array
from cudcn.autograd import Function
from cudcn.backends import array_module, get_backend, new_output
from cudcn.dtypes import compute_dtype
from cudcn.ops._checks import check_arrays, check_ndim, check_shape, contiguous


def host_ints(name: str, a: Any, like: Array, shape: str) -> np.ndarray:
    """An integer argument (``spatial_shapes``, ``level_start_index``) as a host int64 array: a NumPy
    or CuPy integer array of ``like``'s library (one small device-to-host copy for CuPy), or a
    sequence of Python ints. Anything else is a TypeError naming the argument."""
    if isinstance(a, np.ndarray) or is_cupy_array(a):
        if is_cupy_array(a) != is_cupy_array(like):
            kind, other = ("cupy", "numpy") if is_cupy_array(a) else ("numpy", "cupy")
            raise TypeError(
                f"{name} is a {kind} array but value is a {other} array; all arrays of one call must "
                "come from the same library"
            )
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{name} must have an integer dtype {shape}, got {a.dtype}")
        return np.asarray(a.get() if is_cupy_array(a) else a, dtype=np.int64)
    items = np.asarray(a, dtype=object) if isinstance(a, (list, tuple)) else None
    if items is None or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items.ravel()
    ):
        raise TypeError(f"{name} must be an integer array or a sequence of ints {shape}, got {a!r}")
    return items.astype(np.int64)


@dataclass(frozen=True)
class MSDeformAttnParams:
    """The levels of one deformable aggregation, validated against its arrays; passed unchanged, as
    the last argument, to the reference, the CPU backend and the launch code.

    ``levels[l] = (H_l, W_l)``; ``starts[l]`` is level l's first row of ``value`` (S axis).
    ``normalized``: locations are Deformable DETR's normalised (x, y), sampled at
    ``x = loc_x·W_l − 0.5``, ``y = loc_y·H_l − 0.5``; otherwise they are pixel coordinates already.
    """

    levels: tuple[tuple[int, int], ...]
    starts: tuple[int, ...]
    normalized: bool = True

    def level_table(self) -> np.ndarray:
        """(L, 3) int32 rows ``(H_l, W_l, starts[l])``: what the kernels read per level."""
        rows = [(h, w, s) for (h, w), s in zip(self.levels, self.starts, strict=True)]
        return np.array(rows, dtype=np.int32).reshape(len(rows), 3)

    @classmethod
    def check(
        cls,
        value: Array,
        spatial_shapes: Any,
        level_start_index: Any,
        sampling_locations: Array,
        attention_weights: Array,
    ) -> MSDeformAttnParams:
        """Validate the arguments of ms_deform_attn (docs/spec.md) and return its parameters."""
        arrays = {"value": value, "sampling_locations": sampling_locations}
        check_arrays({**arrays, "attention_weights": attention_weights})
        check_ndim("value", value, 4, "(N, S, M, D)")
        n, s, m, _ = (int(v) for v in value.shape)
        shapes = host_ints("spatial_shapes", spatial_shapes, value, "(L, 2)")
        if shapes.ndim != 2 or shapes.shape[1] != 2 or shapes.shape[0] < 1:
            raise ValueError(
                f"spatial_shapes must be (L, 2) rows (H_l, W_l), L >= 1, got shape {shapes.shape}"
            )
        if (shapes < 1).any() or (shapes > np.iinfo(np.int32).max).any():
            raise ValueError(f"spatial_shapes must hold sizes >= 1 (and < 2**31), got {shapes.tolist()}")
        starts = host_ints("level_start_index", level_start_index, value, "(L,)")
        levels = shapes.shape[0]
        expected = np.concatenate(([0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]))
        if starts.shape != (levels,) or (starts != expected).any():
            raise ValueError(
                f"level_start_index must be {expected.tolist()} (the running sum of H_l·W_l over "
                f"spatial_shapes), got {starts.tolist()}"
            )
        total = int((shapes[:, 0] * shapes[:, 1]).sum())
        if s != total:
            raise ValueError(
                f"value must have S = Σ H_l·W_l = {total} rows (spatial_shapes {shapes.tolist()}), "
                f"got shape {tuple(value.shape)}"
            )
        layout = "(N, Lq, M, L, P, 2)"
        check_ndim("sampling_locations", sampling_locations, 6, layout)
        lq, points = int(sampling_locations.shape[1]), int(sampling_locations.shape[4])
        check_shape(
            "sampling_locations",
            sampling_locations,
            (n, lq, m, levels, points, 2),
            f"{layout}: N, M from value, L from spatial_shapes, (x, y) last",
        )
        check_shape(
            "attention_weights",
            attention_weights,
            (n, lq, m, levels, points),
            "(N, Lq, M, L, P) as sampling_locations",
        )
        return cls(tuple((int(h), int(w)) for h, w in shapes), tuple(int(v) for v in starts))


def aggregate_forward(value: Array, locations: Array, weights: Array, p: MSDeformAttnParams) -> Array:
    """The core's output (N, Q, M, D) for arrays shaped as in the module docstring (validated)."""
    xp = array_module(value)
    n, _, m, d = value.shape
    q = locations.shape[1]
    if n * q * m * d == 0 or locations.shape[4] == 0:
        out = new_output(xp, (n, q, m, d), value.dtype)
        out[...] = 0
        return out
    locations = locations.astype(compute_dtype(value.dtype), copy=False)
    args = [contiguous(a) for a in (value, locations, weights)]
    return get_backend(value).ms_deform_attn_forward(*args, p)


def aggregate_backward(
    grad_out: Array, value: Array, locations: Array, weights: Array, p: MSDeformAttnParams
) -> tuple[Array, Array, Array]:
    """``(grad_value, grad_locations, grad_weights)`` of the core for ``grad_out`` (N, Q, M, D);
    ``grad_locations`` in the locations' compute dtype (float32 for 16-bit values)."""
    xp = array_module(value)
    wide = compute_dtype(value.dtype)
    if grad_out.size == 0 or locations.shape[4] == 0 or value.size == 0:
        return xp.zeros_like(value), xp.zeros(locations.shape, wide), xp.zeros_like(weights)
    locations = locations.astype(wide, copy=False)
    args = [contiguous(a) for a in (grad_out, value, locations, weights)]
    return get_backend(value).ms_deform_attn_backward(*args, p)


def run_forward(value: Array, locations: Array, weights: Array, p: MSDeformAttnParams) -> Array:
    n, _, m, d = value.shape
    return aggregate_forward(value, locations, weights, p).reshape(n, locations.shape[1], m * d)


def run_backward(
    grad_out: Array, value: Array, locations: Array, weights: Array, p: MSDeformAttnParams
) -> tuple[Array, Array, Array]:
    n, _, m, d = (int(v) for v in value.shape)
    lq = int(locations.shape[1])
    check_arrays({"value": value, "grad_out": grad_out})
    check_shape("grad_out", grad_out, (n, lq, m * d), "(N, Lq, M·D)")
    grads = aggregate_backward(grad_out.reshape(n, lq, m, d), value, locations, weights, p)
    return grads[0], grads[1].astype(locations.dtype, copy=False), grads[2]


def ms_deform_attn_forward(
    value: Array,
    spatial_shapes: Any,
    level_start_index: Any,
    sampling_locations: Array,
    attention_weights: Array,
) -> Array:
    """Array-level forward of :func:`ms_deform_attn` (no tape): ``out`` (N, Lq, M·D)."""
    args = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    p = MSDeformAttnParams.check(*args)
    return run_forward(value, sampling_locations, attention_weights, p)


def ms_deform_attn_backward(
    grad_out: Array,
    value: Array,
    spatial_shapes: Any,
    level_start_index: Any,
    sampling_locations: Array,
    attention_weights: Array,
) -> tuple[Array, Array, Array]:
    """Array-level backward of :func:`ms_deform_attn`: the gradients ``(value, sampling_locations,
    attention_weights)`` given ``grad_out`` (N, Lq, M·D). The integer inputs get none."""
    args = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    p = MSDeformAttnParams.check(*args)
    return run_backward(grad_out, value, sampling_locations, attention_weights, p)


class MSDeformAttnFunction(Function):
    """Tape node of ms_deform_attn; inputs ``(value, spatial_shapes, level_start_index,
    sampling_locations, attention_weights)``, no gradient for the two integer inputs."""

    def forward(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        self.params = MSDeformAttnParams.check(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
        self.save_for_backward(value, sampling_locations, attention_weights)
        return run_forward(value, sampling_locations, attention_weights, self.params)

    def backward(self, grad_out):
        value, locations, weights = self.saved
        g_value, g_locations, g_weights = run_backward(grad_out, value, locations, weights, self.params)
        return g_value, None, None, g_locations, g_weights


def ms_deform_attn(
    value: Array,
    spatial_shapes: Any,
    level_start_index: Any,
    sampling_locations: Array,
    attention_weights: Array,
) -> Array:
    """Multi-scale deformable attention (Deformable DETR's ``MultiScaleDeformableAttnFunction``,
    mmcv's signature without ``im2col_step``).

    Notation: N batch, Lq queries, M heads, D channels per head, L levels of sizes H_l x W_l,
    P points per level and head, S = Σ_l H_l·W_l.

    Args:
        value: (N, S, M, D), the levels flattened row-major and concatenated in level order.
        spatial_shapes: (L, 2) integers ``(H_l, W_l)`` (an integer array of value's library, or a
            sequence of ints); no gradient.
        level_start_index: (L,) integers, level l's first row in S: ``[0, H_0·W_0, ...]``, checked
            against ``spatial_shapes``; no gradient.
        sampling_locations: (N, Lq, M, L, P, 2), normalised **(x, y)**: (0, 0) is the top-left
            corner of the level, (1, 1) the bottom-right; points may lie outside.
        attention_weights: (N, Lq, M, L, P), used as given (apply the softmax yourself, as mmcv's
            module does).

    Returns:
        (N, Lq, M·D), head m in columns ``m·D .. m·D + D − 1``: ``Σ_{l,p} attention_weights ·
        v_l(loc_y·H_l − 0.5, loc_x·W_l − 0.5)``, where ``v_l`` is the bilinear sample of level l with
        zeros outside (``grid_sample(2·loc − 1, align_corners=False, padding_mode="zeros")``).

    Gradients flow to value, sampling_locations and attention_weights (docs/spec.md).

    Precision: float32 and float64 compute in their own dtype; float16 and bfloat16 are read as
    stored and computed in float32: the positions ``loc·W_l − 0.5`` (exact in float32 for a 16-bit
    ``loc``, not in float16), the weights and the sums, each result rounded once. A 16-bit location
    itself carries only 8 (bfloat16) or 11 (float16) bits: on a level 2048 wide its step is one pixel
    or more; keep locations in float32 (with float32 values) where sub-pixel precision matters. GPU
    value gradients are atomic scatters unless under ``cudcn.deterministic()``.

    Example:
        >>> import numpy as np, cudcn
        >>> value = np.arange(4.0).reshape(1, 4, 1, 1)           # one 2 x 2 level, M = D = 1
        >>> loc = np.full((1, 1, 1, 1, 1, 2), 0.5)               # the level's centre
        >>> w = np.ones((1, 1, 1, 1, 1))
        >>> cudcn.functional.ms_deform_attn(value, [[2, 2]], [0], loc, w)[0, 0, 0]
        np.float64(1.5)
    """
    return MSDeformAttnFunction.apply(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
