"""Optimisers with PyTorch's update rules: SGD, Adam, AdamW (see :mod:`cudcn.optim`).

16-bit parameters (float16, bfloat16) are updated through a float32 master copy: the state holds
``"master"`` (float32) next to float32 momentum/moment buffers, each step updates the master with the
float32-widened gradient and writes it back to the parameter rounded once to its dtype. Steps far
below the parameter's 16-bit spacing therefore accumulate in the master instead of being lost. If the
parameter is changed from outside (a loaded checkpoint), the master is taken from it again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from cudcn.arrays import array_module
from cudcn.autograd import Tensor, enable_grad
from cudcn.dtypes import compute_dtype, is_half_dtype, narrow

__all__ = ["SGD", "Adam", "AdamW", "Optimizer"]


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and ``state_dict``.

    Args:
        params: an iterable of Tensors, or of dicts ``{"params": [...], <hyperparameter>: value}``.
        defaults: the hyperparameters a group takes when it does not set them.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}  # keyed by id(parameter)
        params = list(params)
        if not params:
            raise ValueError("params must hold at least one parameter, got an empty list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group ``{"params": [...], ...}``; unset hyperparameters come from the defaults."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"a parameter group must be a dict with a 'params' key, got {group!r}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"params[{i}] must be a cudcn.Tensor, got {type(p).__name__}")
            if id(p) in seen:
                raise ValueError(f"params[{i}] appears in more than one parameter group")
            seen.add(id(p))
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise ValueError(
                f"unknown hyperparameters {sorted(unknown)} in a parameter group; "
                f"{type(self).__name__} takes {sorted(self.defaults)}"
            )
        full = {**self.defaults, **group, "params": params}
        self._check_group(full)
        self.param_groups.append(full)

    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate a group's hyperparameters (overridden by each optimiser)."""
        if not group["lr"] >= 0:
            raise ValueError(f"lr must be >= 0, got {group['lr']}")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters: to ``None`` (default) or to zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def found_inf_on_any_rank(self, found: bool) -> bool:
        """Whether some process found an inf/NaN gradient, given this process's ``found``; here
        ``found`` itself (``cudcn.distributed.DistributedOptimizer`` asks every rank). Used by
        :class:`cudcn.optim.GradScaler` so that every rank skips the same steps."""
        return bool(found)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; returns ``closure()`` when one is given
        (the closure re-evaluates the loss and calls ``backward``)."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                if p.grad is not None:
                    if p.grad.shape != p.shape:
                        raise ValueError(
                            f"parameter {i} of group {self.param_groups.index(group)} has shape "
                            f"{tuple(p.shape)} but its .grad has shape {tuple(p.grad.shape)}; a "
                            "gradient must have its parameter's shape (no broadcasting)"
                        )
                    self._step_parameter(p, self.state.setdefault(id(p), {}), group)
                    p.mark_modified()  # a graph that saved the old values can no longer run backward
        return loss

    def _step_parameter(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """One update of ``p``: in place on ``p.data``, or, for a 16-bit ``p``, on its float32
        master copy, written back rounded to ``p``'s dtype."""
        if not is_half_dtype(p.dtype):
            self._update(p.data, p.grad, state, group)
            return
        grad = p.grad
        assert grad is not None  # step() updates only the parameters that have a gradient
        master = state.get("master")
        if master is None or not bool((narrow(master, p.dtype) == p.data).all()):
            master = state["master"] = p.data.astype(compute_dtype(p.dtype))  # (re)synchronised
        self._update(master, grad.astype(master.dtype, copy=False), state, group)
        p.data[...] = narrow(master, p.dtype)

    def _update(self, param: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Update the array ``param`` in place from ``grad`` (same dtype) and ``state``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}`` as in PyTorch;
        parameters are numbered in group order. The state's arrays are not copied; a 16-bit
        parameter's state includes its float32 ``"master"`` copy."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[key]: dict(s) for key, s in self.state.items() if key in index and s}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and state saved by :meth:`state_dict` from an optimiser with the
        same group sizes; state arrays are copied into each parameter's array library.

        All or nothing: the whole state is checked first (group sizes, parameter indices, each
        group's hyperparameters by this optimiser's rules, state arrays of the parameter's shape
        holding numbers), and a ValueError or TypeError naming the problem changes nothing."""
        from cudcn.optim.loading import checked_state  # late: cudcn.nn imports cudcn.optim

        hyperparameters, state = checked_state(self, state_dict)
        for group, values in zip(self.param_groups, hyperparameters, strict=True):
            group.update(values)
        self.state = state


class SGD(Optimizer):
    """Stochastic gradient descent with PyTorch's rule (``g`` the gradient, ``b`` the momentum buffer)::

    g = g + weight_decay * p
    b = g (first step), else momentum * b + (1 - dampening) * g      (when momentum != 0)
    g = g + momentum * b if nesterov else b                           (when momentum != 0)
    p = p - lr * g
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        if not group["momentum"] >= 0:
            raise ValueError(f"momentum must be >= 0, got {group['momentum']}")
        if not group["weight_decay"] >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {group['weight_decay']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "nesterov=True needs momentum > 0 and dampening = 0, got "
                f"momentum={group['momentum']}, dampening={group['dampening']}"
            )

    def _update(self, param: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * param
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        param -= group["lr"] * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's rule, bias-corrected; weight decay is added to the gradient
    (L2), as ``torch.optim.Adam`` does. At step t::

        g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g²
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    decoupled = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        beta1, beta2 = group["betas"]
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {group['betas']}")
        if not group["eps"] >= 0:
            raise ValueError(f"eps must be >= 0, got {group['eps']}")
        if not group["weight_decay"] >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {group['weight_decay']}")

    def _update(self, param: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        xp = array_module(param)
        lr, (beta1, beta2), decay = group["lr"], group["betas"], group["weight_decay"]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(param)
            state["exp_avg_sq"] = xp.zeros_like(param)
        state["step"] += 1
        t = state["step"]
        if decay and self.decoupled:
            param *= 1 - lr * decay
        elif decay:
            grad = grad + decay * param
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        denom = xp.sqrt(v) / math.sqrt(1 - beta2**t) + group["eps"]
        param -= (lr / (1 - beta1**t)) * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's rule: first
    ``p = p * (1 - lr * weight_decay)``, then the Adam step without decay in the gradient.
    The default ``weight_decay`` is 0.01, as in ``torch.optim.AdamW``."""

    decoupled = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
