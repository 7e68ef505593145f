"""Communicators: the collectives every rank calls together, over MPI (mpi4py) or in one process.

Notation: ``size`` processes (ranks) numbered ``0 .. size - 1``; every rank runs the same script.
A collective (``allreduce``, ``broadcast``, ``barrier``) must be called by every rank, in the same
order, with arrays of the same shape and dtype. Before each one the ranks agree on what comes next
(one 16-byte allreduce of a hash of the collective's name and arguments, see
``cudcn.distributed.agreement``): when they disagree, every rank raises an error naming each rank's
view instead of hanging or exchanging mismatched bytes. A rank whose own arguments are wrong joins
that agreement with its error, so the others raise too. ``barrier`` is that agreement alone.

The MPI communicator is in ``cudcn.distributed.mpi``, the NCCL one in ``cudcn.distributed.nccl``;
mpi4py is imported only when one is created, so ``import cudcn`` never imports it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cudcn.arrays import Array, is_cupy_array
from cudcn.distributed.agreement import Call, digest, disagreement

__all__ = [
    "Communicator",
    "LocalCommunicator",
    "default_communicator",
    "init",
    "launched_with_ranks",
]

OPS = ("sum", "mean", "max")
DTYPES = tuple(np.dtype(t) for t in ("float32", "float64", "int32", "int64"))
BACKENDS = ("auto", "mpi", "nccl", "local")
# Launchers that start several ranks set one of these (MPICH/Intel MPI, Open MPI, MVAPICH).
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def check_array(name: str, array: Any) -> None:
    """``array`` is a NumPy or CuPy array of a dtype MPI and NCCL both reduce."""
    if not (isinstance(array, np.ndarray) or is_cupy_array(array)):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(array).__name__}")
    if array.dtype not in DTYPES:
        raise TypeError(f"{name} must have dtype {', '.join(map(str, DTYPES))}, got {array.dtype}")


def contiguous(array: Array) -> Array:
    """``array`` itself when C-contiguous, else a C-contiguous copy (written back by the caller)."""
    if array.flags.c_contiguous:
        return array
    xp = importlib.import_module("cupy") if is_cupy_array(array) else np
    return xp.ascontiguousarray(array)


class Communicator:
    """The collectives of one rank. Subclasses implement ``_reduce``, ``_broadcast`` and
    ``_gather_objects``; this class validates the arguments and has the ranks agree on them.

    Attributes:
        rank: this process's rank, ``0 <= rank < size``.
        size: the number of ranks.
        backend: ``"local"``, ``"mpi"`` or ``"nccl"``.
    """

    rank: int = 0
    size: int = 1
    backend: str = ""
    _sequence: int = 0  # agreements so far (labels messages: "allreduce #12")
    _current: str = "no collective yet"  # the last agreement, for a payload that never completes

    def allreduce(self, array: Array, op: str = "sum", *, check: bool = True) -> Array:
        """Reduce ``array`` over all ranks, in place, and return it.

        Args:
            array: a NumPy or CuPy array (float32, float64, int32 or int64), any shape, the same
                shape and dtype on every rank.
            op: ``"sum"``, ``"mean"`` (floating arrays only) or ``"max"``.
            check: agree on the shape, dtype and op across ranks first (``False`` only for callers
                that checked a whole sequence of collectives with :meth:`check_agreement`: then
                nothing is exchanged first, and an argument error is raised on this rank only).

        Returns:
            ``array``, holding the element-wise reduction on every rank.
        """

        def validate() -> list[str]:
            check_array("array", array)
            if op not in OPS:
                raise ValueError(f"op must be one of {OPS}, got {op!r}")
            if op == "mean" and array.dtype.kind != "f":
                raise TypeError(f"op 'mean' needs a floating array, got dtype {array.dtype}")
            return [f"op {op}", f"dtype {array.dtype}", f"shape {tuple(array.shape)}"]

        self._validate_and_agree("allreduce", validate, check)
        if self.size == 1:
            return array
        buffer = contiguous(array)
        self._reduce(buffer, "max" if op == "max" else "sum")
        if op == "mean":
            buffer /= self.size
        if buffer is not array:
            array[...] = buffer
        return array

    def broadcast(self, array: Array, root: int = 0, *, check: bool = True) -> Array:
        """Copy rank ``root``'s ``array`` into ``array`` on every rank, in place, and return it.

        Args:
            array: a NumPy or CuPy array, the same shape and dtype on every rank.
            root: the rank whose values are sent, ``0 <= root < size``.
            check: as in :meth:`allreduce`.
        """

        def validate() -> list[str]:
            check_array("array", array)
            if isinstance(root, bool) or not isinstance(root, (int, np.integer)):
                raise TypeError(f"root must be an int, got {type(root).__name__}")
            if not 0 <= root < self.size:
                raise ValueError(f"root must be in [0, {self.size}), got {root}")
            return [f"root {root}", f"dtype {array.dtype}", f"shape {tuple(array.shape)}"]

        self._validate_and_agree("broadcast", validate, check)
        if self.size == 1:
            return array
        buffer = contiguous(array)
        self._broadcast(buffer, int(root))
        if buffer is not array:
            array[...] = buffer
        return array

    def barrier(self) -> None:
        """Wait until every rank has called ``barrier``: an agreement with no payload, so a rank
        in another collective, or one that left, makes every rank raise (see :meth:`check_agreement`)."""
        self.check_agreement("barrier", [])

    def check_agreement(self, what: str, items: Sequence[str]) -> None:
        """Raise on every rank unless every rank called ``check_agreement`` with equal ``what`` and
        ``items``: a ``ValueError`` naming the first item that differs when ``what`` is the same
        everywhere, else a ``RuntimeError`` saying what each rank is doing (the ranks are out of
        step: different collectives, or a rank that left the job).

        Costs one allreduce of two int64 (a 64-bit hash of ``what`` and ``items``); only on a
        mismatch are the calls gathered, to name the difference.

        Args:
            what: the operation (``"broadcast_parameters"``), which the other ranks must be in too.
            items: short descriptions (``"conv.weight (8, 1, 3, 3) float32"``), in call order.
        """
        self._agree(Call(what, tuple(str(item) for item in items), None, self._sequence + 1))

    def _validate_and_agree(self, what: str, validate: Callable[[], list[str]], check: bool) -> None:
        """Run ``validate`` (this rank's argument checks, returning the items to agree on) and, with
        ``check``, agree on the call across ranks. A TypeError or ValueError from ``validate`` is
        raised after the agreement, so that the other ranks raise too instead of waiting."""
        try:
            items = validate()
        except (TypeError, ValueError) as exc:
            if check:
                self._agree(Call(what, (), f"{type(exc).__name__}: {exc}", self._sequence + 1))
            raise
        if check:
            self.check_agreement(what, items)

    def _agree(self, call: Call) -> None:
        """Exchange ``call``'s hash with every rank; on a mismatch gather the calls and raise the
        error of :func:`~cudcn.distributed.agreement.disagreement` (a rank with a ``problem`` of
        its own returns instead, for its caller to raise that)."""
        if self.size == 1:
            return
        self._sequence = call.sequence
        self._current = f"{call.what} #{call.sequence}"
        h = digest(call)
        flags = np.array([h, ~h], dtype=np.int64)
        self._reduce(flags, "max")  # max(h) == min(h) on every rank iff all agree
        if flags[0] == ~flags[1]:
            return
        error = disagreement(self._gather_objects(call))
        if call.problem is None:
            raise error

    def _reduce(self, buffer: Array, op: str) -> None:
        raise NotImplementedError

    def _broadcast(self, buffer: Array, root: int) -> None:
        raise NotImplementedError

    def _gather_objects(self, obj: Any) -> list[Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class LocalCommunicator(Communicator):
    """One process, no dependency: every collective returns its input unchanged (after the same
    argument checks), so a data-parallel script also runs as a plain ``python script.py``."""

    backend = "local"

    def _gather_objects(self, obj: Any) -> list[Any]:
        return [obj]


def launched_with_ranks() -> bool:
    """True when this process is one of several ranks: mpi4py.MPI is already imported with a world
    of more than one rank (``python -m mpi4py``), or an MPI launcher's size variable is above 1."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and mpi.COMM_WORLD.Get_size() > 1:
        return True
    return any(os.environ.get(v, "1").strip() not in ("", "0", "1") for v in LAUNCHER_SIZE_VARIABLES)


_default: Communicator | None = None


def init(backend: str = "auto", cuda_aware: bool = False) -> Communicator:
    """Create the communicator of this rank and make it the default (:func:`default_communicator`,
    used by ``SyncBatchNorm(comm=None)`` and wherever ``comm`` is None). Call it on every rank.

    Args:
        backend: ``"mpi"`` (mpi4py), ``"nccl"`` (CuPy arrays over NCCL, one GPU per rank, set up
            over MPI), ``"local"`` (one process), or ``"auto"``: ``"mpi"`` when the process was
            launched as one of several ranks (see :func:`launched_with_ranks`), else ``"local"``.
        cuda_aware: the MPI library takes CuPy device pointers (otherwise CuPy arrays on the
            ``"mpi"`` backend are staged through host memory).

    Returns:
        The :class:`Communicator`. A missing or broken mpi4py raises ImportError naming the extra.
    """
    global _default
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "mpi" if launched_with_ranks() else "local"
    if backend == "local":
        comm: Communicator = LocalCommunicator()
    elif backend == "mpi":
        from cudcn.distributed.mpi import MPICommunicator

        comm = MPICommunicator(cuda_aware)
    else:
        from cudcn.distributed.nccl import NCCLCommunicator

        comm = NCCLCommunicator(cuda_aware)
    _default = comm
    return comm


def default_communicator() -> Communicator:
    """The communicator of the last :func:`init`, or a :class:`LocalCommunicator` if there was none."""
    global _default
    if _default is None:
        _default = LocalCommunicator()
    return _default
