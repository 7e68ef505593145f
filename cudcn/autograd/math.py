"""Differentiable arithmetic and elementwise functions: +, -, *, /, neg, ** (scalar exponent), @, exp,
log, relu, sigmoid, tanh.

Binary operations broadcast as NumPy does; the gradient of a broadcast input is summed back to the
input's shape. Either operand may be a Python scalar, which is a constant: under NumPy's rules for
Python scalars a float32 array times ``2.0`` stays float32. Each function takes Tensors or plain arrays
(see ``Function.apply``): plain in, plain out.

float16 and bfloat16: elementwise functions compute each value in float32 and round it once (NumPy's
and ml_dtypes' own loops); ``@``, ``sigmoid`` and the sums that undo broadcasting compute in float32
(:func:`cudcn.dtypes.widen`) and round the result once to the operands' dtype.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from cudcn.arrays import Array, array_module
from cudcn.autograd.function import Function
from cudcn.dtypes import narrow, widen


def _shape(x: Any) -> tuple[int, ...]:
    """Shape of an array operand; () for a Python scalar."""
    return getattr(x, "shape", ())


def _unbroadcast(g: Array, shape: tuple[int, ...]) -> Array:
    """Sum ``g`` over the axes along which an operand of ``shape`` was broadcast to ``g.shape``."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    if axes:
        g = narrow(widen(g).sum(axis=axes), g.dtype)
    return g.reshape(shape)


class Add(Function):
    def forward(self, a: Array, b: Array) -> Array:
        self.shapes = (_shape(a), _shape(b))
        return a + b

    def backward(self, g: Array) -> tuple[Array | None, Array | None]:
        need_a, need_b = self.needs_input_grad
        shape_a, shape_b = self.shapes
        return (
            _unbroadcast(g, shape_a) if need_a else None,
            _unbroadcast(g, shape_b) if need_b else None,
        )


class Sub(Function):
    def forward(self, a: Array, b: Array) -> Array:
        self.shapes = (_shape(a), _shape(b))
        return a - b

    def backward(self, g: Array) -> tuple[Array | None, Array | None]:
        need_a, need_b = self.needs_input_grad
        shape_a, shape_b = self.shapes
        return (
            _unbroadcast(g, shape_a) if need_a else None,
            _unbroadcast(-g, shape_b) if need_b else None,
        )


class Mul(Function):
    def forward(self, a: Array, b: Array) -> Array:
        self.save_for_backward(a, b)
        return a * b

    def backward(self, g: Array) -> tuple[Array | None, Array | None]:
        a, b = self.saved
        need_a, need_b = self.needs_input_grad
        return (
            _unbroadcast(g * b, _shape(a)) if need_a else None,
            _unbroadcast(g * a, _shape(b)) if need_b else None,
        )


class Div(Function):
    def forward(self, a: Array, b: Array) -> Array:
        out = a / b
        self.shape_a = _shape(a)
        self.save_for_backward(b, out)
        return out

    def backward(self, g: Array) -> tuple[Array | None, Array | None]:
        b, out = self.saved
        need_a, need_b = self.needs_input_grad
        g_over_b = g / b  # d(a/b)/da = 1/b;  d(a/b)/db = -a/b² = -out/b
        return (
            _unbroadcast(g_over_b, self.shape_a) if need_a else None,
            _unbroadcast(-g_over_b * out, _shape(b)) if need_b else None,
        )


class Neg(Function):
    def forward(self, x: Array) -> Array:
        return -x

    def backward(self, g: Array) -> tuple[Array]:
        return (-g,)


class Pow(Function):
    """``x ** exponent`` for a real scalar ``exponent`` (a keyword parameter, not differentiated)."""

    exponent: int | float

    def forward(self, x: Array, *, exponent: float) -> Array:
        if isinstance(exponent, bool) or not isinstance(exponent, numbers.Real):
            raise TypeError(f"exponent must be a real scalar, got {type(exponent).__name__}")
        self.exponent = int(exponent) if float(exponent).is_integer() else float(exponent)
        self.save_for_backward(x)
        return x**self.exponent

    def backward(self, g: Array) -> tuple[Array]:
        (x,) = self.saved
        p = self.exponent
        if p == 0:
            return (g * 0,)
        if p == 1:
            return (g,)
        return (g * (p * x ** (p - 1)),)


class MatMul(Function):
    """``a @ b`` with NumPy's rules: batch dimensions broadcast; a 1-D ``a`` is a row vector, a 1-D
    ``b`` a column vector, and the inserted dimension is removed from the result."""

    def forward(self, a: Array, b: Array) -> Array:
        self.save_for_backward(a, b)
        # ml_dtypes' bfloat16 @ bfloat16 returns float32; keep NumPy's promotion of the operands
        return narrow(widen(a) @ widen(b), np.result_type(a.dtype, b.dtype))

    def backward(self, g: Array) -> tuple[Array | None, Array | None]:
        a, b = (widen(x) for x in self.saved)  # the tape rounds the gradients to a's and b's dtype
        g = widen(g)
        need_a, need_b = self.needs_input_grad
        xp = array_module(g)
        a2 = a[None, :] if a.ndim == 1 else a  # (..., m, k)
        b2 = b[:, None] if b.ndim == 1 else b  # (..., k, n)
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        g2 = g.reshape((*batch, a2.shape[-2], b2.shape[-1]))  # re-insert the removed unit axes
        ga = gb = None
        if need_a:
            ga = _unbroadcast(g2 @ xp.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if need_b:
            gb = _unbroadcast(xp.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb


class Exp(Function):
    def forward(self, x: Array) -> Array:
        out = array_module(x).exp(x)
        self.save_for_backward(out)
        return out

    def backward(self, g: Array) -> tuple[Array]:
        (out,) = self.saved
        return (g * out,)


class Log(Function):
    def forward(self, x: Array) -> Array:
        self.save_for_backward(x)
        return array_module(x).log(x)

    def backward(self, g: Array) -> tuple[Array]:
        (x,) = self.saved
        return (g / x,)


class Relu(Function):
    """``max(x, 0)``; the gradient at exactly 0 is taken as 0."""

    def forward(self, x: Array) -> Array:
        out = array_module(x).maximum(x, 0)
        self.save_for_backward(out)
        return out

    def backward(self, g: Array) -> tuple[Array]:
        (out,) = self.saved
        return (g * (out > 0),)


class Sigmoid(Function):
    """``1 / (1 + exp(-x))``, evaluated without overflow as ``1/(1+e)`` or ``e/(1+e)``,
    ``e = exp(-|x|)``."""

    def forward(self, x: Array) -> Array:
        xp = array_module(x)
        wide = widen(x)
        e = xp.exp(-abs(wide))
        out = xp.where(wide >= 0, 1 / (1 + e), e / (1 + e))
        self.save_for_backward(out)  # float32 for 16-bit x: the derivative from unrounded values
        return narrow(out, x.dtype)

    def backward(self, g: Array) -> tuple[Array]:
        (out,) = self.saved
        return (widen(g) * out * (1 - out),)


class Tanh(Function):
    def forward(self, x: Array) -> Array:
        out = array_module(x).tanh(x)
        self.save_for_backward(out)
        return out

    def backward(self, g: Array) -> tuple[Array]:
        (out,) = self.saved
        return (g * (1 - out * out),)


class Cast(Function):
    """``x`` converted to ``dtype`` (rounded to nearest even when narrowing); the gradient is
    converted back to ``x``'s dtype by the tape."""

    def forward(self, x: Array, *, dtype: Any) -> Array:
        return x.astype(dtype)

    def backward(self, g: Array) -> tuple[Array]:
        return (g,)


def add(a: Any, b: Any) -> Any:
    """``a + b`` (broadcasting)."""
    return Add.apply(a, b)


def sub(a: Any, b: Any) -> Any:
    """``a - b`` (broadcasting)."""
    return Sub.apply(a, b)


def mul(a: Any, b: Any) -> Any:
    """``a * b`` (broadcasting)."""
    return Mul.apply(a, b)


def div(a: Any, b: Any) -> Any:
    """``a / b`` (broadcasting)."""
    return Div.apply(a, b)


def neg(x: Any) -> Any:
    """``-x``."""
    return Neg.apply(x)


def pow(x: Any, exponent: float) -> Any:
    """``x ** exponent`` for a real scalar ``exponent``."""
    return Pow.apply(x, exponent=exponent)


def matmul(a: Any, b: Any) -> Any:
    """``a @ b``: (..., m, k) @ (..., k, n) -> (..., m, n), batch axes broadcast; 1-D operands as in
    ``numpy.matmul``."""
    return MatMul.apply(a, b)


def cast(x: Any, dtype: Any) -> Any:
    """``x`` as ``dtype`` (e.g. a float16 loss as float32); differentiable."""
    return Cast.apply(x, dtype=np.dtype(dtype))


def exp(x: Any) -> Any:
    """Elementwise ``exp(x)``."""
    return Exp.apply(x)


def log(x: Any) -> Any:
    """Elementwise natural logarithm."""
    return Log.apply(x)


def relu(x: Any) -> Any:
    """Elementwise ``max(x, 0)`` (gradient 0 at 0)."""
    return Relu.apply(x)


def sigmoid(x: Any) -> Any:
    """Elementwise logistic function ``1 / (1 + exp(-x))``."""
    return Sigmoid.apply(x)


def tanh(x: Any) -> Any:
    """Elementwise hyperbolic tangent."""
    return Tanh.apply(x)
