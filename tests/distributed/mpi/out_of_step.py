"""Rank 1 leaves, or calls something else, while rank 0 waits in a collective (issue 22's hangs).

``python out_of_step.py <scenario>`` on 2 ranks; every scenario must end the job non-zero, quickly,
with the cause in the output (tests/distributed/test_out_of_step.py). Rank 0 prints "rank 0
finished" only if it got past everything, which it never should.

Scenarios (rank 0 always waits in ``comm.allreduce`` unless said otherwise):

* ``exit``: rank 1's script ends;
* ``sys_exit_0`` / ``sys_exit_1``: rank 1 calls ``sys.exit(0)`` / ``sys.exit(1)``;
* ``barrier``: rank 1 calls ``comm.barrier()`` instead;
* ``sampler``: the ranks pass different dataset lengths to ``ShardSampler`` and loop over their
  shards, one allreduce per batch;
* ``syncbn``: a ``SyncBatchNorm`` forward, in training mode on rank 0 and eval mode on rank 1;
* ``caught_typeerror``: rank 1 passes an int16 array, catches the TypeError and goes on;
* ``stuck``: rank 1 computes far longer than ``CUDCN_COLLECTIVE_TIMEOUT`` before its allreduce.

And one that must end well (exit code 0, "rank 0 finished"): ``late_exit``, rank 1 leaves while
rank 0 computes alone for longer than ``CUDCN_COLLECTIVE_TIMEOUT``, then leaves too.
"""

import sys
import time

import numpy as np

import cudcn.distributed as dist
from cudcn import Tensor, nn

scenario = sys.argv[1]
comm = dist.init()
assert comm.size == 2, comm
comm.barrier()
leaves = comm.rank == 1
x = np.ones(4)

if scenario == "exit":
    if not leaves:
        comm.allreduce(x)
elif scenario in ("sys_exit_0", "sys_exit_1"):
    if leaves:
        sys.exit(int(scenario[-1]))
    comm.allreduce(x)
elif scenario == "barrier":
    if leaves:
        comm.barrier()
    else:
        comm.allreduce(x)
elif scenario == "sampler":
    sampler = dist.ShardSampler(100 + 20 * comm.rank, comm, shuffle=True, seed=0)
    order = sampler.indices()
    for i in range(0, len(order) - 9, 10):  # 5 batches on rank 0, 6 on rank 1
        comm.allreduce(np.array([float(order[i])]))
elif scenario == "syncbn":
    bn = nn.SyncBatchNorm(3, comm=comm)
    bn.train(not leaves)
    bn(Tensor(np.ones((2, 3, 4, 4), np.float32)))
elif scenario == "caught_typeerror":
    try:
        comm.allreduce(np.zeros(4, np.int16) if leaves else x)
    except TypeError as exc:
        print(f"rank {comm.rank} caught: {exc}", flush=True)
    comm.allreduce(x)
elif scenario == "late_exit":
    if not leaves:
        time.sleep(3)
elif scenario == "stuck":
    if leaves:
        time.sleep(120)
    comm.allreduce(x)
else:
    raise SystemExit(f"unknown scenario {scenario!r}")
if not leaves:
    print("rank 0 finished", flush=True)
