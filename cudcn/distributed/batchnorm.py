"""Batch normalisation with the batch statistics of every rank: ``sync_batch_norm``.

The same computation as :func:`cudcn.ops.norm.batch_norm` (its ``BatchNormFunction``), with each
per-channel sum of the batch added over the ranks:

* forward: one allreduce of (Σx, count), then one of Σ(x - mean)² — two passes, as the local
  batch norm does, because the one-pass E[x²] - E[x]² cancels catastrophically in float32 when
  |mean| is large against the standard deviation;
* backward: one allreduce of (Σdy, Σdy·x̂), divided by the global count, for the input's
  gradient. The weight and bias gradients stay this rank's sums: ``DistributedOptimizer``'s mean
  over the ranks then gives the gradient of the mean loss over the global batch.

The sums travel in one float64 buffer per allreduce (counts are exact in it). Each allreduce checks
its size and dtype across ranks first, so ranks that normalise different layers get a ValueError.
"""

from __future__ import annotations

from typing import Any

from cudcn.arrays import Array, array_module
from cudcn.distributed.comm import Communicator
from cudcn.ops._checks import check_bool
from cudcn.ops.norm import BatchNormFunction, _array

__all__ = ["SyncBatchNormFunction", "sync_batch_norm"]


class SyncBatchNormFunction(BatchNormFunction):
    """``BatchNormFunction`` whose batch sums are summed over the ranks of ``comm``."""

    # The extra required keyword ``comm`` is deliberate: SyncBatchNormFunction.apply always gets it.
    def forward(self, input, weight, bias, *, comm, **params):  # type: ignore[override]
        self.comm = comm
        return super().forward(input, weight, bias, **params)

    def sum_over_ranks(self, values: list[Any]) -> list[Any]:
        """Add each (C,) array and each int of ``values`` over the ranks (one allreduce)."""
        arrays = [v for v in values if not isinstance(v, int)]
        xp = array_module(arrays[0])
        pieces = [xp.asarray(v, dtype=xp.float64).reshape(-1) for v in values]
        self.comm.check_agreement(
            "SyncBatchNorm",
            [
                f"{len(arrays)} sums over {arrays[0].size} channels, {arrays[0].dtype}",
                f"{len(values) - len(arrays)} counts",
            ],
        )
        buffer = self.comm.allreduce(xp.concatenate(pieces), "sum", check=False)
        out, offset = [], 0
        for v, piece in zip(values, pieces, strict=True):
            total = buffer[offset : offset + piece.size]
            offset += piece.size
            out.append(int(total[0]) if isinstance(v, int) else total.astype(v.dtype))
        return out


def sync_batch_norm(
    input: Array,
    running_mean: Array | None,
    running_var: Array | None,
    weight: Array | None = None,
    bias: Array | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    comm: Communicator,
) -> Array:
    """:func:`cudcn.ops.norm.batch_norm` with the batch statistics (and their gradients) taken over
    the union of every rank's batch; without ``training`` it is exactly ``batch_norm`` and
    communicates nothing.

    Args:
        input: (B_r, C) or (B_r, C, *spatial), B_r this rank's batch (may differ between ranks).
        running_mean, running_var, weight, bias, training, momentum, eps: as in ``batch_norm``;
            the running statistics are updated from the global mean and (unbiased) variance, so
            they stay identical on every rank.
        comm: the ranks' communicator.

    Returns:
        An array or Tensor of ``input``'s shape.
    """
    return SyncBatchNormFunction.apply(
        input,
        weight,
        bias,
        comm=comm,
        running_mean=_array(running_mean),
        running_var=_array(running_var),
        training=check_bool("training", training),
        momentum=momentum,
        eps=eps,
    )
