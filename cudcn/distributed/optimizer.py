"""Gradient averaging and parameter broadcast: ``DistributedOptimizer`` and ``broadcast_parameters``.

Data parallelism: every rank holds a replica of the model and a shard of the global batch. After
``loss.backward()`` on each rank's shard, :class:`DistributedOptimizer` replaces every gradient by
its mean over the ranks and then runs the wrapped optimiser, so replicas that start equal (see
:func:`broadcast_parameters`) stay equal, and with a mean loss on equal shards the step equals one
single-process step on the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from cudcn.arrays import array_module, is_cupy_array
from cudcn.autograd import Tensor, enable_grad
from cudcn.distributed.comm import Communicator, default_communicator
from cudcn.dtypes import compute_dtype, is_half_dtype, widen
from cudcn.nn.module import Module
from cudcn.optim import Optimizer

__all__ = ["DistributedOptimizer", "broadcast_parameters", "plan_buckets"]

MIB = 2**20


def _describe(name: str, array: Any) -> str:
    library = "cupy" if is_cupy_array(array) else "numpy"
    return f"{name} {tuple(array.shape)} {array.dtype} {library}"


def plan_buckets(params: list[Tensor], bucket_bytes: int) -> list[list[int]]:
    """Split ``params`` (in order) into buckets: runs of consecutive parameters of one dtype and
    array library whose gradient buffer (float32 for 16-bit parameters) holds at most
    ``bucket_bytes`` bytes; a parameter larger than that gets a bucket of its own. Returns the
    indices into ``params`` of each bucket."""
    buckets: list[list[int]] = []
    used, kind = 0, None
    for i, p in enumerate(params):
        nbytes = p.data.size * compute_dtype(p.data.dtype).itemsize
        this = (p.data.dtype, is_cupy_array(p.data))
        if not buckets or this != kind or used + nbytes > bucket_bytes:
            buckets.append([])
            used, kind = 0, this
        buckets[-1].append(i)
        used += nbytes
    return buckets


class DistributedOptimizer(Optimizer):
    """Wrap an optimiser so that ``step()`` first averages every gradient over the ranks.

    Per step, in one fixed order (the parameter groups' order, the same on every rank):

    1. one check that every rank has the same parameters (shapes, dtypes, array library);
    2. one small allreduce of which parameters have a gradient on some rank: a gradient that is
       None here but not elsewhere counts as zeros here, so the collectives stay paired; a gradient
       that is None on every rank stays None, so momentum and weight decay leave that parameter
       alone;
    3. the gradients, packed into buckets of at most ``bucket_mb`` MiB (see :func:`plan_buckets`),
       one ``allreduce(op="mean")`` per bucket, copied back into each ``p.grad``;
    4. the wrapped optimiser's ``step``.

    float16 and bfloat16 gradients are averaged in float32 buffers (the communicators reduce
    float32 and float64; a 16-bit sum of several ranks could also overflow). With a
    :class:`cudcn.optim.GradScaler`, the inf/NaN check is agreed over the ranks (one allreduce of
    the flag in :meth:`found_inf_on_any_rank`), so every rank skips the same steps.

    ``zero_grad``, ``state_dict``, ``load_state_dict``, ``add_param_group``, ``param_groups``,
    ``state`` and ``defaults`` are the wrapped optimiser's, so learning-rate schedules work on
    either. With one rank, ``step`` is the wrapped optimiser's step.

    Args:
        optimizer: a :class:`cudcn.optim.Optimizer`.
        comm: the communicator (None: :func:`~cudcn.distributed.default_communicator`).
        bucket_mb: the bucket size in MiB (> 0); larger buckets mean fewer, larger messages.

    Attributes:
        buckets: the last step's buckets, as lists of indices into the flat parameter list.

    Example::

        opt = dist.DistributedOptimizer(cudcn.optim.SGD(net.parameters(), lr=0.1), comm)
        loss.backward()
        opt.step()
    """

    def __init__(
        self, optimizer: Optimizer, comm: Communicator | None = None, bucket_mb: float = 25.0
    ) -> None:
        if not isinstance(optimizer, Optimizer) or isinstance(optimizer, DistributedOptimizer):
            raise TypeError(f"optimizer must be a cudcn.optim.Optimizer, got {optimizer!r}")
        if isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float)):
            raise TypeError(f"bucket_mb must be a number, got {type(bucket_mb).__name__}")
        if not (math.isfinite(bucket_mb) and bucket_mb > 0):
            raise ValueError(f"bucket_mb must be a finite number > 0, got {bucket_mb}")
        self.optimizer = optimizer
        self.comm = default_communicator() if comm is None else comm
        self.bucket_bytes = max(1, int(bucket_mb * MIB))
        self.buckets: list[list[int]] = []

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> dict[int, dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    def add_param_group(self, group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def found_inf_on_any_rank(self, found: bool) -> bool:
        """True on every rank when some rank's ``found`` is True (one allreduce of an int64)."""
        if self.comm.size == 1:
            return bool(found)
        flag = np.array([int(bool(found))], dtype=np.int64)
        return bool(self.comm.allreduce(flag, "max")[0])

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Average the gradients over the ranks, then run the wrapped optimiser's step; returns
        ``closure()`` when given (it is called first, to recompute the loss and gradients)."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        self.average_gradients()
        self.optimizer.step()
        return loss

    def average_gradients(self) -> None:
        """Steps 1-3 of the class docstring: every ``p.grad`` becomes its mean over the ranks."""
        if self.comm.size == 1:
            return
        params = [p for group in self.param_groups for p in group["params"]]
        self.comm.check_agreement(
            "DistributedOptimizer",
            [_describe(f"parameter {i}", p.data) for i, p in enumerate(params)],
        )
        has_grad = np.array([p.grad is not None for p in params], dtype=np.int64)
        self.comm.allreduce(has_grad, "max", check=False)
        live = [p for p, flag in zip(params, has_grad, strict=True) if flag]
        plan = plan_buckets(live, self.bucket_bytes)
        for bucket in plan:
            self._average_bucket([live[i] for i in bucket])
        index = np.flatnonzero(has_grad)
        self.buckets = [[int(index[i]) for i in bucket] for bucket in plan]

    def _average_bucket(self, params: list[Tensor]) -> None:
        """Pack the gradients of ``params`` (one dtype and library) into one buffer (float32 for
        16-bit parameters), allreduce its mean, and write it back into each ``p.grad`` (rounded to
        its dtype; a new array of the parameter's dtype where ``p.grad`` was None)."""
        xp = array_module(params[0].data)
        sizes = [p.data.size for p in params]
        buffer = xp.empty(sum(sizes), dtype=compute_dtype(params[0].data.dtype))
        offset = 0
        for p, n in zip(params, sizes, strict=True):
            piece = buffer[offset : offset + n]
            if p.grad is None:
                piece[...] = 0
            else:
                piece[...] = p.grad.reshape(-1)
            offset += n
        self.comm.allreduce(buffer, "mean", check=False)
        offset = 0
        for p, n in zip(params, sizes, strict=True):
            mean = buffer[offset : offset + n].reshape(p.data.shape)
            if p.grad is None:
                p.grad = mean.astype(p.dtype)
            else:
                p.grad[...] = mean
            offset += n


def _named_arrays(source: Module | Iterable[Tensor]) -> list[tuple[str, Any]]:
    """(name, array) of a module's parameters then buffers, or of an iterable of Tensors."""
    if isinstance(source, Module):
        named = [(name, p.data) for name, p in source.named_parameters()]
        named += list(source.named_buffers())
    elif isinstance(source, Tensor):
        raise TypeError("broadcast_parameters takes a Module or an iterable of Tensors, got a Tensor")
    else:
        named = []
        for i, t in enumerate(source):
            if not isinstance(t, Tensor):
                raise TypeError(f"tensors[{i}] must be a cudcn.Tensor, got {type(t).__name__}")
            named.append((f"tensors[{i}]", t.data))
    for name, a in named:
        if not (isinstance(a, np.ndarray) or is_cupy_array(a)):
            raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(a).__name__}")
    return named


def broadcast_parameters(
    source: Module | Iterable[Tensor], comm: Communicator | None = None, root: int = 0
) -> None:
    """Copy rank ``root``'s parameters and buffers (BatchNorm statistics) to every rank, in place.

    First checks that every rank has the same names, shapes, dtypes and array libraries (one small
    allreduce); on a mismatch every rank raises a ``ValueError`` naming the first one. Arrays are
    written in place, never reshaped or replaced, so optimisers built on the parameters keep
    working. float16 and bfloat16 arrays travel as float32 copies (exact both ways).

    Args:
        source: a :class:`cudcn.nn.Module` (``named_parameters()`` then ``named_buffers()``) or an
            iterable of Tensors.
        comm: the communicator (None: the default one).
        root: the rank whose values every rank receives.
    """
    comm = default_communicator() if comm is None else comm
    named = _named_arrays(source)
    comm.check_agreement("broadcast_parameters", [f"root {root}"] + [_describe(name, a) for name, a in named])
    for _, a in named:
        if is_half_dtype(a.dtype):
            a[...] = comm.broadcast(widen(a), root, check=False)
        else:
            comm.broadcast(a, root, check=False)
