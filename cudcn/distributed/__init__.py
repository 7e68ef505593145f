"""Data-parallel training over MPI (mpi4py, NumPy arrays) and NCCL (cupyx.distributed, CuPy arrays).

Every rank runs the same script on its shard of each global batch::

    import cudcn.distributed as dist

    comm = dist.init()                                   # MPI under mpiexec, else one local rank
    net = cudcn.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    dist.broadcast_parameters(net, comm)                 # rank 0's weights everywhere
    opt = dist.DistributedOptimizer(cudcn.optim.SGD(net.parameters(), lr=0.1), comm)
    sampler = dist.ShardSampler(len(images), comm, shuffle=True, seed=0)
    ...                                                  # loss.backward(); opt.step()

Launch with ``mpiexec -n 4 python -m mpi4py train.py``: ``-m mpi4py`` aborts every rank when one
raises (``init`` also installs that behaviour for uncaught exceptions). No rank waits forever: the
ranks agree on each collective before it, a rank that leaves tells the others at exit, and a wait
longer than ``CUDCN_COLLECTIVE_TIMEOUT`` seconds (default 300) aborts the job (docs/distributed.md,
"Failures"). Nothing here imports mpi4py or CuPy until a communicator needs it.
"""

from cudcn.distributed.batchnorm import sync_batch_norm
from cudcn.distributed.comm import (
    Communicator,
    LocalCommunicator,
    default_communicator,
    init,
    launched_with_ranks,
)
from cudcn.distributed.mpi import MPICommunicator
from cudcn.distributed.optimizer import DistributedOptimizer, broadcast_parameters, plan_buckets
from cudcn.distributed.sampler import ShardSampler

__all__ = [
    "Communicator",
    "DistributedOptimizer",
    "LocalCommunicator",
    "MPICommunicator",
    "ShardSampler",
    "broadcast_parameters",
    "default_communicator",
    "init",
    "launched_with_ranks",
    "plan_buckets",
    "sync_batch_norm",
]
