"""Losses: cross_entropy (from logits and integer labels), mse_loss and smooth_l1_loss.

float16 and bfloat16 inputs are computed in float32 (softmax, differences and the reduction) and
the loss is rounded once to the input dtype."""

from __future__ import annotations

from typing import Any

from cudcn.arrays import Array
from cudcn.autograd import Function, Tensor
from cudcn.backends import array_module, is_cupy_array
from cudcn.dtypes import narrow, widen
from cudcn.ops._checks import check_arrays, check_ndim, check_shape

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: Any) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduce(values: Array, reduction: str) -> Array:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def _reduced_grad(grad_out: Array, count: int, reduction: str) -> Array:
    """The gradient of each unreduced element (``count`` of them) from the reduced one's."""
    return grad_out / max(count, 1) if reduction == "mean" else grad_out


class CrossEntropyFunction(Function):
    """Tape node of cross_entropy; inputs ``(input,)``; the labels are a keyword parameter."""

    def forward(self, input, *, target, reduction):
        dtype, input = input.dtype, widen(input)
        xp = array_module(input)
        shifted = input - input.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        rows = xp.arange(input.shape[0])
        self.target, self.reduction = target, reduction
        self.save_for_backward(log_probs)
        return narrow(_reduce(-log_probs[rows, target], reduction), dtype)

    def backward(self, grad_out):  # in float32 for 16-bit inputs; the tape rounds the gradient
        (log_probs,) = self.saved
        grad_out = widen(grad_out)
        xp = array_module(log_probs)
        g = xp.exp(log_probs)
        g[xp.arange(g.shape[0]), self.target] -= 1
        scale = _reduced_grad(grad_out, g.shape[0], self.reduction)
        return (g * (scale[:, None] if self.reduction == "none" else scale),)


def cross_entropy(input: Array, target: Array, reduction: str = "mean") -> Array:
    """Cross-entropy of logits against integer class labels, as
    ``torch.nn.functional.cross_entropy``: ``-log_softmax(input, axis=1)[n, target[n]]``, reduced.

    Args:
        input: (N, K) logits.
        target: (N,) integer labels in [0, K) (an array of the input's library, or a Tensor holding
            one; not differentiated).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` ((N,) losses).

    Example:
        >>> import numpy as np, cudcn
        >>> float(cudcn.functional.cross_entropy(np.zeros((2, 4)), np.array([0, 3])))  # log 4
        1.3862943611198906
    """
    _check_reduction(reduction)
    data = input.data if isinstance(input, Tensor) else input
    check_arrays({"input": data})
    check_ndim("input", data, 2, "(N, K) logits")
    target = target.data if isinstance(target, Tensor) else target
    if not hasattr(target, "dtype") or target.dtype.kind not in "iu":
        raise TypeError(f"target must be an integer array, got {getattr(target, 'dtype', target)!r}")
    if is_cupy_array(target) != is_cupy_array(data):
        raise TypeError("target must come from the same array library as input")
    check_shape("target", target, (data.shape[0],), "(N,)")
    if target.size and (int(target.min()) < 0 or int(target.max()) >= data.shape[1]):
        raise ValueError(
            f"target labels must lie in [0, {data.shape[1]}), got values in "
            f"[{int(target.min())}, {int(target.max())}]"
        )
    return CrossEntropyFunction.apply(input, target=target, reduction=reduction)


class MseLossFunction(Function):
    """Tape node of mse_loss; inputs ``(input, target)``."""

    def forward(self, input, target, *, reduction):
        check_arrays({"input": input, "target": target})
        check_shape("target", target, input.shape, "the input's shape")
        diff = widen(input) - widen(target)
        self.reduction = reduction
        self.save_for_backward(diff)
        return narrow(_reduce(diff * diff, reduction), input.dtype)

    def backward(self, grad_out):  # the tape rounds the gradients to the inputs' dtype
        (diff,) = self.saved
        g = 2 * diff * _reduced_grad(widen(grad_out), diff.size, self.reduction)
        need_input, need_target = self.needs_input_grad
        return (g if need_input else None, -g if need_target else None)


def mse_loss(input: Array, target: Array, reduction: str = "mean") -> Array:
    """Squared error ``(input - target) ** 2``, reduced (``"mean"``, ``"sum"`` or ``"none"``), as
    ``torch.nn.functional.mse_loss``; ``target`` must have the input's shape and may be a Tensor
    (then it receives a gradient too)."""
    _check_reduction(reduction)
    return MseLossFunction.apply(input, target, reduction=reduction)


class SmoothL1LossFunction(Function):
    """Tape node of smooth_l1_loss; inputs ``(input, target)``."""

    def forward(self, input, target, *, reduction, beta):
        check_arrays({"input": input, "target": target})
        check_shape("target", target, input.shape, "the input's shape")
        xp = array_module(input)
        diff = widen(input) - widen(target)
        size = xp.abs(diff)
        quadratic = size < beta
        self.reduction, self.beta = reduction, beta
        self.save_for_backward(diff, quadratic)
        half_beta = diff.dtype.type(0.5 * beta)
        values = xp.where(quadratic, 0.5 * diff * diff / (beta if beta else 1), size - half_beta)
        return narrow(_reduce(values, reduction), input.dtype)

    def backward(self, grad_out):  # the tape rounds the gradients to the inputs' dtype
        diff, quadratic = self.saved
        xp = array_module(diff)
        slope = xp.where(quadratic, diff / (self.beta if self.beta else 1), xp.sign(diff))
        g = slope * _reduced_grad(widen(grad_out), diff.size, self.reduction)
        need_input, need_target = self.needs_input_grad
        return (g if need_input else None, -g if need_target else None)


def smooth_l1_loss(input: Array, target: Array, reduction: str = "mean", beta: float = 1.0) -> Array:
    """Smooth L1 (Huber-like) loss, as ``torch.nn.functional.smooth_l1_loss``: with
    ``d = input - target``, ``0.5 * d ** 2 / beta`` where ``|d| < beta`` and ``|d| - 0.5 * beta``
    elsewhere (``beta = 0`` is the L1 loss), reduced (``"mean"``, ``"sum"`` or ``"none"``).

    Args:
        input: any shape.
        target: the input's shape; may be a Tensor (then it receives a gradient too).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (the input's shape).
        beta: the threshold between the quadratic and the linear part, >= 0.

    The gradient is ``d / beta`` inside, ``sign(d)`` outside (0 at ``d = 0`` when ``beta = 0``).

    Example:
        >>> import numpy as np, cudcn
        >>> float(cudcn.functional.smooth_l1_loss(np.array([0.5, 3.0]), np.zeros(2), "sum"))
        2.625
    """
    _check_reduction(reduction)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    return SmoothL1LossFunction.apply(input, target, reduction=reduction, beta=float(beta))
