"""``state_dict`` and ``load_state_dict`` of a :class:`~cudcn.nn.Module`.

Entries are named with dotted paths in PyTorch's order: each module's parameters, then its
persistent buffers, then its submodules, recursively.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from cudcn.arrays import array_module, is_cupy_array
from cudcn.autograd import Tensor
from cudcn.dtypes import is_bfloat16

if TYPE_CHECKING:
    from cudcn.nn.module import Module

__all__ = ["IncompatibleKeys", "converted", "load_state_dict", "state_dict"]


class IncompatibleKeys(NamedTuple):
    """What :meth:`Module.load_state_dict` did not load (non-strict mode)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _entries(module: Module, prefix: str = "") -> Iterator[tuple[str, Module, str, bool]]:
    """(key, owner, attribute, is_parameter) for every state entry, in PyTorch's order."""
    for key, p in module._parameters.items():
        if p is not None:
            yield prefix + key, module, key, True
    for key, b in module._buffers.items():
        if b is not None and key not in module._non_persistent:
            yield prefix + key, module, key, False
    for name, sub in module._modules.items():
        if sub is not None:
            yield from _entries(sub, f"{prefix}{name}.")


def _array(owner: Module, attr: str, is_param: bool) -> Any:
    """The array behind a state entry: a parameter's data or a buffer."""
    return owner._parameters[attr].data if is_param else owner._buffers[attr]


def state_dict(module: Module) -> OrderedDict[str, Any]:
    """Copies of ``module``'s parameter and persistent buffer arrays, keyed by dotted name."""
    return OrderedDict(
        (key, _array(owner, attr, is_param).copy()) for key, owner, attr, is_param in _entries(module)
    )


_KINDS = {"U": "str", "S": "bytes", "O": "object", "c": "complex", "M": "datetime", "m": "timedelta"}


def converted(value: Any, shape: tuple[int, ...], dtype: Any, xp: Any) -> tuple[Any, tuple[str, str] | None]:
    """``value`` (an array, a Tensor, a number or a nested list) as an array of the array library
    ``xp`` (NumPy or CuPy) and ``dtype`` (None: its own), checked to have ``shape``; or
    (None, (what, why)): "wrong shape", or "wrong kind" for elements that are not numbers (strings,
    bytes, objects, complex numbers). The result may be ``value`` itself when nothing changes."""
    if isinstance(value, Tensor):
        value = value.data
    try:
        got = tuple(np.shape(value))
    except ValueError as exc:  # a ragged nested list
        return None, ("wrong kind", f"not an array ({exc})")
    if got != tuple(shape):
        return None, ("wrong shape", f"expected {tuple(shape)}, got {got}")
    if is_cupy_array(value) and xp is np:
        value = value.get()
    array = value if is_cupy_array(value) else np.asarray(value)
    kind = np.dtype(array.dtype).kind
    if kind not in "biuf" and not is_bfloat16(array.dtype):
        what = f"an array of {_KINDS.get(kind, 'non-numbers')} ({array.dtype}), expected numbers"
        return None, ("wrong kind", what)
    return xp.asarray(array).astype(dtype or array.dtype, copy=False), None


def load_state_dict(module: Module, state: Any, strict: bool = True) -> IncompatibleKeys:
    """Copy the arrays of ``state`` into ``module`` in place (see :meth:`Module.load_state_dict`).

    All or nothing: every entry is checked and converted first (names, shapes, element kinds,
    dtype and device), and only then are all of them copied in; an error changes nothing."""
    if not hasattr(state, "items"):
        raise TypeError(f"state_dict must be a mapping of names to arrays, got {type(state).__name__}")
    entries = {key: (owner, attr, is_param) for key, owner, attr, is_param in _entries(module)}
    values = dict(state.items())
    missing = [k for k in entries if k not in values]
    unexpected = [k for k in values if k not in entries]
    problems = []
    ready = {}
    for key, where in entries.items():
        if key in values:
            target = _array(*where)
            ready[key], problem = converted(values[key], target.shape, target.dtype, array_module(target))
            if problem is not None:
                problems.append(f"  {problem[0]}: {key}: {problem[1]}")
    if strict:
        problems = (
            [f"  missing: {k}" for k in missing] + [f"  unexpected: {k}" for k in unexpected] + problems
        )
    if problems:
        raise ValueError(
            f"load_state_dict into {type(module).__name__} failed, nothing loaded:\n" + "\n".join(problems)
        )
    for key, value in ready.items():
        _array(*entries[key])[...] = value  # same shape, dtype and library: cannot fail half way
    return IncompatibleKeys(missing, unexpected)
