"""``ShardSampler``: each rank's share of a dataset's indices, as PyTorch's ``DistributedSampler``."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from cudcn.distributed.comm import Communicator, default_communicator

__all__ = ["ShardSampler"]


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


class ShardSampler:
    """The indices of a dataset of ``n`` items that this rank reads in one epoch.

    Every rank draws the same order (a permutation seeded by ``(seed, epoch)`` when ``shuffle``,
    else ``0 .. n - 1``) and takes every ``size``-th index from position ``rank``. So that every rank
    gets ``len(sampler)`` indices, the order is padded by repeating its start
    (``ceil(n / size)`` each; some items are seen twice per epoch) or, with ``drop_last``, cut to a
    multiple of ``size`` (``n // size`` each; some items are not seen). Call :meth:`set_epoch` at
    the start of each epoch for a new order.

    Creating a sampler is a collective: the ranks check that they all passed the same ``n``,
    ``shuffle``, ``seed`` and ``drop_last`` (otherwise their shards would overlap, or one rank would
    run out of batches and leave the others waiting in the next allreduce), and on a difference
    every rank raises a ``ValueError`` naming it.

    Args:
        n: the number of items (>= 0).
        comm: the communicator whose ``rank`` and ``size`` are used (None: the default one).
        shuffle, seed, drop_last: as above.

    Example::

        sampler = dist.ShardSampler(len(images), comm, shuffle=True, seed=0)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            order = np.fromiter(sampler, dtype=np.int64)   # this rank's indices
    """

    def __init__(
        self,
        n: int,
        comm: Communicator | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.n = _int("n", n, 0)
        comm = default_communicator() if comm is None else comm
        self.rank, self.size = comm.rank, comm.size
        self.shuffle, self.seed, self.drop_last = bool(shuffle), _int("seed", seed, 0), drop_last
        self.epoch = 0
        if drop_last:
            self.num_samples = self.n // self.size
        else:
            self.num_samples = math.ceil(self.n / self.size)
        if isinstance(comm, Communicator):  # not a stand-in with rank and size only
            agreed = [f"dataset length n={self.n}", f"shuffle={self.shuffle}", f"seed={self.seed}"]
            comm.check_agreement("ShardSampler", [*agreed, f"drop_last={bool(drop_last)}"])

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (>= 0) from now on."""
        self.epoch = _int("epoch", epoch, 0)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, (len(self),) int64."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        total = self.num_samples * self.size
        if total > self.n:  # pad by repeating the order from its start (n > 0 here)
            order = np.resize(order, total)
        return order[self.rank : total : self.size].astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"ShardSampler(n={self.n}, rank={self.rank}, size={self.size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, drop_last={self.drop_last}, epoch={self.epoch})"
        )
