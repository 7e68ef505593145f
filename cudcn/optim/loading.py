"""Checking an optimiser's saved state in full before :meth:`Optimizer.load_state_dict` assigns any
of it, so that a state it cannot load changes nothing (all or nothing)."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cudcn.arrays import array_module
from cudcn.nn.state import converted

if TYPE_CHECKING:
    from cudcn.optim.optimizers import Optimizer

__all__ = ["checked_state"]


def _index(value: Any, where: str) -> int:
    try:
        return operator.index(value.item() if hasattr(value, "item") else value)
    except TypeError:
        raise TypeError(f"{where} must be an int parameter index, got {value!r}") from None


def _groups(optimizer: Optimizer, saved: Any) -> tuple[list[dict[str, Any]], dict[int, Any]]:
    """Each group's hyperparameters as they will be after loading (checked by the optimiser's own
    rules), and the parameter each saved index names."""
    if not isinstance(saved, Sequence) or isinstance(saved, (str, bytes)):
        raise TypeError(f"state_dict['param_groups'] must be a list of dicts, got {type(saved).__name__}")
    for i, group in enumerate(saved):
        if not isinstance(group, Mapping) or "params" not in group:
            raise ValueError(f"state_dict['param_groups'][{i}] must be a dict with a 'params' list")
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    saved_sizes = [len(g["params"]) for g in saved]
    if sizes != saved_sizes:
        raise ValueError(f"state_dict has group sizes {saved_sizes}, this optimiser has {sizes}")
    by_index: dict[int, Any] = {}
    hyperparameters = []
    for i, (group, saved_group) in enumerate(zip(optimizer.param_groups, saved, strict=True)):
        for p, value in zip(group["params"], saved_group["params"], strict=True):
            index = _index(value, f"state_dict['param_groups'][{i}]['params']")
            if index in by_index:
                raise ValueError(
                    f"parameter index {index} appears more than once in state_dict['param_groups']"
                )
            by_index[index] = p
        values = {k: v for k, v in saved_group.items() if k != "params"}
        try:
            optimizer._check_group({**group, **values})
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"state_dict['param_groups'][{i}]: {exc}") from exc
        hyperparameters.append(values)
    return hyperparameters, by_index


def _parameter_state(entry: Any, p: Any, where: str) -> dict[str, Any]:
    """A copy of one parameter's saved state in ``p``'s array library: arrays of ``p``'s shape (or
    scalars), holding numbers."""
    if not isinstance(entry, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(entry).__name__}")
    xp = array_module(p.data)
    state = {}
    for key, value in entry.items():
        if not hasattr(value, "shape"):
            state[key] = value  # a plain number, e.g. Adam's step count
            continue
        shape = () if len(value.shape) == 0 else tuple(p.shape)
        array, problem = converted(value, shape, None, xp)
        if problem is not None:
            wrong_shape = problem[0] == "wrong shape"
            what = f"has shape {tuple(value.shape)}, the parameter {tuple(p.shape)}" if wrong_shape else ""
            raise ValueError(f"{where}[{key!r}] {what or 'is ' + problem[1]}")
        state[key] = xp.array(array, copy=True)
    return state


def checked_state(optimizer: Optimizer, state_dict: Any) -> tuple[list[dict[str, Any]], dict[int, Any]]:
    """What :meth:`Optimizer.load_state_dict` will assign: each group's new hyperparameters, and the
    new per-parameter state keyed by ``id(parameter)``. Raises (ValueError, TypeError) naming the
    first problem; nothing is assigned here."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    missing = [k for k in ("state", "param_groups") if k not in state_dict]
    if missing:
        raise ValueError(f"state_dict lacks {missing}: expected what Optimizer.state_dict() returns")
    hyperparameters, by_index = _groups(optimizer, state_dict["param_groups"])
    saved_state = state_dict["state"]
    if not isinstance(saved_state, Mapping):
        raise TypeError(f"state_dict['state'] must be a dict, got {type(saved_state).__name__}")
    state = {}
    for key, entry in saved_state.items():
        index = _index(key, "a key of state_dict['state']")
        if index not in by_index:
            raise ValueError(
                f"state_dict['state'] has an entry for parameter index {index}; "
                f"state_dict['param_groups'] names {sorted(by_index)}"
            )
        p = by_index[index]
        state[id(p)] = _parameter_state(entry, p, f"state_dict['state'][{index}]")
    return hyperparameters, state
