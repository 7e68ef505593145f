"""layer_norm: normalisation over the trailing axes, as ``torch.nn.functional.layer_norm``.

float16 and bfloat16 inputs are normalised in float32 (statistics, normalisation and the
gradients' sums) and each result is rounded once to the input dtype."""

from __future__ import annotations

import numbers
from typing import Any

from cudcn.arrays import Array
from cudcn.autograd import Function
from cudcn.backends import array_module
from cudcn.dtypes import narrow, widen
from cudcn.ops._checks import check_arrays, check_shape, finite_float, positive_int


def normalized_axes(input: Array, normalized_shape: Any) -> tuple[int, ...]:
    """``normalized_shape`` (an int or a tuple of ints) as a tuple that must end ``input``'s shape."""
    shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else normalized_shape
    if not isinstance(shape, (tuple, list)) or not shape:
        raise TypeError(
            f"normalized_shape must be an int or a non-empty tuple of ints, got {normalized_shape!r}"
        )
    shape = tuple(positive_int("normalized_shape", v) for v in shape)
    if tuple(input.shape[input.ndim - len(shape) :]) != shape or input.ndim < len(shape):
        raise ValueError(f"input must end with normalized_shape {shape}, got shape {tuple(input.shape)}")
    return shape


class LayerNormFunction(Function):
    """Tape node of layer_norm; inputs ``(input, weight, bias)``."""

    def forward(self, input, weight, bias, *, normalized_shape, eps):
        check_arrays({"input": input, "weight": weight, "bias": bias}, optional=("weight", "bias"))
        shape = normalized_axes(input, normalized_shape)
        for name, a in (("weight", weight), ("bias", bias)):
            if a is not None:
                check_shape(name, a, shape, "normalized_shape")
        eps = finite_float("eps", eps)
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        xp = array_module(input)
        size = 1
        for v in shape:
            size *= v
        x = widen(input).reshape(-1, size)
        centred = x - x.mean(axis=1, keepdims=True)
        invstd = 1 / xp.sqrt((centred * centred).mean(axis=1, keepdims=True) + eps)
        xhat = centred * invstd
        w = None if weight is None else widen(weight).reshape(size)
        self.normalized_shape = shape
        self.save_for_backward(xhat, invstd, w)
        out = xhat if w is None else xhat * w
        if bias is not None:
            out = out + widen(bias).reshape(size)
        return narrow(out.reshape(input.shape), input.dtype)

    def backward(self, grad_out):  # in float32 for 16-bit inputs; the tape rounds the gradients
        xhat, invstd, w = self.saved
        g = widen(grad_out).reshape(xhat.shape)
        need_input, need_weight, need_bias = self.needs_input_grad
        g_input = None
        if need_input:
            gh = g if w is None else g * w
            mean_g = gh.mean(axis=1, keepdims=True)
            mean_gx = (gh * xhat).mean(axis=1, keepdims=True)
            g_input = ((gh - mean_g - xhat * mean_gx) * invstd).reshape(grad_out.shape)
        shape = self.normalized_shape
        g_weight = (g * xhat).sum(axis=0).reshape(shape) if w is not None and need_weight else None
        g_bias = g.sum(axis=0).reshape(shape) if need_bias else None
        return g_input, g_weight, g_bias


def layer_norm(
    input: Array,
    normalized_shape: int | tuple[int, ...],
    weight: Array | None = None,
    bias: Array | None = None,
    eps: float = 1e-5,
) -> Array:
    """Layer normalisation over the trailing axes ``normalized_shape``, as
    ``torch.nn.functional.layer_norm``: ``(x − mean) / sqrt(var + eps) · weight + bias`` with the
    mean and the biased variance over those axes.

    Args:
        input: (..., *normalized_shape).
        normalized_shape: an int (the last axis) or a tuple of the trailing sizes.
        weight, bias: arrays of shape ``normalized_shape``, or None (scale 1, shift 0).
        eps: added to the variance, > 0.

    Returns:
        An array or Tensor of ``input``'s shape.

    Example:
        >>> import numpy as np, cudcn
        >>> cudcn.functional.layer_norm(np.array([[1.0, 3.0]]), 2, eps=1e-12)
        array([[-1.,  1.]])
    """
    return LayerNormFunction.apply(input, weight, bias, normalized_shape=normalized_shape, eps=eps)
