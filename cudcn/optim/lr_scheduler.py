"""Learning-rate schedules with PyTorch's names and rules, as in ``torch.optim.lr_scheduler``:
StepLR, CosineAnnealingLR and OneCycleLR, on a shared :class:`LRScheduler` base."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from cudcn.optim.optimizers import Optimizer

__all__ = ["CosineAnnealingLR", "LRScheduler", "OneCycleLR", "StepLR"]


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
        """Restore the epoch counter and base rates, and set the learning rates accordingly. All
        or nothing: both are checked first, and an error changes nothing."""
        last_epoch = _saved_epoch(state)
        base_lrs = state.get("base_lrs")
        groups = len(self.optimizer.param_groups)
        if not isinstance(base_lrs, (list, tuple)) or len(base_lrs) != groups:
            raise ValueError(f"state['base_lrs'] must hold one rate per group ({groups}), got {base_lrs!r}")
        if not all(isinstance(r, numbers.Real) and not isinstance(r, bool) for r in base_lrs):
            raise TypeError(f"state['base_lrs'] must hold numbers, got {base_lrs!r}")
        self.last_epoch, self.base_lrs = last_epoch, list(base_lrs)
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
        self,
        optimizer: Optimizer,
        max_lr: float | Sequence[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a cudcn.optim.Optimizer, got {optimizer!r}")
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("give total_steps, or both epochs and steps_per_epoch")
            total_steps = _positive_int("epochs", epochs) * _positive_int("steps_per_epoch", steps_per_epoch)
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
        ends = [rise, 2 * rise, self.total_steps - 1] if three_phase else [rise, self.total_steps - 1]
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
            raise ValueError(f"tried to step {step} times; the schedule has total_steps = {self.total_steps}")
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
        """Restore the step counter and set the rates (and momentum) for it; all or nothing."""
        last_epoch = _saved_epoch(state)
        if last_epoch > self.total_steps:
            raise ValueError(
                f"state['last_epoch'] is {last_epoch}; the schedule has total_steps = {self.total_steps}"
            )
        self.last_epoch = last_epoch
        self._apply()


def _saved_epoch(state: Any) -> int:
    """``state["last_epoch"]``, checked to be an int >= 0 (a NumPy integer or 0-d array is fine)."""
    if not isinstance(state, Mapping) or "last_epoch" not in state:
        raise ValueError(f"expected a scheduler's state_dict() with 'last_epoch', got {state!r}")
    value = state["last_epoch"]
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise TypeError(f"state['last_epoch'] must be an int >= 0, got {value!r}")
    return int(value)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value
