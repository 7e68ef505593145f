"""CuPy arrays on the 'nccl' backend (1 rank, one GPU) or the 'mpi' backend (2 ranks, staged
through the host): the collectives, and 2 SGD steps of a SyncBatchNorm net on the GPU against the
same steps on NumPy. Rank 0 writes a JSON report to the path named on the command line."""

import json
import sys

import cupy
import numpy as np
from mpi4py import MPI

import cudcn.distributed as dist
from cudcn import functional as F
from cudcn import nn, optim

out_path, backend = sys.argv[1], sys.argv[2]
comm = dist.init(backend)
rank, size = comm.rank, comm.size
report = {"backend": comm.backend, "size": size}
a = cupy.arange(6, dtype=cupy.float64) * (rank + 1)
report["sum"] = comm.allreduce(a, "sum").get().tolist()
report["max"] = comm.allreduce(cupy.array([rank, -rank], cupy.int64), "max").get().tolist()
report["broadcast"] = comm.broadcast(cupy.full(3, float(rank)), root=size - 1).get().tolist()


def run(device):
    rng = np.random.default_rng(0)
    net = nn.Sequential(
        nn.DeformConv2dPack(1, 4, 3, padding=1, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.GlobalAvgPool2d(),
        nn.Linear(4, 3, rng=rng),
    ).to(np.float64)
    nn.init.uniform_(net[0].conv_offset.weight, -0.5, 0.5, rng)
    if device == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net.to("cuda"), comm)
        opt = dist.DistributedOptimizer(optim.SGD(net.parameters(), lr=0.1, momentum=0.9), comm)
    else:
        opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    data = np.random.default_rng(1)
    for _ in range(2):
        x, y = data.standard_normal((4 * size, 1, 8, 8)), data.integers(0, 3, 4 * size)
        if device == "cuda":
            x, y = (
                cupy.asarray(x[rank * 4 : rank * 4 + 4]),
                cupy.asarray(y[rank * 4 : rank * 4 + 4]),
            )
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: (v.get() if hasattr(v, "get") else v) for k, v in net.state_dict().items()}


gpu, cpu = run("cuda"), run("cpu")
report["max_difference_to_numpy"] = max(float(np.max(np.abs(gpu[k] - cpu[k]))) for k in cpu)
states = MPI.COMM_WORLD.gather(gpu, root=0)
if rank == 0:
    report["replicas_identical"] = all(np.array_equal(s[k], states[0][k]) for s in states for k in states[0])
    with open(out_path, "w") as f:
        json.dump(report, f)
