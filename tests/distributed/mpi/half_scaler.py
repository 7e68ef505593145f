"""GradScaler with DistributedOptimizer on 2 ranks, float16 parameters.

Iteration 1: only rank 1's scaled gradients overflow (its batch holds a large value); both ranks must
skip the step and back the scale off, although rank 0's own gradients are finite. Iteration 2: both
ranks' gradients are finite; the step must equal, bit for bit, the float32 master update with the
mean of the two ranks' unscaled gradients, rounded to float16. Rank 0 writes both ranks' records as
JSON to the path named on the command line.
"""

import json
import sys

import numpy as np
from mpi4py import MPI

import cudcn.distributed as dist
from cudcn import Tensor, nn, optim
from cudcn.functional import mse_loss

out_path = sys.argv[1]
comm = dist.init()
assert comm.backend == "mpi" and comm.size == 2, comm
rank = comm.rank
seen = {}

model = nn.Linear(3, 2, rng=np.random.default_rng(0)).to(np.float16)
if rank == 1:
    model.weight.data += np.float16(1)  # broadcast_parameters must undo this
dist.broadcast_parameters(model, comm)
before = [p.data.copy() for p in model.parameters()]
seen["broadcast_equal"] = MPI.COMM_WORLD.allgather([b.tobytes() for b in before])
seen["broadcast_equal"] = seen["broadcast_equal"][0] == seen["broadcast_equal"][1]

opt = dist.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.5), comm)
scaler = optim.GradScaler(init_scale=1024.0)
rng = np.random.default_rng(10 + rank)


def backward(x):
    target = np.zeros((4, 2), np.float16)
    loss = mse_loss(model(Tensor(x.astype(np.float16))), target)
    scaler.scale(loss).backward()


# iteration 1: a rank-local overflow (60000 * 1024 overflows float16 in the backward)
x = rng.standard_normal((4, 3))
if rank == 1:
    x[0, 0] = 60000.0
backward(x)
seen["local_grads_finite"] = all(bool(np.isfinite(p.grad).all()) for p in model.parameters())
scaler.step(opt)
scaler.update()
seen["scale_after_1"] = scaler.get_scale()
seen["unchanged_after_1"] = all(
    np.array_equal(p.data, b) for p, b in zip(model.parameters(), before, strict=True)
)
opt.zero_grad()

# iteration 2: finite everywhere; unscale_ explicitly (as before clipping), then step
backward(rng.standard_normal((4, 3)))
scaler.unscale_(opt)
local = [p.grad.copy() for p in model.parameters()]
seen["unscaled_dtypes"] = [str(g.dtype) for g in local]
both = MPI.COMM_WORLD.allgather(local)
scaler.step(opt)
scaler.update()
seen["scale_after_2"] = scaler.get_scale()
seen["step_2_exact"] = all(
    np.array_equal(p.data, (b.astype(np.float32) - 0.5 * ((g0 + g1) / np.float32(2))).astype(np.float16))
    for p, b, g0, g1 in zip(model.parameters(), before, both[0], both[1], strict=True)
)
seen["step_2_moved"] = any(
    not np.array_equal(p.data, b) for p, b in zip(model.parameters(), before, strict=True)
)
seen["params"] = [p.data.astype(np.float64).tolist() for p in model.parameters()]


# SyncBatchNorm in float16: float32 statistics of the union of both ranks' batches
def batch(r):
    x = np.random.default_rng(100 + r).standard_normal((2, 3, 4, 4)) * 3 + 200
    return x.astype(np.float16)


bn = nn.SyncBatchNorm(3, comm=comm).to(np.float16)
out = bn(Tensor(batch(rank), requires_grad=True))
ref = nn.BatchNorm2d(3)
ref_out = ref(Tensor(np.concatenate([batch(0), batch(1)]).astype(np.float32)))
seen["syncbn_dtypes"] = [str(bn.running_mean.dtype), str(bn.running_var.dtype), str(out.dtype)]
seen["syncbn_stat_diff"] = float(
    max(np.abs(bn.running_mean - ref.running_mean).max(), np.abs(bn.running_var - ref.running_var).max())
)
mine = ref_out.data[2 * rank : 2 * rank + 2]
seen["syncbn_out_ulps"] = float(
    np.max(np.abs(out.data.astype(np.float32) - mine) / np.spacing(np.abs(mine).astype(np.float16)))
)

records = MPI.COMM_WORLD.gather(seen, root=0)
if rank == 0:
    with open(out_path, "w") as f:
        json.dump(records, f)
