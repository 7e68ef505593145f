"""2-rank training with SyncBatchNorm and DistributedOptimizer against single-process training.

For float64 and float32: the same net (a convolution, a DeformConv2dPack with non-zero offsets, two
batch norms), 3 steps of SGD with momentum. Each rank trains on its half of every global batch; a
reference trains the plain BatchNorm2d net with the plain optimiser on the whole global batch (and
in float64, for the float32 tolerance). Rank 0 writes every state (both ranks, the references) and
the eval-mode outputs to the .npz named on the command line.
"""

import sys

import numpy as np
from mpi4py import MPI

import cudcn.distributed as dist
from cudcn import functional as F
from cudcn import nn, optim

SEED = 20261201  # logged by the test
STEPS, GLOBAL_BATCH, SIDE = 3, 8, 8
out_path = sys.argv[1]
comm = dist.init()
assert comm.backend == "mpi" and comm.size == 2, comm
rank = comm.rank


def make_net(dtype):
    rng = np.random.default_rng(SEED)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.DeformConv2dPack(4, 4, 3, padding=1, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.GlobalAvgPool2d(),
        nn.Linear(4, 3, rng=rng),
    )
    nn.init.uniform_(net[3].conv_offset.weight, -0.5, 0.5, rng)  # offsets of about a pixel
    return net.to(dtype)


def batches(dtype):
    rng = np.random.default_rng(SEED + 1)
    for _ in range(STEPS):
        x = rng.standard_normal((GLOBAL_BATCH, 1, SIDE, SIDE)).astype(dtype)
        yield x, rng.integers(0, 3, GLOBAL_BATCH)


def train(net, opt, data):
    for x, y in data:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def sgd(net):
    return optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


half = GLOBAL_BATCH // comm.size
shard = slice(rank * half, (rank + 1) * half)
results = {}
for dtype in (np.float64, np.float32):
    name = np.dtype(dtype).name
    net = nn.SyncBatchNorm.convert_sync_batchnorm(make_net(dtype))
    if rank == 1:  # start from different weights: broadcast_parameters must fix that
        for p in net.parameters():
            p.data += 1.0
    dist.broadcast_parameters(net, comm)
    train(
        net,
        dist.DistributedOptimizer(sgd(net), comm),
        ((x[shard], y[shard]) for x, y in batches(dtype)),
    )
    states = MPI.COMM_WORLD.gather(net.state_dict(), root=0)
    # eval mode: running statistics, no communication
    calls = []
    reduce = comm._reduce
    comm._reduce = lambda buffer, op, calls=calls, reduce=reduce: (
        calls.append(op),
        reduce(buffer, op),
    )
    net.eval()
    x_eval = next(iter(batches(dtype)))[0][shard]
    eval_out = net(x_eval).data
    comm._reduce = reduce
    eval_calls = MPI.COMM_WORLD.gather(len(calls), root=0)
    eval_outs = MPI.COMM_WORLD.gather(eval_out, root=0)
    if rank == 0:
        ref = make_net(dtype)
        train(ref, sgd(ref), batches(dtype))
        ref64 = make_net(np.float64)
        train(ref64, sgd(ref64), ((x.astype(np.float64), y) for x, y in batches(dtype)))
        ref.eval()
        ref_eval = np.concatenate([ref(x_half).data for x_half in np.split(next(iter(batches(dtype)))[0], 2)])
        for r, state in enumerate(states):
            results.update({f"{name}/rank{r}/{k}": v for k, v in state.items()})
        results.update({f"{name}/reference/{k}": v for k, v in ref.state_dict().items()})
        results.update({f"{name}/reference64/{k}": v for k, v in ref64.state_dict().items()})
        results.update({f"{name}/initial/{k}": v for k, v in make_net(dtype).state_dict().items()})
        results[f"{name}/eval/distributed"] = np.concatenate(eval_outs)
        results[f"{name}/eval/reference"] = ref_eval
        results[f"{name}/eval/collectives"] = np.array(eval_calls)
if rank == 0:
    np.savez(out_path, **results)
