"""The NCCL communicator: CuPy arrays reduced on the GPUs through ``cupyx.distributed``.

One GPU per rank: a rank uses GPU ``local_rank`` of its node, where ``local_rank`` numbers
the ranks of one node (MPI's shared-memory split). NCCL refuses two ranks on one GPU, so more ranks
than GPUs on a node is an error on every rank. MPI (mpi4py) launches the ranks, exchanges NCCL's id
(``init_process_group(..., use_mpi=True)``) and carries everything else: the cross-rank argument
checks and any NumPy array.
"""

from __future__ import annotations

import importlib

from cudcn.arrays import Array, is_cupy_array
from cudcn.distributed.mpi import MPICommunicator

__all__ = ["NCCLCommunicator"]

CUDA_HINT = "pip install 'cudcn[cuda13]' (or 'cudcn[cuda12]') for CuPy, and NCCL's nvidia-nccl wheel"


class NCCLCommunicator(MPICommunicator):
    """MPI's ranks with an NCCL communicator for CuPy arrays (``backend = "nccl"``).

    Every rank checks that it can run (CuPy and NCCL import, a GPU of its own) and the ranks agree
    on the outcome before NCCL is set up, so one rank's failure is an error on all of them.
    """

    backend = "nccl"

    def __init__(self, cuda_aware: bool = False) -> None:
        super().__init__(cuda_aware)
        problem = None
        try:
            cupy = importlib.import_module("cupy")
            distributed = importlib.import_module("cupyx.distributed")
            node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
            local_rank, local_size = node.Get_rank(), node.Get_size()
            node.Free()
            gpus = cupy.cuda.runtime.getDeviceCount()
            if local_size > gpus:
                problem = (
                    f"NCCL needs one GPU per rank: this node runs {local_size} ranks and has "
                    f"{gpus} GPU(s); start fewer ranks per node or use backend='mpi'"
                )
        except Exception as exc:  # a missing CuPy, driver or NCCL: reported on every rank below
            problem = f"{type(exc).__name__}: {exc} ({CUDA_HINT})"
        failed = self.comm.allgather(problem)
        errors = [f"rank {r}: {p}" for r, p in enumerate(failed) if p is not None]
        if errors:
            raise RuntimeError("cannot start the 'nccl' backend:\n  " + "\n  ".join(errors))
        cupy.cuda.Device(local_rank).use()
        self.device = local_rank
        self.nccl = distributed.init_process_group(self.size, self.rank, backend="nccl", use_mpi=True)

    def _reduce(self, buffer: Array, op: str) -> None:
        if is_cupy_array(buffer):
            self.nccl.all_reduce(buffer, buffer, op)
        else:
            super()._reduce(buffer, op)

    def _broadcast(self, buffer: Array, root: int) -> None:
        if is_cupy_array(buffer):
            self.nccl.broadcast(buffer, root)
        else:
            super()._broadcast(buffer, root)
