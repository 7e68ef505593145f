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

if TYPE_CHECKING:
    from cudcn.nn.module import Module

__all__ = ["IncompatibleKeys", "load_state_dict", "state_dict"]


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


def load_state_dict(module: Module, state: Any, strict: bool = True) -> IncompatibleKeys:
    """Copy the arrays of ``state`` into ``module`` in place (see :meth:`Module.load_state_dict`)."""
    entries = {key: (owner, attr, is_param) for key, owner, attr, is_param in _entries(module)}
    values = {k: (v.data if isinstance(v, Tensor) else v) for k, v in state.items()}
    missing = [k for k in entries if k not in values]
    unexpected = [k for k in values if k not in entries]
    problems = []
    for key, where in entries.items():
        if key not in values:
            continue
        target = _array(*where)
        shape = tuple(np.shape(values[key]))
        if shape != tuple(target.shape):
            problems.append(f"  wrong shape: {key}: expected {tuple(target.shape)}, got {shape}")
    if strict:
        problems = (
            [f"  missing: {k}" for k in missing] + [f"  unexpected: {k}" for k in unexpected]
        ) + problems
    if problems:
        raise ValueError(
            f"load_state_dict into {type(module).__name__} failed, nothing loaded:\n" + "\n".join(problems)
        )
    for key, where in entries.items():
        if key in values:
            target = _array(*where)
            value = values[key]
            if is_cupy_array(value) and not is_cupy_array(target):
                value = value.get()
            target[...] = array_module(target).asarray(value).astype(target.dtype, copy=False)
    return IncompatibleKeys(missing, unexpected)
