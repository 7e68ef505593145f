"""``GradScaler``: dynamic loss scaling for training in float16, with PyTorch's names and defaults.

A float16 gradient below half of 2**-24 (its smallest subnormal) rounds to zero. Multiplying the
loss by a large factor ``S`` before ``backward`` multiplies every gradient by ``S`` and lifts the
small ones into float16's range; ``unscale_`` divides them by ``S`` again (in float32) before the
optimiser uses them. If ``S`` is too large, some gradient overflows to inf (or becomes NaN): the
scaler then skips that step and halves ``S``; after ``growth_interval`` steps without an overflow
it doubles ``S``. One iteration::

    scaler = cudcn.optim.GradScaler()
    loss = cudcn.functional.cross_entropy(net(x), y)
    scaler.scale(loss).backward()
    scaler.step(opt)        # unscale_(opt) unless done, then opt.step() unless a gradient is inf/NaN
    scaler.update()
    opt.zero_grad()

Differences from ``torch.amp.GradScaler``, all because cudcn optimisers keep float32 master copies of
16-bit parameters (:mod:`cudcn.optim.optimizers`): ``unscale_`` replaces the gradient of a float16 or
bfloat16 parameter by a float32 array (dividing in 16 bits would flush the small gradients to zero
again), where PyTorch refuses 16-bit gradients; and ``scale`` multiplies a 16-bit loss in float32, so
the scaled loss itself cannot overflow (the gradients still flow through the 16-bit graph, so a
float16 model skips its first step at the default ``init_scale = 2**16``, just above float16's
largest value 65504).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, cast

import numpy as np

from cudcn.arrays import array_module
from cudcn.autograd import Tensor
from cudcn.dtypes import compute_dtype, is_half_dtype
from cudcn.optim.optimizers import Optimizer

__all__ = ["GradScaler"]

READY, UNSCALED, STEPPED = "ready", "unscaled", "stepped"  # an optimiser's stage in one iteration
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the scale is a float32 number, as in PyTorch


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    # cast: typeshed's numbers.Real declares only < and <=, every Real type compares both ways
    if not (math.isfinite(value) and 0 < cast(float, value) <= FLOAT32_MAX):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class GradScaler:
    """Dynamic loss scaling (see the module docstring), as ``torch.amp.GradScaler``.

    Args:
        init_scale: the first scale factor S (> 0).
        growth_factor: S is multiplied by it after ``growth_interval`` steps in a row without
            inf/NaN gradients (> 1).
        backoff_factor: S is multiplied by it after a step with an inf/NaN gradient (in (0, 1)).
        growth_interval: the number of consecutive good steps before S grows (int >= 1).
        enabled: False makes every method a pass-through (``scale`` returns the loss, ``step``
            calls ``optimizer.step()``), so one script serves float32 and float16 runs.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ) -> None:
        self._enabled = bool(enabled)
        self._scale = _positive("init_scale", init_scale)
        self._set_factors(growth_factor, backoff_factor, growth_interval)
        self._growth_tracker = 0
        self._per_optimizer: dict[int, dict[str, Any]] = {}

    def _set_factors(self, growth_factor: Any, backoff_factor: Any, growth_interval: Any) -> None:
        if _positive("growth_factor", growth_factor) <= 1:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor}")
        if _positive("backoff_factor", backoff_factor) >= 1:
            raise ValueError(f"backoff_factor must lie in (0, 1), got {backoff_factor}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, numbers.Integral):
            raise TypeError(f"growth_interval must be an int, got {growth_interval!r}")
        if growth_interval < 1:
            raise ValueError(f"growth_interval must be >= 1, got {growth_interval}")
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)

    def is_enabled(self) -> bool:
        """Whether scaling is on (``enabled`` at construction)."""
        return self._enabled

    def get_scale(self) -> float:
        """The current scale factor S (1.0 when disabled)."""
        return self._scale if self._enabled else 1.0

    def scale(self, outputs: Any) -> Any:
        """``outputs * S``: a Tensor (a 16-bit one is first cast to float32), or a list/tuple of
        Tensors; ``outputs`` itself when disabled."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        if not isinstance(outputs, Tensor):
            raise TypeError(
                f"outputs must be a cudcn.Tensor or a list/tuple of them, got {type(outputs).__name__}"
            )
        if is_half_dtype(outputs.dtype):
            outputs = outputs.astype(compute_dtype(outputs.dtype))
        return outputs * self._scale

    def _state(self, optimizer: Optimizer) -> dict[str, Any]:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a cudcn.optim.Optimizer, got {optimizer!r}")
        return self._per_optimizer.setdefault(id(optimizer), {"stage": READY})

    def unscale_(self, optimizer: Optimizer) -> None:
        """Divide the gradients of ``optimizer``'s parameters by S (call it before clipping them)
        and record whether any is inf or NaN, agreed over the ranks for a
        ``cudcn.distributed.DistributedOptimizer``. float32/float64 gradients are divided in
        place; a 16-bit parameter's gradient becomes a new float32 array. At most once per
        optimiser between two ``update`` calls, and not after ``step``."""
        if not self._enabled:
            return
        state = self._state(optimizer)
        if state["stage"] == UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update()")
        if state["stage"] == STEPPED:
            raise RuntimeError("unscale_() is being called after step()")
        inverse = 1.0 / self._scale
        finite = True
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if is_half_dtype(p.grad.dtype):
                    p.grad = p.grad.astype(compute_dtype(p.grad.dtype)) * np.float32(inverse)
                else:
                    p.grad *= inverse
                finite = finite and bool(array_module(p.grad).isfinite(p.grad).all())
        state["found_inf"] = optimizer.found_inf_on_any_rank(not finite)
        state["stage"] = UNSCALED

    def step(self, optimizer: Optimizer, *args: Any, **kwargs: Any) -> Any:
        """``unscale_(optimizer)`` unless already done, then ``optimizer.step(*args, **kwargs)``
        unless a gradient was inf/NaN (then the step is skipped and None returned). Closures are
        not supported while enabled (the loss must be scaled before its backward)."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("closure use is not supported while GradScaler is enabled")
        state = self._state(optimizer)
        if state["stage"] == STEPPED:
            raise RuntimeError("step() has already been called since the last update()")
        if state["stage"] == READY:
            self.unscale_(optimizer)
        state["stage"] = STEPPED
        if state["found_inf"]:
            return None
        return optimizer.step(*args, **kwargs)

    def update(self, new_scale: float | Tensor | None = None) -> None:
        """End the iteration: set S to ``new_scale`` when given; otherwise multiply S by
        ``backoff_factor`` if any optimiser stepped (or unscaled) this iteration found an inf/NaN
        gradient, or by ``growth_factor`` after ``growth_interval`` good iterations in a row."""
        if not self._enabled:
            return
        if new_scale is not None:
            if isinstance(new_scale, Tensor):
                new_scale = new_scale.item()
            self._scale = _positive("new_scale", new_scale)
        else:
            found = [s["found_inf"] for s in self._per_optimizer.values() if "found_inf" in s]
            if not found:
                raise RuntimeError("no inf checks were recorded prior to update()")
            if any(found):
                self._scale *= self._backoff_factor
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    grown = self._scale * self._growth_factor
                    if grown <= FLOAT32_MAX:
                        self._scale = grown
                    self._growth_tracker = 0
        self._per_optimizer.clear()

    def state_dict(self) -> dict[str, Any]:
        """``{"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}``
        as in PyTorch; empty when disabled."""
        if not self._enabled:
            return {}
        return {
            "scale": self._scale,
            "growth_factor": self._growth_factor,
            "backoff_factor": self._backoff_factor,
            "growth_interval": self._growth_interval,
            "_growth_tracker": self._growth_tracker,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (nothing happens when disabled). All or nothing:
        a value out of range raises and changes nothing."""
        if not self._enabled:
            return
        if not state_dict:
            raise RuntimeError(
                "the source state dict is empty, possibly because it was saved from a disabled GradScaler"
            )
        missing = [k for k in self.state_dict() if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict lacks {missing}: expected what GradScaler.state_dict() returns")
        values = {k: v.item() if hasattr(v, "item") else v for k, v in state_dict.items()}
        tracker = values["_growth_tracker"]
        if isinstance(tracker, bool) or not isinstance(tracker, numbers.Integral) or tracker < 0:
            raise TypeError(f"state_dict['_growth_tracker'] must be an int >= 0, got {tracker!r}")
        checked = GradScaler(  # all or nothing: every value checked by the constructor's rules first
            _positive("state_dict['scale']", values["scale"]),
            values["growth_factor"],
            values["backoff_factor"],
            values["growth_interval"],
        )
        self._set_factors(checked._growth_factor, checked._backoff_factor, checked._growth_interval)
        self._scale, self._growth_tracker = checked._scale, int(tracker)

    def __repr__(self) -> str:
        if not self._enabled:
            return "GradScaler(enabled=False)"
        return (
            f"GradScaler(scale={self._scale}, growth_factor={self._growth_factor}, "
            f"backoff_factor={self._backoff_factor}, growth_interval={self._growth_interval})"
        )
