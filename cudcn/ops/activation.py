"""Activations: relu (the autograd's), gelu, dropout and log_softmax.

float16 and bfloat16: dropout draws its uniforms in float32; gelu and log_softmax compute in float32
and round once to the input dtype."""

from __future__ import annotations

import math
import numbers

import numpy as np

from cudcn.arrays import Array
from cudcn.autograd import Function, relu
from cudcn.backends import array_module, is_cupy_array
from cudcn.dtypes import compute_dtype, narrow, widen
from cudcn.ops._checks import check_arrays

__all__ = ["dropout", "gelu", "log_softmax", "relu"]


class DropoutFunction(Function):
    """Tape node of dropout: multiplies by a saved mask of 0 and ``1 / (1 - p)``."""

    def forward(self, input, *, p, rng):
        check_arrays({"input": input})
        xp = array_module(input)
        draw = compute_dtype(input.dtype)  # the generators have no 16-bit floats
        if is_cupy_array(input):  # draw on the device, seeded from the host generator
            seed = int(rng.integers(2**63))
            uniform = xp.random.default_rng(seed).random(input.shape, dtype=draw)
        else:
            uniform = rng.random(input.shape, dtype=draw)
        scale = 0.0 if p == 1 else 1 / (1 - p)
        mask = (uniform >= p).astype(input.dtype) * input.dtype.type(scale)
        self.save_for_backward(mask)
        return input * mask

    def backward(self, grad_out):
        (mask,) = self.saved
        return (grad_out * mask,)


def dropout(
    input: Array,
    p: float = 0.5,
    training: bool = True,
    rng: np.random.Generator | int | None = None,
) -> Array:
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)`` while
    ``training``; return ``input`` itself otherwise (or when ``p == 0``).

    Args:
        input: any shape.
        p: drop probability in [0, 1].
        training: apply dropout (True) or the identity (False).
        rng: a NumPy ``Generator`` or an int seed; None draws a fresh unseeded generator. CuPy
            inputs draw their mask on the device from a seed taken from ``rng``.

    Example:
        >>> import numpy as np, cudcn
        >>> out = cudcn.functional.dropout(np.ones(8), p=0.5, rng=0)
        >>> sorted(set(out.tolist())) in ([0.0, 2.0], [0.0], [2.0])
        True
    """
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    if not training or p == 0:
        return input
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return DropoutFunction.apply(input, p=float(p), rng=rng)


class LogSoftmaxFunction(Function):
    """Tape node of log_softmax."""

    def forward(self, input, *, axis):
        check_arrays({"input": input})
        dtype, input = input.dtype, widen(input)
        xp = array_module(input)
        shifted = input - input.max(axis=axis, keepdims=True)
        out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        self.axis = axis
        self.save_for_backward(out)
        return narrow(out, dtype)

    def backward(self, grad_out):  # in float32 for 16-bit inputs; the tape rounds the gradient
        (out,) = self.saved
        grad_out = widen(grad_out)
        xp = array_module(out)
        return (grad_out - xp.exp(out) * grad_out.sum(axis=self.axis, keepdims=True),)


def log_softmax(input: Array, axis: int = -1) -> Array:
    """``log(softmax(input))`` along ``axis``, computed stably as
    ``x - max(x) - log(sum(exp(x - max(x))))``.

    Example:
        >>> import numpy as np, cudcn
        >>> np.exp(cudcn.functional.log_softmax(np.array([[1.0, 1.0]]), axis=1))
        array([[0.5, 0.5]])
    """
    if not hasattr(input, "ndim") or input.ndim == 0:
        raise ValueError(f"input must have at least one axis, got {input!r}")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {axis!r}")
    if not -input.ndim <= axis < input.ndim:
        raise ValueError(f"axis must lie in [-{input.ndim}, {input.ndim}), got {axis}")
    return LogSoftmaxFunction.apply(input, axis=int(axis))


def _erf(xp, x: Array) -> Array:
    """The error function of x (SciPy's, or CuPy's for device arrays)."""
    if is_cupy_array(x):
        from cupyx.scipy.special import erf
    else:
        from scipy.special import erf
    return erf(x)


class GeluFunction(Function):
    """Tape node of gelu."""

    def forward(self, input, *, approximate):
        check_arrays({"input": input})
        x = widen(input)
        xp = array_module(x)
        if approximate == "tanh":
            inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
            t = xp.tanh(inner)
            self.save_for_backward(x, t)
            out = 0.5 * x * (1 + t)
        else:
            cdf = 0.5 * (1 + _erf(xp, x * (1 / math.sqrt(2))))
            self.save_for_backward(x, cdf)
            out = x * cdf
        self.approximate = approximate
        return narrow(out.astype(x.dtype, copy=False), input.dtype)

    def backward(self, grad_out):  # in float32 for 16-bit inputs; the tape rounds the gradient
        x, saved = self.saved
        xp = array_module(x)
        if self.approximate == "tanh":
            d_inner = math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x * x)
            slope = 0.5 * (1 + saved) + 0.5 * x * (1 - saved * saved) * d_inner
        else:
            slope = saved + x * xp.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
        return ((widen(grad_out) * slope).astype(x.dtype, copy=False),)


def gelu(input: Array, approximate: str = "none") -> Array:
    """The Gaussian error linear unit, as ``torch.nn.functional.gelu``: ``x·Φ(x)`` with Φ the
    standard normal CDF, ``0.5·x·(1 + erf(x / sqrt(2)))``; with ``approximate="tanh"``
    ``0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³)))``.

    Example:
        >>> import numpy as np, cudcn
        >>> np.round(cudcn.functional.gelu(np.array([-1.0, 0.0, 1.0])), 6)
        array([-0.158655,  0.      ,  0.841345])
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return GeluFunction.apply(input, approximate=approximate)
