"""dcnv3 and dcnv4 as standard ONNX nodes, and the other pieces of their blocks (layer_norm, gelu).

dcnv3 / dcnv4: the sampling locations of ``cudcn.ops.dcnv3`` in arithmetic (the anchors and the
kernel grid are constants), then the core's gather-based subgraph
(:func:`cudcn.onnx.aggregate.deformable_aggregation`) on one level in pixel units.

``locations = anchor + (tap + offset)·s``: offset (N, H_out, W_out, G·P·2) reshaped to
(N, Q, G, 1, P, 2), ``tap`` the (P, 2) grid ``(i·dil_w, j·dil_h)``, ``anchor`` the (Q, 1, 1, 1, 2)
``(c_w − pad_w + wo·stride_w − c_w·s, c_h − pad_h + ho·stride_h − c_h·s)``; value is the input
reshaped to (N, H·W, G, D), the weights the mask reshaped to (N, Q, G, 1, P). dcnv4 first slices its
packed tensor (group g's offsets at ``g·3P .. g·3P + 2P``, its mask after them). 16-bit models are
computed in float32 and cast back once, as the kernels do.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from onnx import helper

from cudcn.autograd.tensor import Tensor
from cudcn.dtypes import compute_dtype
from cudcn.onnx.aggregate import deformable_aggregation
from cudcn.onnx.graph import GraphBuilder
from cudcn.ops.dcnv3 import DCNv3Params


def _aggregate(b: GraphBuilder, x: Any, offset: str, mask: str, p: DCNv3Params, out: Tensor) -> str:
    """The op's output for the input ``x`` (traced), offsets (N, Q, G, 1, P, 2) and mask
    (N, Q, G, 1, P) given as names in the compute dtype."""
    n_dtype = np.dtype(out.dtype)
    work = compute_dtype(n_dtype)
    (ho, wo), (h, w), g, pts = p.output_size, p.input_size, p.group, p.points
    c = int(x.shape[3])
    (sh, sw), (ph, pw), (dh, dw), s = p.stride, p.padding, p.dilation, p.offset_scale
    ch, cw = (dh * (p.kernel_size[0] - 1)) // 2, (dw * (p.kernel_size[1] - 1)) // 2
    anchor = np.empty((ho, wo, 2))
    anchor[..., 0] = (cw - pw + np.arange(wo) * sw - cw * s)[None, :]
    anchor[..., 1] = (ch - ph + np.arange(ho) * sh - ch * s)[:, None]
    taps = np.array([(i * dw, j * dh) for i, j in p.taps()], dtype=np.float64)
    shifted = b.node("Add", [offset, b.const(taps.astype(work))])
    scaled = b.node("Mul", [shifted, b.const(np.asarray(s, work))])
    locations = b.node("Add", [scaled, b.const(anchor.reshape(ho * wo, 1, 1, 1, 2).astype(work))])
    value = b.node("Reshape", [b.value(x, work), b.ints([0, h * w, g, c // g])])
    core = deformable_aggregation(
        b, value, locations, mask, p.core().level_table(), False, (ho * wo, g, 1, pts, c // g), work
    )
    result = b.node("Reshape", [core, b.ints([0, ho, wo, c])])
    if work == n_dtype:
        return result
    return b.node("Cast", [result], to=helper.np_dtype_to_tensor_dtype(n_dtype))


def dcnv3(b: GraphBuilder, node: Any, out: Tensor) -> str:
    """``DCNv3Function``: inputs (input, offset, mask)."""
    x, offset, mask = node._trace_inputs
    p = node.params
    work = compute_dtype(np.dtype(out.dtype))
    q = p.output_size[0] * p.output_size[1]
    off = b.node("Reshape", [b.value(offset, work), b.ints([0, q, p.group, 1, p.points, 2])])
    weights = b.node("Reshape", [b.value(mask, work), b.ints([0, q, p.group, 1, p.points])])
    return _aggregate(b, x, off, weights, p, out)


def dcnv4(b: GraphBuilder, node: Any, out: Tensor) -> str:
    """``DCNv4Function``: inputs (input, offset_mask); the padding channels are never read."""
    x, offset_mask = node._trace_inputs
    p = node.params
    work = compute_dtype(np.dtype(out.dtype))
    q, g, pts = p.output_size[0] * p.output_size[1], p.group, p.points
    used = b.node("Slice", [b.value(offset_mask, work), b.ints([0]), b.ints([g * 3 * pts]), b.ints([3])])
    per_group = b.node("Reshape", [used, b.ints([0, q, g, 3 * pts])])
    parts = [
        b.node("Slice", [per_group, b.ints([a]), b.ints([z]), b.ints([3])])
        for a, z in ((0, 2 * pts), (2 * pts, 3 * pts))
    ]
    off = b.node("Reshape", [parts[0], b.ints([0, q, g, 1, pts, 2])])
    weights = b.node("Reshape", [parts[1], b.ints([0, q, g, 1, pts])])
    return _aggregate(b, x, off, weights, p, out)


def layer_norm(b: GraphBuilder, node: Any, out: Tensor) -> str:
    """LayerNormalization over the trailing axes, in float32 for 16-bit models (as the op)."""
    x, weight, bias = node._trace_inputs
    shape = node.normalized_shape
    work = compute_dtype(np.dtype(out.dtype))
    scale = b.value(weight, work) if weight is not None else b.const(np.ones(shape, work))
    inputs = [b.value(x, work), scale, b.value(bias, work)]
    eps = float(node._trace_params["eps"])
    result = b.node("LayerNormalization", inputs, axis=-len(shape), epsilon=eps)
    return result if work == out.dtype else b.node("Cast", [result], to=_onnx_dtype(out.dtype))


def gelu(b: GraphBuilder, node: Any, out: Tensor) -> str:
    """``x·Φ(x)`` from Erf (or the tanh formula), in float32 for 16-bit models (as the op); ONNX's
    own Gelu needs opset 20."""
    (x,) = node._trace_inputs
    work = compute_dtype(np.dtype(out.dtype))
    v = b.value(x, work)

    def const(value: float) -> str:
        return b.const(np.asarray(value, work))

    if node.approximate == "tanh":
        cube = b.node("Mul", [b.node("Mul", [v, v]), v])
        inner = b.node("Add", [v, b.node("Mul", [cube, const(0.044715)])])
        t = b.node("Tanh", [b.node("Mul", [inner, const(math.sqrt(2 / math.pi))])])
    else:
        t = b.node("Erf", [b.node("Mul", [v, const(1 / math.sqrt(2))])])
    half = b.node("Mul", [v, const(0.5)])
    result = b.node("Mul", [half, b.node("Add", [t, const(1.0)])])
    return result if work == out.dtype else b.node("Cast", [result], to=_onnx_dtype(out.dtype))


def _onnx_dtype(dtype: Any) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
