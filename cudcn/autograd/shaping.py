"""Differentiable functions that change an array's shape: sum, mean, max, reshape, transpose, flatten
and indexing.

Reductions take ``axis`` (None, an int or a tuple of ints, negative allowed) and ``keepdims`` as in
NumPy. Each function takes a Tensor or a plain array (see ``Function.apply``): plain in, plain out.
This module defines ``sum`` and ``max``, so the builtins of those names are not available in it.

float16 and bfloat16: ``sum``, ``mean`` and the scatter-add of repeated indices accumulate in float32
and round once to the input dtype (NumPy and ml_dtypes would accumulate in 16 bits).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from cudcn.arrays import Array, array_module, is_cupy_array
from cudcn.autograd.function import Function
from cudcn.autograd.tensor import Tensor
from cudcn.dtypes import compute_dtype, narrow, widen

Axis = int | tuple[int, ...] | None


def _axes(axis: Axis, ndim: int) -> tuple[int, ...]:
    """``axis`` as a tuple of non-negative axes (all axes for None)."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (tuple, list)):
        return tuple(int(a) % ndim for a in axis)
    return (int(axis) % ndim,)


def _kept_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` with the reduced ``axes`` set to 1 (the ``keepdims=True`` shape)."""
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


class Sum(Function):
    def forward(self, x: Array, *, axis: Axis = None, keepdims: bool = False) -> Array:
        out = narrow(widen(x).sum(axis=axis, keepdims=keepdims), x.dtype)
        self.shape = x.shape
        self.kept = _kept_shape(x.shape, _axes(axis, x.ndim))
        return out

    def backward(self, g: Array) -> tuple[Array]:
        return (array_module(g).broadcast_to(g.reshape(self.kept), self.shape),)


class Mean(Function):
    def forward(self, x: Array, *, axis: Axis = None, keepdims: bool = False) -> Array:
        out = narrow(widen(x).mean(axis=axis, keepdims=keepdims), x.dtype)
        axes = _axes(axis, x.ndim)
        self.shape = x.shape
        self.kept = _kept_shape(x.shape, axes)
        self.count = 1
        for a in axes:
            self.count *= x.shape[a]
        return out

    def backward(self, g: Array) -> tuple[Array]:
        scaled = g.reshape(self.kept) / (self.count or 1)
        return (array_module(g).broadcast_to(scaled, self.shape),)


class Max(Function):
    """Maximum over ``axis``. The gradient goes to the maximal elements; ties share it equally."""

    def forward(self, x: Array, *, axis: Axis = None, keepdims: bool = False) -> Array:
        axes = _axes(axis, x.ndim)
        out = x.max(axis=axes, keepdims=True)
        self.axes = axes
        self.save_for_backward(x, out)
        if keepdims:
            return out
        return out.reshape(tuple(n for i, n in enumerate(x.shape) if i not in axes))

    def backward(self, g: Array) -> tuple[Array]:
        x, out = self.saved
        hit = x == out
        count = hit.sum(axis=self.axes, keepdims=True)
        return (hit * (g.reshape(out.shape) / count),)


class Reshape(Function):
    def forward(self, x: Array, *, shape: tuple[int, ...]) -> Array:
        self.shape = x.shape
        return x.reshape(shape)

    def backward(self, g: Array) -> tuple[Array]:
        return (g.reshape(self.shape),)


class Transpose(Function):
    """Axis permutation as ``numpy.transpose`` (``axes=None`` reverses the axes)."""

    def forward(self, x: Array, *, axes: tuple[int, ...] | None = None) -> Array:
        if axes is None:
            axes = tuple(range(x.ndim))[::-1]
        out = x.transpose(axes)  # validates axes
        self.inverse = tuple(int(i) for i in np.argsort([int(a) % x.ndim for a in axes]))
        return out

    def backward(self, g: Array) -> tuple[Array]:
        return (g.transpose(self.inverse),)


def _is_basic_index(index: Any) -> bool:
    """True when ``index`` selects each element at most once (no integer arrays or lists), so that
    the gradient can be written by assignment instead of a scatter-add."""
    items = index if isinstance(index, tuple) else (index,)
    for item in items:
        if isinstance(item, list):
            item = np.asarray(item)
        if (isinstance(item, np.ndarray) or is_cupy_array(item)) and item.dtype != np.bool_:
            return False
    return True


class GetItem(Function):
    """``x[index]``: basic indexing, boolean masks and integer-array indexing. The gradient is
    scattered back with an unbuffered add, so repeated indices accumulate."""

    def forward(self, x: Array, *, index: Any) -> Array:
        self.shape = x.shape
        self.index = index
        return x[index]

    def backward(self, g: Array) -> tuple[Array]:
        xp = array_module(g)
        if _is_basic_index(self.index):
            gx = xp.zeros(self.shape, dtype=g.dtype)
            gx[self.index] = g
            return (gx,)
        gx = xp.zeros(self.shape, dtype=compute_dtype(g.dtype))  # the tape rounds it to x's dtype
        if is_cupy_array(gx):
            importlib.import_module("cupyx").scatter_add(gx, self.index, g)
        else:
            np.add.at(gx, self.index, g)
        return (gx,)


def _plain_index(index: Any) -> Any:
    """``index`` with Tensors (integer or boolean index arrays) replaced by their arrays."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def sum(x: Any, axis: Axis = None, keepdims: bool = False) -> Any:
    """Sum over ``axis`` (all axes when None)."""
    return Sum.apply(x, axis=axis, keepdims=keepdims)


def mean(x: Any, axis: Axis = None, keepdims: bool = False) -> Any:
    """Mean over ``axis`` (all axes when None)."""
    return Mean.apply(x, axis=axis, keepdims=keepdims)


def max(x: Any, axis: Axis = None, keepdims: bool = False) -> Any:
    """Maximum over ``axis`` (all axes when None); tied maxima share the gradient equally."""
    return Max.apply(x, axis=axis, keepdims=keepdims)


def reshape(x: Any, shape: tuple[int, ...]) -> Any:
    """``x`` viewed with ``shape`` (one entry may be -1)."""
    return Reshape.apply(x, shape=tuple(shape))


def transpose(x: Any, axes: tuple[int, ...] | None = None) -> Any:
    """Permute the axes of ``x`` (reverse them when ``axes`` is None)."""
    return Transpose.apply(x, axes=None if axes is None else tuple(axes))


def flatten(x: Any, start_dim: int = 0) -> Any:
    """Merge the axes of ``x`` from ``start_dim`` on: (B, C, H, W) -> (B, C * H * W) for 1."""
    shape = x.shape
    start = start_dim % len(shape) if shape else 0
    return Reshape.apply(x, shape=(*shape[:start], int(np.prod(shape[start:]))))


def getitem(x: Any, index: Any) -> Any:
    """``x[index]``; ``index`` may hold Tensors of integer or boolean indices."""
    return GetItem.apply(x, index=_plain_index(index))
