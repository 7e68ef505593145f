"""``Tensor``: an array (NumPy or CuPy) with a gradient slot and a link to the tape node that made it.

Leaf tensors are created by the user (``Tensor(array, requires_grad=True)``); their ``.grad`` receives
gradients (summed across ``backward`` calls, like PyTorch; set it to None to reset). Tensors produced by
a recorded :class:`~cudcn.autograd.Function` have ``grad_fn`` set and no ``.grad`` of their own.
Operators and methods are the differentiable functions of :mod:`cudcn.autograd.math` and
:mod:`cudcn.autograd.shaping`.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from cudcn.arrays import Array, array_module, is_cupy_array
from cudcn.dtypes import describe_floats, is_float_dtype


def _as_array(data: Any) -> Array:
    """``data`` if it is a NumPy or CuPy ndarray, else ``numpy.asarray(data)`` (scalars, lists)."""
    if type(data) is np.ndarray or is_cupy_array(data):
        return data
    return np.asarray(data)


class Tensor:
    """A NumPy or CuPy array that records the differentiable operations applied to it.

    Args:
        data: the array (NumPy or CuPy, kept without a copy); scalars and lists go through
            ``numpy.asarray``.
        requires_grad: whether ``backward`` computes a gradient for this tensor (floating dtypes
            only: float16, bfloat16, float32, float64).

    Attributes:
        data: the array. Changing it in place through the attribute (``t.data *= 2``, which Python
            runs as ``t.data = t.data.__imul__(2)``) counts as a modification: a later backward
            through a graph that saved the old values raises instead of computing wrong gradients.
            Changes that bypass the attribute (``t.data[...] = x``, ``out=`` arguments) should be
            followed by :meth:`mark_modified`.
        grad: a plain array of ``data``'s shape and dtype, or None (float32 for a float16/bfloat16
            tensor once :meth:`cudcn.optim.GradScaler.unscale_` has unscaled it).
        requires_grad: bool. grad_fn: the :class:`~cudcn.autograd.Function` that produced it, or None.

    Example::

        x = Tensor(np.arange(3.0), requires_grad=True)
        (x * x).sum().backward()
        x.grad  # array([0., 2., 4.])
    """

    __slots__ = ("__weakref__", "_data", "_version", "grad", "grad_fn", "requires_grad")
    __array_ufunc__ = None  # NumPy defers ``ndarray op Tensor`` to the Tensor's reflected operator
    __array_priority__ = 1000.0  # CuPy does the same based on priority

    def __init__(self, data: Any, requires_grad: bool = False) -> None:
        if isinstance(data, Tensor):
            raise TypeError("data must be an array, got a Tensor (use tensor.detach() or .data)")
        data = _as_array(data)
        if requires_grad and not is_float_dtype(data.dtype):
            raise TypeError(
                f"requires_grad=True needs a floating dtype ({describe_floats()}), got data of "
                f"dtype {data.dtype}"
            )
        self._data = data
        self._version = 0  # in-place modifications of data seen so far
        self.grad: Array | None = None
        self.requires_grad = bool(requires_grad)
        self.grad_fn: Any = None

    @classmethod
    def _from_node(cls, data: Array, node: Any) -> Tensor:
        """The output of recorded tape node ``node`` (used by ``Function.apply``)."""
        out = cls.__new__(cls)
        out._data = _as_array(data)
        out._version = 0
        out.grad = None
        out.requires_grad = True
        out.grad_fn = node
        return out

    # ----------------------------------------------------------------------- array attributes
    @property
    def data(self) -> Array:
        return self._data

    @data.setter
    def data(self, value: Array) -> None:
        if value is self._data:  # the same array written back: ``t.data op= x`` changed it in place
            self._version += 1
        self._data = value

    def mark_modified(self) -> None:
        """Record that ``data`` was changed in place by means the attribute does not see
        (``t.data[...] = x``, ``numpy.add(t.data, 1, out=t.data)``): a backward through a graph that
        saved the old values then raises instead of computing wrong gradients."""
        self._version += 1

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def is_leaf(self) -> bool:
        """True for tensors not produced by a recorded Function."""
        return self.grad_fn is None

    def __len__(self) -> int:
        return len(self.data)

    def __bool__(self) -> bool:
        return bool(self.data)

    def __repr__(self) -> str:
        extra = ""
        if self.grad_fn is not None:
            extra = f", grad_fn=<{type(self.grad_fn).__name__}>"
        elif self.requires_grad:
            extra = ", requires_grad=True"
        return f"Tensor({self.data!r}{extra})"

    def item(self) -> float | int | bool:
        """The value of a one-element tensor as a Python scalar."""
        return self.data.item()

    def numpy(self) -> np.ndarray:
        """A host (NumPy) copy of ``data``."""
        if is_cupy_array(self.data):
            return self.data.get()
        return self.data.copy()

    def detach(self) -> Tensor:
        """A new leaf sharing ``data``, without history and not requiring grad."""
        return Tensor(self.data)

    # ----------------------------------------------------------------------- backward
    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) contracted with ``grad`` into every leaf's ``.grad``.

        Args:
            grad: the gradient of the final scalar with respect to this tensor, same shape (cast to
                this dtype). May be omitted only for a one-element tensor (then it is 1).
            retain_graph: keep the graph so that ``backward`` can run through it again; by default
                each node is freed once consumed and a second pass raises ``RuntimeError``.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: no input of its computation "
                "had requires_grad=True, or it was computed under no_grad()"
            )
        xp = array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise ValueError(
                    "grad can be omitted only for a one-element output, got an output of shape "
                    f"{self.shape}; pass grad=<array of shape {self.shape}>"
                )
            grad = xp.ones(self.shape, dtype=self.dtype)
        else:
            if isinstance(grad, Tensor):
                grad = grad.data
            if is_cupy_array(grad) != is_cupy_array(self.data):
                raise TypeError(
                    f"grad must be of the same array library as the tensor ({xp.__name__}), "
                    f"got {type(grad).__module__}.{type(grad).__name__}"
                )
            grad = xp.asarray(grad)
            if grad.shape != self.shape:
                raise ValueError(f"grad must have shape {self.shape}, got {grad.shape}")
            if grad.dtype != self.dtype:
                grad = grad.astype(self.dtype)
        run_backward(self, grad, retain_graph)

    # ----------------------------------------------------------------------- operators
    def __add__(self, other: Any) -> Tensor:
        return _math.add(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return _math.add(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return _math.sub(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return _math.sub(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return _math.mul(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return _math.mul(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return _math.div(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return _math.div(other, self)

    def __neg__(self) -> Tensor:
        return _math.neg(self)

    def __pow__(self, exponent: float) -> Tensor:
        return _math.pow(self, exponent)

    def __matmul__(self, other: Any) -> Tensor:
        return _math.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return _math.matmul(other, self)

    def __getitem__(self, index: Any) -> Tensor:
        return _shaping.getitem(self, index)

    # ----------------------------------------------------------------------- methods
    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return _shaping.sum(self, axis, keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return _shaping.mean(self, axis, keepdims)

    def max(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return _shaping.max(self, axis, keepdims)

    def reshape(self, *shape: int | tuple[int, ...]) -> Tensor:
        """``t.reshape(2, 3)`` or ``t.reshape((2, 3))``; one entry may be -1."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _shaping.reshape(self, cast("tuple[int, ...]", shape))

    def transpose(self, *axes: int | tuple[int, ...]) -> Tensor:
        """Permute the axes (reverse them when none are given), as ``numpy.transpose``."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _shaping.transpose(self, cast("tuple[int, ...]", axes) or None)

    @property
    def T(self) -> Tensor:
        """The tensor with its axes reversed."""
        return _shaping.transpose(self, None)

    def flatten(self, start_dim: int = 0) -> Tensor:
        """Merge the axes from ``start_dim`` on into one: (B, C, H, W) -> (B, C*H*W) for 1."""
        return _shaping.flatten(self, start_dim)

    def astype(self, dtype: Any) -> Tensor:
        """This tensor cast to ``dtype`` (differentiable: the gradient is cast back)."""
        return _math.cast(self, dtype)

    def exp(self) -> Tensor:
        return _math.exp(self)

    def log(self) -> Tensor:
        return _math.log(self)

    def relu(self) -> Tensor:
        return _math.relu(self)

    def sigmoid(self) -> Tensor:
        return _math.sigmoid(self)

    def tanh(self) -> Tensor:
        return _math.tanh(self)


# function.py, math.py and shaping.py build on Tensor, so they are imported once it exists.
from cudcn.autograd import math as _math  # noqa: E402
from cudcn.autograd import shaping as _shaping  # noqa: E402
from cudcn.autograd.function import run_backward  # noqa: E402
