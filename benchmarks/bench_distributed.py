"""Data-parallel benchmarks of cudcn.distributed, on 1 rank or under ``mpiexec``.

    python benchmarks/bench_distributed.py train                          # 1 rank
    mpiexec -n 2 python -m mpi4py benchmarks/bench_distributed.py train   # 2 ranks
    mpiexec -n 2 python -m mpi4py benchmarks/bench_distributed.py allreduce
    mpiexec -n 2 python -m mpi4py benchmarks/bench_distributed.py overhead --repeats 5000
    mpiexec -n 2 python -m mpi4py benchmarks/bench_distributed.py buckets
    python benchmarks/bench_distributed.py resnet                         # compute of one rank

* ``train``: the demo's deformable digits net (SyncBatchNorm, DistributedOptimizer with Adam) on
  random zoomed digits; global batch ``--batch`` split over the ranks. Per step (median over
  ``--steps`` after 3 warm-up steps): the step time, the time spent inside collectives (gradient
  allreduce; SyncBatchNorm's allreduces and the argument checks, waiting for the other rank
  included), and the images/s of all ranks together.
* ``allreduce``: ``Communicator.allreduce`` of float32 arrays from 4 B to 64 MiB (median of
  ``--repeats``), to fit latency and bandwidth of this machine's MPI.
* ``overhead``: the cost of the collectives' safety (argument check, agreement on the next
  collective, polled waits): median of ``--repeats`` back-to-back calls of a raw mpi4py
  ``Allreduce`` of 4 float64 (the floor), ``comm.allreduce`` of the same array with and without
  ``check``, ``comm.barrier()``, and a checked allreduce of 1 MiB.
* ``buckets``: ``DistributedOptimizer.average_gradients`` for the demo net's and ResNet-50's
  parameter shapes (25.6 M float32) at several bucket sizes.
* ``resnet``: forward + backward of a ResNet-50 whose 3x3 convolutions in stages 3-5 are
  ``DeformConv2dPack`` (the DCN paper's and mmdetection's placement), batch ``--batch``, 224 x 224.

Rank 0 prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import cudcn.distributed as dist
from cudcn import functional as F
from cudcn import nn, optim

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("part", choices=["train", "allreduce", "overhead", "buckets", "resnet"])
parser.add_argument("--batch", type=int, default=64)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--repeats", type=int, default=20)
args = parser.parse_args()
comm = dist.init()


def report(**fields):
    if comm.rank == 0:
        print(json.dumps({"ranks": comm.size, **fields}), flush=True)


class Timed:
    """Wraps ``comm._reduce`` / ``_broadcast`` to add up the seconds spent inside collectives."""

    def __init__(self) -> None:
        self.seconds = 0.0
        for name in ("_reduce", "_broadcast"):
            setattr(comm, name, self._wrap(getattr(comm, name)))

    def _wrap(self, fn):
        def timed(*a):
            start = time.perf_counter()
            fn(*a)
            self.seconds += time.perf_counter() - start

        return timed


def train() -> None:
    from cudcn.demo.data import load_digits, random_zoom
    from cudcn.demo.models import digit_net

    timer = Timed()
    local = args.batch // comm.size
    digits = load_digits(1000, 100)
    net = nn.SyncBatchNorm.convert_sync_batchnorm(digit_net("deform", np.random.default_rng(0)))
    opt = dist.DistributedOptimizer(optim.Adam(net.parameters(), lr=1e-3), comm)
    rng = np.random.default_rng(comm.rank)
    steps = []
    for i in range(3 + args.steps):
        idx = rng.integers(0, 1000, local)
        batch = random_zoom(digits.train[idx], digits.train_labels[idx], rng)
        comm.barrier()
        timer.seconds = 0.0
        start = time.perf_counter()
        loss = F.cross_entropy(net(batch.images), batch.labels)
        opt.zero_grad()
        loss.backward()
        g0 = timer.seconds
        opt.average_gradients()
        g1 = timer.seconds
        opt.optimizer.step()
        if i >= 3:
            steps.append((time.perf_counter() - start, timer.seconds, g1 - g0))
    step, inside, grad = (statistics.median(s[k] for s in steps) for k in range(3))
    report(
        part="train",
        local_batch=local,
        step_ms=1e3 * step,
        collectives_ms=1e3 * inside,
        gradient_allreduce_ms=1e3 * grad,
        images_per_s=args.batch / step,
        gradient_bytes=4 * sum(p.data.size for p in net.parameters()),
    )


def allreduce() -> None:
    for exponent in range(2, 27, 2):  # 4 B to 64 MiB
        a = np.ones(2**exponent // 4, dtype=np.float32)
        times = []
        for _ in range(args.repeats):
            comm.barrier()
            start = time.perf_counter()
            comm.allreduce(a, "sum", check=False)
            times.append(time.perf_counter() - start)
        report(part="allreduce", bytes=a.nbytes, us=1e6 * statistics.median(times))


def overhead() -> None:
    from mpi4py import MPI

    small, large = np.ones(4), np.ones(2**17)  # 32 B and 1 MiB of float64
    calls = {
        "raw mpi4py Allreduce, 32 B": lambda: MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, small),
        "allreduce, 32 B": lambda: comm.allreduce(small),
        "allreduce check=False, 32 B": lambda: comm.allreduce(small, check=False),
        "barrier": comm.barrier,
        "allreduce, 1 MiB": lambda: comm.allreduce(large),
    }
    for name, call in calls.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        report(part="overhead", call=name, repeats=args.repeats, median_us=1e6 * statistics.median(times))


def resnet50_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision's ResNet-50 (conv weights, BatchNorm weight and bias, fc)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            for shape in ((width, cin, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)):
                shapes += [shape, shape[:1], shape[:1]]
            if b == 0:
                shapes += [(4 * width, cin, 1, 1), (4 * width,), (4 * width,)]
            cin = 4 * width
    return [*shapes, (1000, 2048), (1000,)]


def buckets() -> None:
    from cudcn.demo.models import digit_net

    demo = [p.data.shape for p in digit_net("deform", np.random.default_rng(0)).parameters()]
    for name, shapes in (("demo net", demo), ("ResNet-50", resnet50_shapes())):
        params = [nn.Parameter(np.zeros(s, np.float32)) for s in shapes]
        for p in params:
            p.grad = np.full(p.shape, comm.rank + 1.0, np.float32)
        for bucket_mb in (0.1, 1.0, 5.0, 25.0, 100.0):
            opt = dist.DistributedOptimizer(optim.SGD(params, lr=0.0), comm, bucket_mb=bucket_mb)
            times = []
            for _ in range(max(3, args.repeats // 4)):
                comm.barrier()
                start = time.perf_counter()
                opt.average_gradients()
                times.append(time.perf_counter() - start)
            report(
                part="buckets",
                model=name,
                parameters=sum(p.data.size for p in params),
                tensors=len(params),
                bucket_mb=bucket_mb,
                buckets=len(opt.buckets),
                ms=1e3 * statistics.median(times),
            )


def resnet() -> None:
    def bottleneck(cin: int, width: int, stride: int, deform: bool) -> nn.Module:
        conv3 = nn.DeformConv2dPack if deform else nn.Conv2d
        body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            conv3(width, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 4 * width, 1, bias=False),
            nn.BatchNorm2d(4 * width),
        )
        short = None
        if stride != 1 or cin != 4 * width:
            short = nn.Sequential(
                nn.Conv2d(cin, 4 * width, 1, stride=stride, bias=False), nn.BatchNorm2d(4 * width)
            )
        return Residual(body, short)

    class Residual(nn.Module):
        def __init__(self, body: nn.Module, short: nn.Module | None) -> None:
            super().__init__()
            self.body, self.short = body, short

        def forward(self, x):
            return F.relu(self.body(x) + (x if self.short is None else self.short(x)))

    layers = [
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        for b in range(blocks):
            layers.append(bottleneck(cin, width, 2 if b == 0 and stage else 1, stage > 0))
            cin = 4 * width
    net = nn.Sequential(*layers, nn.GlobalAvgPool2d(), nn.Linear(2048, 1000))
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    y = np.zeros(args.batch, dtype=np.int64)
    times = []
    for _ in range(1 + args.steps):
        start = time.perf_counter()
        F.cross_entropy(net(x), y).backward()
        times.append(time.perf_counter() - start)
    report(
        part="resnet",
        batch=args.batch,
        parameters=sum(p.data.size for p in net.parameters()),
        step_ms=1e3 * statistics.median(times[1:]),
        first_step_ms=1e3 * times[0],
    )


PARTS = {"train": train, "allreduce": allreduce, "overhead": overhead, "buckets": buckets, "resnet": resnet}
PARTS[args.part]()
