"""One translation per recorded ``Function`` class: its inputs and parameters as standard ONNX nodes.

Each translation takes the builder, the recorded node (``_trace_inputs``, ``_trace_params`` and what
its ``forward`` stored) and the node's output Tensor, appends nodes, and returns the name of the value
equal to that output. Elementwise operands are cast to the output's dtype, as NumPy promoted them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from cudcn.autograd import math as am
from cudcn.autograd import shaping as sh
from cudcn.autograd.function import Function
from cudcn.autograd.tensor import Tensor
from cudcn.onnx import ExportError
from cudcn.onnx.aggregate import ms_deform_attn
from cudcn.onnx.dcnv3 import dcnv3, dcnv4, gelu, layer_norm
from cudcn.onnx.graph import GraphBuilder, describe
from cudcn.ops.activation import DropoutFunction, GeluFunction, LogSoftmaxFunction
from cudcn.ops.conv import Conv2dFunction
from cudcn.ops.dcnv3 import DCNv3Function
from cudcn.ops.dcnv4 import DCNv4Function
from cudcn.ops.deform_conv2d import DeformConv2dFunction
from cudcn.ops.deform_psroi_pool import DeformPSRoIPoolFunction
from cudcn.ops.deform_roi_pool import DeformRoIPoolFunction
from cudcn.ops.layer_norm import LayerNormFunction
from cudcn.ops.linear import LinearFunction
from cudcn.ops.ms_deform_attn import MSDeformAttnFunction
from cudcn.ops.norm import BatchNormFunction
from cudcn.ops.pool import AdaptiveAvgPool2dFunction, AvgPool2dFunction, MaxPool2dFunction

INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
Translation = Callable[[GraphBuilder, Any, Tensor], str]


def _data(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def _elementwise(op_type: str) -> Translation:
    def translate(b: GraphBuilder, node: Any, out: Tensor) -> str:
        return b.node(op_type, [b.value(x, out.dtype) for x in node._trace_inputs])

    return translate


def _cast(b: GraphBuilder, node: Any, out: Tensor) -> str:
    """``Tensor.astype``: ONNX Cast (rounds to nearest even, as NumPy and ml_dtypes do)."""
    (x,) = node._trace_inputs
    return b.node("Cast", [b.value(x)], to=helper.np_dtype_to_tensor_dtype(np.dtype(out.dtype)))


def _pow(b: GraphBuilder, node: Any, out: Tensor) -> str:
    (x,) = node._trace_inputs
    exponent = b.const(np.asarray(node.exponent, dtype=out.dtype))
    return b.node("Pow", [b.value(x, out.dtype), exponent])


def _reduce(op_type: str) -> Translation:
    def translate(b: GraphBuilder, node: Any, out: Tensor) -> str:
        (x,) = node._trace_inputs
        axis, keepdims = node._trace_params.get("axis"), node._trace_params.get("keepdims", False)
        inputs = [b.value(x, out.dtype)]
        if axis is not None:
            inputs.append(b.ints(sh._axes(axis, x.ndim)))
        return b.node(op_type, inputs, keepdims=int(bool(keepdims)))

    return translate


def _reshape(b: GraphBuilder, node: Any, out: Tensor) -> str:
    (x,) = node._trace_inputs
    shape = list(out.shape)
    if b.dynamic_batch and b.is_batched(x) and shape:
        shape[0] = 0 if shape[0] == x.shape[0] else -1  # 0 copies the input's (symbolic) axis 0
    return b.node("Reshape", [b.value(x, out.dtype), b.ints(shape)])


def _transpose(b: GraphBuilder, node: Any, out: Tensor) -> str:
    (x,) = node._trace_inputs
    axes = node._trace_params.get("axes")
    perm = list(range(x.ndim))[::-1] if axes is None else [int(a) % x.ndim for a in axes]
    return b.node("Transpose", [b.value(x, out.dtype)], perm=perm)


def _getitem(b: GraphBuilder, node: Any, out: Tensor) -> str:
    """Basic indexing (ints, slices, one Ellipsis) as one Slice, then a Squeeze for the ints."""
    (x,) = node._trace_inputs
    index = node._trace_params["index"]
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(item is Ellipsis for item in items) == 1:
        at = items.index(Ellipsis)
        items[at : at + 1] = [slice(None)] * (x.ndim - len(items) + 1)
    if len(items) > x.ndim or not all(
        isinstance(i, slice) or (isinstance(i, (int, np.integer)) and not isinstance(i, bool)) for i in items
    ):
        raise ExportError(
            f"cannot export indexing x[{index!r}] in {describe(node)}: only ints, slices and one "
            "Ellipsis translate to ONNX Slice (no arrays, masks or None)"
        )
    starts, ends, axes, steps, squeeze = [], [], [], [], []
    for axis, item in enumerate(items):
        if isinstance(item, slice):
            if item == slice(None):
                continue
            step = 1 if item.step is None else int(item.step)
            start = item.start if item.start is not None else (0 if step > 0 else INT64_MAX)
            stop = item.stop if item.stop is not None else (INT64_MAX if step > 0 else INT64_MIN)
        else:
            start, stop, step = int(item), (int(item) + 1) or INT64_MAX, 1
            squeeze.append(axis)
        starts.append(int(start))
        ends.append(int(stop))
        axes.append(axis)
        steps.append(step)
    value = b.value(x, out.dtype)
    if axes:
        value = b.node("Slice", [value, b.ints(starts), b.ints(ends), b.ints(axes), b.ints(steps)])
    if squeeze:
        value = b.node("Squeeze", [value, b.ints(squeeze)])
    return value


def _pads(padding: tuple[int, int]) -> list[int]:
    return [int(padding[0]), int(padding[1]), int(padding[0]), int(padding[1])]


def _conv2d(b: GraphBuilder, node: Any, out: Tensor) -> str:
    geo, dt = node.geo, out.dtype
    inputs = [b.value(x, dt) for x in node._trace_inputs if x is not None]
    return b.node(
        "Conv",
        inputs,
        kernel_shape=list(geo.kernel),
        strides=list(geo.stride),
        pads=_pads(geo.padding),
        dilations=list(geo.dilation),
        group=geo.groups,
    )


def _deform_conv2d(b: GraphBuilder, node: Any, out: Tensor) -> str:
    """ONNX DeformConv: inputs X, W, offset, B, mask (the offset layout is torchvision's)."""
    input, offset, weight, bias, mask = node._trace_inputs
    p = node.params  # the call's DeformConv2dParams, validated when it ran
    names = [b.value(a, out.dtype) for a in (input, weight, offset, bias, mask)]
    while names[-1] == "":
        names.pop()
    return b.node(
        "DeformConv",
        names,
        kernel_shape=list(_data(weight).shape[2:]),
        strides=list(p.stride),
        pads=_pads(p.padding),
        dilations=list(p.dilation),
        group=p.groups,
        offset_group=p.offset_groups,
    )


def _batch_norm(b: GraphBuilder, node: Any, out: Tensor) -> str:
    input, weight, bias = node._trace_inputs
    p = node._trace_params
    if p["training"]:
        raise ExportError(
            f"cannot export batch_norm with batch statistics in {describe(node)}: ONNX "
            "BatchNormalization uses the running statistics (track_running_stats=False has none)"
        )
    dt, channels = out.dtype, input.shape[1]
    scale = b.value(weight, dt) if weight is not None else b.const(np.ones(channels, dt))
    shift = b.value(bias, dt) if bias is not None else b.const(np.zeros(channels, dt))
    stats = [b.value(p["running_mean"], dt), b.value(p["running_var"], dt)]
    return b.node("BatchNormalization", [b.value(input, dt), scale, shift, *stats], epsilon=float(p["eps"]))


def _linear(b: GraphBuilder, node: Any, out: Tensor) -> str:
    input, weight, bias = (b.value(x, out.dtype) for x in node._trace_inputs)
    if node._trace_inputs[0].ndim == 2:
        return b.node("Gemm", [input, weight, bias] if bias else [input, weight], transB=1)
    value = b.node("MatMul", [input, b.node("Transpose", [weight], perm=[1, 0])])
    return b.node("Add", [value, bias]) if bias else value


def _pool(b: GraphBuilder, node: Any, out: Tensor, op_type: str, **attributes: Any) -> str:
    """A ``MaxPool`` / ``AveragePool`` node with the pooling's kernel, strides and pads."""
    geo = node.geo
    (x,) = node._trace_inputs
    return b.node(
        op_type,
        [b.value(x, out.dtype)],
        kernel_shape=list(geo.kernel),
        strides=list(geo.stride),
        pads=_pads(geo.padding),
        **attributes,
    )


def _max_pool2d(b: GraphBuilder, node: Any, out: Tensor) -> str:
    return _pool(b, node, out, "MaxPool")


def _avg_pool2d(b: GraphBuilder, node: Any, out: Tensor) -> str:
    include_pad = int(node._trace_params["count_include_pad"])
    return _pool(b, node, out, "AveragePool", count_include_pad=include_pad)


def _adaptive_avg_pool2d(b: GraphBuilder, node: Any, out: Tensor) -> str:
    (x,) = node._trace_inputs
    (h, w), (oh, ow) = x.shape[2:], out.shape[2:]
    if (oh, ow) == (1, 1):
        return b.node("GlobalAveragePool", [b.value(x, out.dtype)])
    if h % oh or w % ow:
        raise ExportError(
            f"cannot export adaptive_avg_pool2d from {h}x{w} to {oh}x{ow} in {describe(node)}: its "
            "bins differ in size, which no standard ONNX pooling computes (use sizes that divide)"
        )
    kernel = [h // oh, w // ow]
    return b.node("AveragePool", [b.value(x, out.dtype)], kernel_shape=kernel, strides=kernel)


def _log_softmax(b: GraphBuilder, node: Any, out: Tensor) -> str:
    (x,) = node._trace_inputs
    return b.node("LogSoftmax", [b.value(x, out.dtype)], axis=int(node.axis))


def _roi_align(b: GraphBuilder, node: Any, out: Tensor) -> str:
    """ONNX RoiAlign: our (R, 5) rois split into boxes (R, 4) and int64 batch indices (R,)."""
    input, rois, offset = node._trace_inputs
    if offset is not None:
        raise ExportError(
            f"cannot export deform_roi_pool with offsets in {describe(node)}: ONNX has no "
            "standard operator for per-bin RoI offsets (RoiAlign has none); only the offset-free "
            "deform_roi_pool and roi_align export"
        )
    p, dt = node.params, out.dtype
    r = b.value(rois, dt)
    index = b.node("Gather", [r, b.const(np.asarray(0, np.int64))], axis=1)
    batch = b.node("Cast", [index], to=TensorProto.INT64)
    boxes = b.node("Slice", [r, b.ints([1]), b.ints([5]), b.ints([1])])
    return b.node(
        "RoiAlign",
        [b.value(input, dt), boxes, batch],
        mode="avg",
        output_height=p.pooled_h,
        output_width=p.pooled_w,
        sampling_ratio=p.sampling_ratio,
        spatial_scale=float(p.spatial_scale),
        coordinate_transformation_mode="half_pixel" if p.aligned else "output_half_pixel",
    )


def _unsupported(op: str, reason: str) -> Translation:
    def translate(b: GraphBuilder, node: Any, out: Tensor) -> str:
        raise ExportError(f"cannot export {op} in {describe(node)}: {reason}")

    return translate


TRANSLATIONS: dict[type[Function], Translation] = {
    am.Add: _elementwise("Add"),
    am.Sub: _elementwise("Sub"),
    am.Mul: _elementwise("Mul"),
    am.Div: _elementwise("Div"),
    am.Neg: _elementwise("Neg"),
    am.MatMul: _elementwise("MatMul"),
    am.Exp: _elementwise("Exp"),
    am.Log: _elementwise("Log"),
    am.Relu: _elementwise("Relu"),
    am.Sigmoid: _elementwise("Sigmoid"),
    am.Tanh: _elementwise("Tanh"),
    am.Pow: _pow,
    am.Cast: _cast,
    sh.Sum: _reduce("ReduceSum"),
    sh.Mean: _reduce("ReduceMean"),
    sh.Max: _reduce("ReduceMax"),
    sh.Reshape: _reshape,
    sh.Transpose: _transpose,
    sh.GetItem: _getitem,
    Conv2dFunction: _conv2d,
    DeformConv2dFunction: _deform_conv2d,
    BatchNormFunction: _batch_norm,
    LinearFunction: _linear,
    MaxPool2dFunction: _max_pool2d,
    AvgPool2dFunction: _avg_pool2d,
    AdaptiveAvgPool2dFunction: _adaptive_avg_pool2d,
    LogSoftmaxFunction: _log_softmax,
    LayerNormFunction: layer_norm,
    GeluFunction: gelu,
    DCNv3Function: dcnv3,
    DCNv4Function: dcnv4,
    MSDeformAttnFunction: ms_deform_attn,
    DeformRoIPoolFunction: _roi_align,
    DeformPSRoIPoolFunction: _unsupported(
        "deform_psroi_pool", "ONNX has no standard position-sensitive (deformable) RoI pooling"
    ),
    DropoutFunction: _unsupported("dropout in training mode", "export computes the eval graph"),
}


def translate(b: GraphBuilder, node: Any, out: Tensor) -> str:
    """Append the nodes of one recorded call; returns the name of its output value."""
    rule = TRANSLATIONS.get(type(node))
    if rule is None:
        raise ExportError(
            f"cannot export {type(node).__name__} in {describe(node)}: cudcn.onnx has no ONNX "
            "translation for it (see cudcn.onnx for the supported ops)"
        )
    return rule(b, node, out)
