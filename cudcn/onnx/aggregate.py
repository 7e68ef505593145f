"""The deformable-aggregation core as standard ONNX nodes (no GridSample): ms_deform_attn's export,
and the subgraph builder that dcnv3's export reuses with pixel-unit locations.

:func:`deformable_aggregation` computes, for value (N, S, M, D), locations (N, Q, M, L, P, 2) (x, y)
and weights (N, Q, M, L, P), ``out[n, q, m] = Σ_{l,p} w · v_l(y, x)`` (N, Q, M, D) with the bilinear
rule of ``docs/spec.md`` in the same steps as ``cudcn.reference.bilinear``:

1. positions: ``x = loc_x·W_l − 0.5`` (normalised) or ``loc_x`` (pixels), per level through (L, 1)
   constants that broadcast over (..., L, P); a point is in range when ``−1 <= y < H_l`` and
   ``−1 <= x < W_l`` (a NaN is not), and an out-of-range point is moved to (0, 0) (``Where``) so
   that nothing after it sees a non-finite coordinate;
2. ``Floor``, the fractions ``ly, lx``, the four corner weights ``(1−ly)(1−lx), (1−ly)lx, ly(1−lx),
   ly·lx``, and each corner's row ``start_l + y·W_l + x`` of ``value``, or row 0 where the corner is
   not used (point out of range or corner outside the level); one ``Concat`` of the four;
3. one ``GatherND`` (batch_dims 2) of all corners from value as (N, M, S, D); a ``Where`` that
   zeroes the unused corners' values (they read row 0 with a bilinear weight that is not zeroed, so
   this is what makes them count 0, and it keeps a non-finite pixel the op never reads out of the
   result); two ``MatMul``: corners by bilinear weights, then points by attention weights.

Only the batch N is symbolic; Q, M, L, P, D are the traced sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto, helper

from cudcn.autograd.tensor import Tensor
from cudcn.dtypes import compute_dtype
from cudcn.onnx import ExportError
from cudcn.onnx.graph import GraphBuilder, describe


def deformable_aggregation(
    b: GraphBuilder,
    value: str,
    locations: str,
    weights: str,
    table: np.ndarray,
    normalized: bool,
    sizes: tuple[int, int, int, int, int],
    dtype: Any,
) -> str:
    """Append the nodes of the core; returns the name of its (N, Q, M, D) output.

    Args:
        b: the graph under construction.
        value, locations, weights: names of (N, S, M, D), (N, Q, M, L, P, 2) and (N, Q, M, L, P)
            values, all of ``dtype``.
        table: (L, 3) integer rows ``(H_l, W_l, start_l)`` (``MSDeformAttnParams.level_table()``).
        normalized: locations are normalised (Deformable DETR), else pixel (x, y) (dcnv3).
        sizes: the static ``(Q, M, L, P, D)``.
        dtype: the compute dtype (float32 or float64; cast 16-bit inputs before).
    """
    q, m, levels, points, d = sizes
    table = np.asarray(table, dtype=np.int64).reshape(levels, 1, 3)  # broadcasts over (..., L, P)
    height, width, start = (table[..., k] for k in range(3))
    consts = {"zero": 0.0, "one": 1.0, "minus_one": -1.0, "half": 0.5}
    c = {k: b.const(np.asarray(v, dtype)) for k, v in consts.items()}
    h_f, w_f = b.const(height.astype(dtype)), b.const(width.astype(dtype))
    x, y = (b.node("Gather", [locations, b.const(np.asarray(k, np.int64))], axis=5) for k in (0, 1))
    if normalized:
        x = b.node("Sub", [b.node("Mul", [x, w_f]), c["half"]])
        y = b.node("Sub", [b.node("Mul", [y, h_f]), c["half"]])
    checks = [
        b.node("GreaterOrEqual", [y, c["minus_one"]]),
        b.node("Less", [y, h_f]),
        b.node("GreaterOrEqual", [x, c["minus_one"]]),
        b.node("Less", [x, w_f]),
    ]
    inside = _all(b, checks)
    x, y = (b.node("Where", [inside, t, c["zero"]]) for t in (x, y))
    x0, y0 = b.node("Floor", [x]), b.node("Floor", [y])
    lx, ly = b.node("Sub", [x, x0]), b.node("Sub", [y, y0])
    hx, hy = b.node("Sub", [c["one"], lx]), b.node("Sub", [c["one"], ly])
    # in range, x0 >= -1 and x0 + 1 <= W: corner column x0 is inside iff x0 >= 0, x0 + 1 iff x0 < W - 1
    first_col, first_row = (b.node("GreaterOrEqual", [t, c["zero"]]) for t in (x0, y0))
    last_col = b.node("Less", [x0, b.const((width - 1).astype(dtype))])
    last_row = b.node("Less", [y0, b.const((height - 1).astype(dtype))])
    to_int = {"to": TensorProto.INT64}
    row0 = b.node("Add", [b.node("Mul", [b.node("Cast", [y0], **to_int), b.const(width)]), b.const(start)])
    base = b.node("Add", [row0, b.node("Cast", [x0], **to_int)])
    below = b.node("Add", [base, b.const(width)])
    corners = [  # (row of value, used, bilinear weight) in the reference's corner order
        (base, [first_row, first_col], (hy, hx)),
        (b.node("Add", [base, b.ints([1])]), [first_row, last_col], (hy, lx)),
        (below, [last_row, first_col], (ly, hx)),
        (b.node("Add", [below, b.ints([1])]), [last_row, last_col], (ly, lx)),
    ]
    rows: list[str] = []
    used: list[str] = []
    bilinear: list[str] = []
    for row, tests, (wy, wx) in corners:
        ok = _all(b, [inside, *tests])
        rows.append(b.node("Where", [ok, row, b.ints([0])]))
        used.append(ok)
        bilinear.append(b.node("Mul", [wy, wx]))
    k = q * levels * points * 4
    index = _heads_first(b, rows, [0, m, k, 1])
    table_v = b.node("Transpose", [value], perm=[0, 2, 1, 3])  # (N, M, S, D)
    gathered = b.node("GatherND", [table_v, index], batch_dims=2)  # (N, M, K, D)
    gathered = b.node("Where", [_heads_first(b, used, [0, m, k, 1]), gathered, c["zero"]])
    gathered = b.node("Reshape", [gathered, b.ints([0, m, q, levels * points, 4, d])])
    corner_weights = _heads_first(b, bilinear, [0, m, q, levels * points, 1, 4])
    samples = b.node("MatMul", [corner_weights, gathered])  # (N, M, Q, L·P, 1, D)
    samples = b.node("Reshape", [samples, b.ints([0, m, q, levels * points, d])])
    w = b.node("Transpose", [weights], perm=[0, 2, 1, 3, 4])  # (N, M, Q, L, P)
    w = b.node("Reshape", [w, b.ints([0, m, q, 1, levels * points])])
    out = b.node("MatMul", [w, samples])  # (N, M, Q, 1, D)
    out = b.node("Reshape", [out, b.ints([0, m, q, d])])
    return b.node("Transpose", [out], perm=[0, 2, 1, 3])


def _all(b: GraphBuilder, flags: list[str]) -> str:
    """The ``And`` of boolean values."""
    out = flags[0]
    for flag in flags[1:]:
        out = b.node("And", [out, flag])
    return out


def _heads_first(b: GraphBuilder, corners: list[str], shape: list[int]) -> str:
    """Four (N, Q, M, L, P) values stacked on a new last axis, the head axis moved before the
    queries ((N, M, Q, L, P, 4), GatherND's batch axes first) and reshaped to ``shape``."""
    axis = b.ints([-1])
    stacked = b.node("Concat", [b.node("Unsqueeze", [t, axis]) for t in corners], axis=-1)
    moved = b.node("Transpose", [stacked], perm=[0, 2, 1, 3, 4, 5])
    return b.node("Reshape", [moved, b.ints(shape)])


def ms_deform_attn(b: GraphBuilder, node: Any, out: Tensor) -> str:
    """``MSDeformAttnFunction``: the core on the traced levels (normalised locations), reshaped to
    (N, Lq, M·D); 16-bit values are computed in float32 and cast back once, as the kernels do."""
    value, shapes, starts, locations, weights = node._trace_inputs
    for name, x in (("spatial_shapes", shapes), ("level_start_index", starts)):
        if isinstance(x, Tensor) and (id(x) in b.names or x.grad_fn is not None):
            raise ExportError(
                f"cannot export ms_deform_attn in {describe(node)}: its {name} is a model input or "
                "computed by the model; ONNX gets the levels as constants, so pass them as a "
                "sequence of ints or an array held by the model"
            )
    p = node.params
    n_dtype = np.dtype(out.dtype)
    work = compute_dtype(n_dtype)
    v, loc, w = (b.value(x, work) for x in (value, locations, weights))
    _, q, m, levels, points, _ = locations.shape
    d = value.shape[3]
    core = deformable_aggregation(
        b, v, loc, w, p.level_table(), p.normalized, (q, m, levels, points, d), work
    )
    result = b.node("Reshape", [core, b.ints([0, q, m * d])])
    if work == n_dtype:
        return result
    return b.node("Cast", [result], to=helper.np_dtype_to_tensor_dtype(n_dtype))
