"""linear: ``input @ weight.T + bias``, as ``torch.nn.functional.linear``.

float16 and bfloat16 arguments are computed in float32 (GEMMs and the bias gradient's sum) and each
result is rounded once to the input dtype."""

from __future__ import annotations

from cudcn.arrays import Array
from cudcn.autograd import Function
from cudcn.dtypes import narrow, widen
from cudcn.ops._checks import check_arrays, check_ndim, check_shape


def check_linear(input: Array, weight: Array, bias: Array | None) -> None:
    """Validate the arguments of linear."""
    check_arrays({"input": input, "weight": weight, "bias": bias}, optional=("bias",))
    check_ndim("weight", weight, 2, "(out_features, in_features)")
    if input.ndim < 1 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input must have shape (..., in_features = {weight.shape[1]}), got {tuple(input.shape)}"
        )
    if bias is not None:
        check_shape("bias", bias, (weight.shape[0],), "(out_features,)")


class LinearFunction(Function):
    """Tape node of linear; inputs ``(input, weight, bias)``."""

    def forward(self, input, weight, bias):
        check_linear(input, weight, bias)
        self.save_for_backward(input, weight, bias)
        out = widen(input) @ widen(weight).T
        if bias is not None:
            out += widen(bias)
        return narrow(out, input.dtype)

    def backward(self, grad_out):  # the tape rounds the gradients to the inputs' dtype
        input, weight, bias = (widen(a) for a in self.saved)
        grad_out = widen(grad_out)
        need_input, need_weight, need_bias = self.needs_input_grad
        g2 = grad_out.reshape(-1, weight.shape[0])
        g_input = grad_out @ weight if need_input else None
        g_weight = g2.T @ input.reshape(-1, weight.shape[1]) if need_weight else None
        g_bias = g2.sum(axis=0) if bias is not None and need_bias else None
        return g_input, g_weight, g_bias


def linear(input: Array, weight: Array, bias: Array | None = None) -> Array:
    """Affine map ``input @ weight.T + bias``, as ``torch.nn.functional.linear``.

    Args:
        input: (..., in_features).
        weight: (out_features, in_features).
        bias: (out_features,) or None.

    Returns:
        (..., out_features).

    Example:
        >>> import numpy as np, cudcn
        >>> cudcn.functional.linear(np.ones((2, 3)), np.ones((4, 3)), np.arange(4.0))[0]
        array([3., 4., 5., 6.])
    """
    return LinearFunction.apply(input, weight, bias)
