"""The collectives, their cross-rank checks, the optimiser's buckets and the sampler on 2 ranks.

Every check runs on both ranks; each rank records what it saw, and rank 0 writes the list of both
ranks' records as JSON to the path named on the command line.
"""

import importlib.util
import json
import sys

import numpy as np
from mpi4py import MPI

import cudcn.distributed as dist
from cudcn import Tensor, nn, optim

out_path = sys.argv[1]
comm = dist.init()
assert comm.backend == "mpi" and comm.size == 2, comm
rank = comm.rank
seen = {}


def error_of(fn):
    """The message of the ValueError that ``fn()`` raises (None if it returns)."""
    try:
        fn()
    except ValueError as exc:
        return str(exc)
    return None


# allreduce: sum, mean, max; int64; a strided view; a 0-d array; broadcast from rank 1
a = np.arange(6, dtype=np.float64).reshape(2, 3) * (rank + 1)
seen["sum"] = comm.allreduce(a.copy(), "sum").tolist()
seen["mean"] = comm.allreduce(a.copy(), "mean").tolist()
seen["max"] = comm.allreduce(np.array([rank, -rank], np.int64), "max").tolist()
strided = np.zeros((4, 4))
strided[::2, 1] = rank + 1
view = strided[::2, 1]
seen["strided_returns_view"] = comm.allreduce(view) is view
seen["strided"] = strided.tolist()
seen["scalar"] = float(comm.allreduce(np.array(rank + 0.5)))
seen["broadcast"] = comm.broadcast(np.full(3, float(rank)), root=1).tolist()
comm.barrier()

# mismatches: a ValueError on every rank, and the ranks carry on afterwards
seen["shape_mismatch"] = error_of(lambda: comm.allreduce(np.zeros(3 + rank)))
seen["dtype_mismatch"] = error_of(lambda: comm.allreduce(np.zeros(3, np.float32 if rank else np.float64)))
seen["op_mismatch"] = error_of(lambda: comm.allreduce(np.zeros(3), "max" if rank else "sum"))


def net(width):
    rng = np.random.default_rng(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, rng=rng), nn.BatchNorm2d(width), nn.Linear(width, 2))


seen["broadcast_parameters_mismatch"] = error_of(lambda: dist.broadcast_parameters(net(4 + rank), comm))
seen["optimizer_mismatch"] = error_of(
    lambda: dist.DistributedOptimizer(optim.SGD(net(4 + rank).parameters(), lr=0.1), comm).step()
)
bn = nn.SyncBatchNorm(4 + rank, comm=comm)
seen["sync_batchnorm_mismatch"] = error_of(lambda: bn(Tensor(np.ones((2, 4 + rank, 3, 3), np.float32))))

# broadcast_parameters: in place, every array (buffers too) takes rank 0's values
model = net(4)
for p in model.parameters():
    p.data += rank
model[1].running_mean += rank
model[1].num_batches_tracked += 5 * rank
arrays = [p.data for p in model.parameters()] + list(model.buffers())
dist.broadcast_parameters(model, comm)
after = [p.data for p in model.parameters()] + list(model.buffers())
seen["broadcast_in_place"] = all(a is b for a, b in zip(arrays, after, strict=True))
seen["broadcast_checksum"] = [float(np.sum(a)) for a in after]

# buckets: one parameter larger than a bucket, many small ones, None gradients
big = Tensor(np.zeros(1000), requires_grad=True)  # 8000 bytes
small = [Tensor(np.zeros(3), requires_grad=True) for _ in range(10)]  # 24 bytes each
none_here = Tensor(np.zeros(2), requires_grad=True)  # gradient only on rank 0
frozen = Tensor(np.ones(2), requires_grad=True)  # no gradient anywhere
params = [small[0], big, *small[1:], none_here, frozen]
inner = optim.SGD(params, lr=1.0, momentum=0.9, weight_decay=0.5)
opt = dist.DistributedOptimizer(inner, comm, bucket_mb=100 / 2**20)  # 100-byte buckets
reductions = []
reduce = comm._reduce
comm._reduce = lambda buffer, op: (reductions.append(int(buffer.size)), reduce(buffer, op))
for p in params[:-2]:
    p.grad = np.full(p.shape, rank + 1.0)
none_here.grad = np.full(2, 4.0) if rank == 0 else None
opt.step()
comm._reduce = reduce
seen["buckets"] = opt.buckets
seen["reduction_sizes"] = reductions
seen["after_step"] = {
    "big": big.data[:3].tolist(),
    "small": small[5].data.tolist(),
    "none_here": none_here.data.tolist(),
    "none_here_grad": none_here.grad.tolist(),
    "frozen": frozen.data.tolist(),
    "frozen_grad_is_none": frozen.grad is None,
    "frozen_has_state": id(frozen) in inner.state,
}
seen["passthrough"] = opt.param_groups is inner.param_groups and opt.state_dict() == inner.state_dict()

# SyncBatchNorm on uneven shards (3 and 5 images) against BatchNorm2d on all 8: the output, the
# input gradient of the global loss sum(out * c), the weight and bias gradients summed over the
# ranks, and the running statistics
rng = np.random.default_rng(11)
x, c = rng.standard_normal((8, 2, 3, 3)), rng.standard_normal((8, 2, 3, 3))
mine = slice(0, 3) if rank == 0 else slice(3, 8)
sync, plain = nn.SyncBatchNorm(2, comm=comm).to(np.float64), nn.BatchNorm2d(2).to(np.float64)
for bn in (sync, plain):
    bn.weight.data[...] = [1.5, -0.5]
xs, xp = Tensor(x[mine], requires_grad=True), Tensor(x, requires_grad=True)
out_sync, out_plain = sync(xs), plain(xp)
(out_sync * c[mine]).sum().backward()
(out_plain * c).sum().backward()
weight_grad = comm.allreduce(sync.weight.grad.copy())
seen["uneven_syncbn"] = {
    "out": float(np.max(np.abs(out_sync.data - out_plain.data[mine]))),
    "input_grad": float(np.max(np.abs(xs.grad - xp.grad[mine]))),
    "weight_grad": float(np.max(np.abs(weight_grad - plain.weight.grad))),
    "running_var": float(np.max(np.abs(sync.running_var - plain.running_var))),
}

# ShardSampler: each rank's indices, for the test to check the cover
for n, drop_last in ((11, False), (11, True), (10, False)):
    sampler = dist.ShardSampler(n, comm, shuffle=True, seed=3, drop_last=drop_last)
    sampler.set_epoch(2)
    seen[f"sampler_{n}_{drop_last}"] = [len(sampler), list(sampler)]

# the 'nccl' backend without CuPy: the same RuntimeError on every rank, naming each rank's problem
if importlib.util.find_spec("cupy") is None:
    try:
        dist.init("nccl")
    except RuntimeError as exc:
        seen["nccl_without_cupy"] = str(exc)
    assert dist.default_communicator() is comm  # a failed init leaves the default alone

everything = MPI.COMM_WORLD.gather(seen, root=0)
if rank == 0:
    with open(out_path, "w") as f:
        json.dump(everything, f)
