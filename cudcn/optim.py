"""Optimisers and learning-rate schedules with PyTorch's update rules.

Parameters are :class:`cudcn.Tensor` objects (usually :class:`cudcn.nn.Parameter`); an optimiser reads
``p.grad`` and updates ``p.data`` in place, so it keeps working after ``Module.to`` only if the module
is moved *before* the optimiser is built (as in PyTorch). Parameters whose ``grad`` is ``None`` are
skipped. Parameter groups are dicts with a ``"params"`` list and their own hyperparameters; missing ones
come from the optimiser's defaults::

    opt = cudcn.optim.SGD(
        [{"params": net.body.parameters()}, {"params": offset_params, "lr": 0.01}],
        lr=0.1, momentum=0.9,
    )
    sched = cudcn.optim.StepLR(opt, step_size=10, gamma=0.1)
    for epoch in range(30):
        ...  # loss.backward(); opt.step(); opt.zero_grad()
        sched.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cudcn.autograd import Tensor, enable_grad
from cudcn.backends import array_module

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "LRScheduler",
    "OneCycleLR",
    "Optimizer",
    "StepLR",
]


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

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; returns ``closure()`` when one is given
        (the closure re-evaluates the loss and calls ``backward``)."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, self.state.setdefault(id(p), {}), group)
        return loss

    def _update(self, p: Tensor, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}`` as in PyTorch;
        parameters are numbered in group order. The state's arrays are not copied."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[key]: dict(s) for key, s in self.state.items() if key in index and s}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and state saved by :meth:`state_dict` from an optimiser with the
        same group sizes; state arrays are copied into each parameter's array library."""
        groups = state_dict["param_groups"]
        sizes = [len(g["params"]) for g in self.param_groups]
        saved = [len(g["params"]) for g in groups]
        if sizes != saved:
            raise ValueError(f"state_dict has group sizes {saved}, this optimiser has {sizes}")
        by_index = {}
        for group, saved_group in zip(self.param_groups, groups, strict=True):
            for p, i in zip(group["params"], saved_group["params"], strict=True):
                by_index[i] = p
            group.update({k: v for k, v in saved_group.items() if k != "params"})
        self.state = {}
        for i, s in state_dict["state"].items():
            p = by_index[int(i)]
            xp = array_module(p.data)
            self.state[id(p)] = {
                k: xp.array(v, copy=True) if hasattr(v, "shape") else v for k, v in s.items()
            }


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
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov,
        )  # fmt: skip
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

    def _update(self, p: Tensor, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * p.data
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        p.data -= group["lr"] * grad


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
        super().__init__(
            params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        )

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        beta1, beta2 = group["betas"]
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {group['betas']}")
        if not group["eps"] >= 0:
            raise ValueError(f"eps must be >= 0, got {group['eps']}")
        if not group["weight_decay"] >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {group['weight_decay']}")

    def _update(self, p: Tensor, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        xp = array_module(p.data)
        lr, (beta1, beta2), decay = group["lr"], group["betas"], group["weight_decay"]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        if decay and self.decoupled:
            p.data *= 1 - lr * decay
        elif decay:
            grad = grad + decay * p.data
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        denom = xp.sqrt(v) / math.sqrt(1 - beta2**t) + group["eps"]
        p.data -= (lr / (1 - beta1**t)) * (m / denom)


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


class LRScheduler:
    """Base of the schedules: stores each group's ``initial_lr`` and sets ``group["lr"]`` from the
    epoch counter. Construction sets epoch 0 (the initial learning rates); each :meth:`step`
    advances one epoch, as PyTorch's schedulers do."""

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a cudcn.optim.Optimizer, got {optimizer!r}")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def lr_at(self, base_lr: float, epoch: int) -> float:
        """The learning rate of a group with initial rate ``base_lr`` at ``epoch``."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance one epoch and set every group's learning rate."""
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The learning rates set by the last step, one per group."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """``{"last_epoch": ..., "base_lrs": [...]}``."""
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epoch counter and base rates, and set the learning rates accordingly."""
        self.last_epoch = int(state["last_epoch"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = self.lr_at(base, self.last_epoch)


class StepLR(LRScheduler):
    """``lr = initial_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size must be an int >= 1, got {step_size!r}")
        self.step_size = step_size
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def lr_at(self, base_lr: float, epoch: int) -> float:
        return base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``: from the initial
    rate at epoch 0 down to ``eta_min`` at ``T_max`` (and back up after, periodically, as PyTorch's
    schedule does without restarts)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        if isinstance(T_max, bool) or not isinstance(T_max, int) or T_max < 1:
            raise ValueError(f"T_max must be an int >= 1, got {T_max!r}")
        self.T_max = T_max
        self.eta_min = float(eta_min)
        super().__init__(optimizer)

    def lr_at(self, base_lr: float, epoch: int) -> float:
        cos = math.cos(math.pi * epoch / self.T_max)
        return self.eta_min + (base_lr - self.eta_min) * (1 + cos) / 2


class OneCycleLR(LRScheduler):
    """The one-cycle policy (Smith & Topin), ``torch.optim.lr_scheduler.OneCycleLR``'s rule, stepped
    once per batch. The rate rises from ``max_lr / div_factor`` to ``max_lr`` over the first
    ``pct_start * total_steps - 1`` steps, then falls to ``max_lr / div_factor / final_div_factor`` at
    step ``total_steps - 1`` (``three_phase``: back to the initial rate at ``2 * pct_start *
    total_steps - 2``, then down to the minimum). Each phase interpolates with
    ``end + (start - end) * (1 + cos(pi * pct)) / 2`` (``anneal_strategy="cos"``) or linearly, ``pct``
    the fraction of the phase done. With ``cycle_momentum`` the momentum (SGD's ``momentum``, Adam's
    ``beta1``) moves the opposite way between ``max_momentum`` and ``base_momentum``.

    Args:
        optimizer: the optimiser; its groups' own ``lr`` are replaced.
        max_lr: the peak rate, one float or one per group.
        total_steps: the number of steps (or give ``epochs`` and ``steps_per_epoch``).
        pct_start: the fraction of the cycle spent rising (0 < pct_start < 1).
        div_factor, final_div_factor: initial rate ``max_lr / div_factor``, final
            ``initial / final_div_factor``.

    Stepping more than ``total_steps`` times raises ``ValueError``, as in PyTorch.
    """

    def __init__(
        self, optimizer: Optimizer, max_lr: float | Sequence[float], total_steps: int | None = None,
        epochs: int | None = None, steps_per_epoch: int | None = None, pct_start: float = 0.3,
        anneal_strategy: str = "cos", cycle_momentum: bool = True, base_momentum: float = 0.85,
        max_momentum: float = 0.95, div_factor: float = 25.0, final_div_factor: float = 1e4,
        three_phase: bool = False,
    ) -> None:  # fmt: skip
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a cudcn.optim.Optimizer, got {optimizer!r}")
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("give total_steps, or both epochs and steps_per_epoch")
            total_steps = _positive_int("epochs", epochs) * _positive_int(
                "steps_per_epoch", steps_per_epoch
            )
        self.total_steps = _positive_int("total_steps", total_steps)
        if not 0 < pct_start < 1:
            raise ValueError(f"pct_start must lie in (0, 1), got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        if not (div_factor > 0 and final_div_factor > 0):
            raise ValueError(
                f"div_factor and final_div_factor must be > 0, got {div_factor}, {final_div_factor}"
            )
        groups = optimizer.param_groups
        max_lrs = list(max_lr) if isinstance(max_lr, Sequence) else [max_lr] * len(groups)
        if len(max_lrs) != len(groups):
            raise ValueError(f"max_lr has {len(max_lrs)} values for {len(groups)} groups")
        self.anneal_strategy = anneal_strategy
        rise = float(pct_start * self.total_steps) - 1
        ends = (
            [rise, 2 * rise, self.total_steps - 1] if three_phase else [rise, self.total_steps - 1]
        )
        # (end step, which rate it starts from, which it ends at); momentum runs the other way
        names = ["initial", "max", "initial", "min"] if three_phase else ["initial", "max", "min"]
        self.phases = list(zip(ends, names[:-1], names[1:], strict=True))
        momentum_key = "betas" if groups and "betas" in groups[0] else "momentum"
        if cycle_momentum and momentum_key not in groups[0]:
            raise ValueError("cycle_momentum needs an optimiser with momentum or betas")
        self.cycle_momentum, self.momentum_key = cycle_momentum, momentum_key
        for group, peak in zip(groups, max_lrs, strict=True):
            initial = peak / div_factor
            group.update(initial_lr=initial, max_lr=peak, min_lr=initial / final_div_factor)
            if cycle_momentum:
                group.update(base_momentum=base_momentum, max_momentum=max_momentum)
        self.optimizer = optimizer
        self.base_lrs = [g["initial_lr"] for g in groups]
        self.last_epoch = 0
        self._apply()

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "linear":
            return start + (end - start) * pct
        return end + (start - end) * (1 + math.cos(math.pi * pct)) / 2

    def _at(self, values: dict[str, float], step: int) -> float:
        start_step = 0.0
        for i, (end_step, start, end) in enumerate(self.phases):
            if step <= end_step or i == len(self.phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                return self._anneal(values[start], values[end], pct)
            start_step = end_step
        raise AssertionError("unreachable")

    def _apply(self) -> None:
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(
                f"tried to step {step} times; the schedule has total_steps = {self.total_steps}"
            )
        for group in self.optimizer.param_groups:
            rates = {"initial": group["initial_lr"], "max": group["max_lr"], "min": group["min_lr"]}
            group["lr"] = self._at(rates, step)
            if self.cycle_momentum:
                low, high = group["base_momentum"], group["max_momentum"]
                m = self._at({"initial": high, "max": low, "min": high}, step)
                if self.momentum_key == "betas":
                    group["betas"] = (m, group["betas"][1])
                else:
                    group["momentum"] = m

    def state_dict(self) -> dict[str, Any]:
        """``{"last_epoch": ...}`` (the rates live in the optimiser's groups)."""
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_epoch = int(state["last_epoch"])
        self._apply()


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value
