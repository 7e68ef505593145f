"""Rank 1 raises while rank 0 waits in an allreduce that rank 1 never joins.

The job must end on its own, non-zero: under ``python -m mpi4py`` (mpi4py aborts every rank) and
under plain ``python`` (the excepthook ``cudcn.distributed.init`` installs aborts them). If rank 0
ever got past the allreduce it would write the file named on the command line.
"""

import sys

import numpy as np

import cudcn.distributed as dist

comm = dist.init()
assert comm.size == 2, comm
comm.barrier()
if comm.rank == 1:
    raise RuntimeError("rank 1 fails on purpose")
comm.allreduce(np.zeros(4))
with open(sys.argv[1], "w") as f:
    f.write("rank 0 finished an allreduce that rank 1 never joined")
