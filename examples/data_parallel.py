"""Data-parallel training of the demo's deformable digits net on several processes (ranks).

Every rank holds a replica of the net and trains on its shard of each global batch: ShardSampler
splits the training digits, SyncBatchNorm normalises over the global batch, DistributedOptimizer
averages the gradients before each Adam step. Rank 0 alone prints and writes files.

Run (2 ranks on one machine; ``-m mpi4py`` makes a failing rank end the whole job):

    mpiexec -n 2 python -m mpi4py examples/data_parallel.py
    mpiexec -n 2 python -m mpi4py examples/data_parallel.py --quick --out results/

Also runs as plain ``python examples/data_parallel.py`` (one rank). With one GPU per rank, add
``--backend nccl``.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

import cudcn
import cudcn.distributed as dist
from cudcn import functional as F
from cudcn import nn, optim
from cudcn.demo.data import load_digits, random_zoom, zoomed_test_set
from cudcn.demo.models import digit_net
from cudcn.demo.train import Device, pick_device, predict

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--steps", type=int, default=120, help="optimiser steps (default 120)")
parser.add_argument("--batch", type=int, default=64, help="global batch, split over the ranks")
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--backend", default="auto", choices=dist.comm.BACKENDS)
parser.add_argument(
    "--quick",
    action="store_true",
    help="CI smoke run: 40 steps, fewer digits (too short for a meaningful accuracy)",
)
parser.add_argument("--out", type=Path, help="rank 0 writes the checkpoint and metrics.json here")
args = parser.parse_args()
if args.quick:
    args.steps = 40
n_train, n_test = (1000, 200) if args.quick else (4000, 1000)

comm = dist.init(args.backend)
rank, size = comm.rank, comm.size
if args.batch % size:
    raise SystemExit(f"--batch ({args.batch}) must be a multiple of the number of ranks ({size})")
local_batch = args.batch // size
device = pick_device() if comm.backend == "nccl" else Device("cpu", "CPU (Numba backend)", np)


def say(*text):
    if rank == 0:
        print(*text, flush=True)


def summed(values):
    """``values`` (a list of floats) added over the ranks."""
    return comm.allreduce(np.array(values, dtype=np.float64)).tolist()


say(
    f"{size} rank(s) ({comm.backend}), global batch {args.batch} = {size} x {local_batch}, "
    f"{args.steps} steps, {device.description}"
)
digits = load_digits(n_train, n_test)
net = digit_net("deform", np.random.default_rng(args.seed))
if device.name == "cuda":
    net.to("cuda")
net = nn.SyncBatchNorm.convert_sync_batchnorm(net, comm)
dist.broadcast_parameters(net, comm)  # equal already (same seed); a real script must not rely on it
opt = dist.DistributedOptimizer(optim.Adam(net.parameters(), lr=args.lr), comm)
schedule = optim.CosineAnnealingLR(opt, T_max=args.steps)
sampler = dist.ShardSampler(n_train, comm, shuffle=True, seed=args.seed, drop_last=True)
augment = np.random.default_rng([args.seed, rank])  # each rank zooms its own digits

net.train()
step, epoch, losses, start = 0, 0, [], None
while step < args.steps:
    sampler.set_epoch(epoch)
    order = sampler.indices()
    for b in range(min(len(order) // local_batch, args.steps - step)):
        idx = order[b * local_batch : (b + 1) * local_batch]
        batch = random_zoom(digits.train[idx], digits.train_labels[idx], augment)
        loss = F.cross_entropy(net(device.put(batch.images)), device.put(batch.labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(float(loss.data))
        step += 1
        if step == 1:
            start = time.perf_counter()  # step 1 compiled the kernels: time the rest
        if step % max(1, args.steps // 4) == 0 or step == args.steps:
            mean_loss = summed([np.mean(losses[-10:])])[0] / size
            say(f"  step {step:4d}/{args.steps}  loss {mean_loss:.3f} (mean over ranks, last 10 steps)")
    epoch += 1
seconds = time.perf_counter() - start
rate = np.zeros(size)
rate[rank] = local_batch * (args.steps - 1) / seconds
rate = summed(rate.tolist())

test = zoomed_test_set(digits)
mine = np.arange(rank, len(test.labels), size)  # disjoint, every test digit once
correct, count = summed(
    [float(np.sum(predict(net, test.images[mine], device) == test.labels[mine])), float(len(mine))]
)
flat = np.concatenate([device.get(p.data).ravel().astype(np.float64) for p in net.parameters()])
ours = comm.broadcast(flat.copy(), root=0)
identical = summed([float(not np.array_equal(ours, flat))])[0] == 0

for r, images_per_s in enumerate(rate):
    say(f"rank {r}: {images_per_s:.1f} images/s (steps 2-{args.steps}, {local_batch} images per step)")
say(f"total: {sum(rate):.1f} images/s")
say(f"zoomed-test accuracy: {100 * correct / count:.1f} % of {int(count)} digits")
say(f"replicas identical on every rank: {identical}")
if rank == 0 and args.out is not None:
    args.out.mkdir(parents=True, exist_ok=True)
    nn.save_checkpoint(net, args.out / "data_parallel.npz")  # atomic: never a truncated file
    metrics = {
        "ranks": size,
        "images_per_s": rate,
        "accuracy": correct / count,
        "first_loss": losses[0],
        "last_loss": float(np.mean(losses[-3:])),
        "replicas_identical": bool(identical),
        "cudcn": cudcn.__version__,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
