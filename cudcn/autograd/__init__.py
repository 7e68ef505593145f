"""A small tape-based reverse-mode autograd over NumPy and CuPy arrays.

``Tensor`` wraps an array; each differentiable call (a :class:`Function`) is recorded in creation order,
and ``Tensor.backward`` walks the recorded nodes in reverse, without recursion, freeing them as it goes.
``no_grad()`` turns recording off. Gradients of gradients are out of scope.

Example::

    import numpy as np
    from cudcn.autograd import Tensor

    w = Tensor(np.array([[2.0, 1.0], [1.0, 3.0]]), requires_grad=True)
    x = np.array([1.0, -1.0])
    loss = ((w @ x).relu() ** 2).sum()  # w @ x = [1, -2]; relu -> [1, 0]; loss = 1
    loss.backward()
    w.grad  # array([[ 2., -2.], [ 0.,  0.]])
"""

from cudcn.autograd.tensor import Tensor  # noqa: I001 - tensor first: the other modules build on it
from cudcn.autograd.function import Function, enable_grad, is_grad_enabled, no_grad
from cudcn.autograd.math import (
    add,
    cast,
    div,
    exp,
    log,
    matmul,
    mul,
    neg,
    pow,
    relu,
    sigmoid,
    sub,
    tanh,
)
from cudcn.autograd.shaping import flatten, getitem, max, mean, reshape, sum, transpose

__all__ = [
    "Function",
    "Tensor",
    "add",
    "cast",
    "div",
    "enable_grad",
    "exp",
    "flatten",
    "getitem",
    "is_grad_enabled",
    "log",
    "matmul",
    "max",
    "mean",
    "mul",
    "neg",
    "no_grad",
    "pow",
    "relu",
    "reshape",
    "sigmoid",
    "sub",
    "sum",
    "tanh",
    "transpose",
]
