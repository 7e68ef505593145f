"""On-paper scaling of cudcn.distributed to 8-64 ranks: a model, not a measurement.

    python benchmarks/scaling_model.py

Inputs measured on the 2-core development machine (benchmarks/RESULTS.md, "Data-parallel
training"): the compute of one step per rank, the gradient bytes and bucket counts, the number of
SyncBatchNorm layers. Assumed (typical published figures, not measured here): the interconnect's
per-message latency ``alpha`` and bandwidth ``B``.

Per step, with ``p`` ranks and no overlap of communication with the backward pass (cudcn averages
the gradients after ``backward``, then steps):

* each gradient bucket of ``n`` bytes: a ring allreduce, ``2 (p - 1) alpha + 2 (p - 1) / p * n / B``;
* each small message (the argument checks, the has-gradient flags, every SyncBatchNorm sum):
  recursive doubling, ``ceil(log2 p) alpha`` (its bytes are negligible);
* efficiency = compute / (compute + communication); a step's images = p x local batch.

Ranks are CPU processes like this machine's; the same model with a GPU's much shorter compute time
would put communication far higher, but no GPU compute was measured, so none is modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Net:
    name: str
    compute_s: float  # one step of fwd + bwd + optimiser on one rank, measured
    gradient_bytes: int
    syncbn_layers: int  # each: 2 allreduces forward + 1 backward, each with its argument check
    buckets: dict[float, int]  # bucket MiB -> buckets per step (plan_buckets on the real shapes)


@dataclass(frozen=True)
class Network:
    name: str
    alpha_s: float
    bandwidth: float  # bytes / s


NETWORKS = (
    Network("10 Gb Ethernet (alpha 30 us, 1.2 GB/s)", 30e-6, 1.2e9),
    Network("100 Gb InfiniBand (alpha 2 us, 12 GB/s)", 2e-6, 12e9),
)


def step_communication(net: Net, p: int, bucket_mb: float, network: Network) -> float:
    """Seconds of communication per step (see the module docstring)."""
    if p == 1:
        return 0.0
    buckets = net.buckets[bucket_mb]
    ring = 2 * (p - 1) * network.alpha_s * buckets + 2 * (p - 1) / p * net.gradient_bytes / network.bandwidth
    small = (2 + 2 * 3 * net.syncbn_layers) * math.ceil(math.log2(p)) * network.alpha_s
    return ring + small


def table(nets: list[Net], buckets_mb: tuple[float, ...]) -> None:
    for network in NETWORKS:
        print(f"\n{network.name}")
        print("| net | bucket MiB | p | communication ms/step | efficiency |")
        print("|---|---:|---:|---:|---:|")
        for net in nets:
            for bucket_mb in buckets_mb:
                for p in (8, 16, 32, 64):
                    comm = step_communication(net, p, bucket_mb, network)
                    efficiency = 100 * net.compute_s / (net.compute_s + comm)
                    print(f"| {net.name} | {bucket_mb:g} | {p} | {1e3 * comm:.2f} | {efficiency:.1f} % |")


if __name__ == "__main__":
    # compute_s: local batch 32 per rank, one core per rank, the fastest per-image times measured
    # (RESULTS.md; faster compute makes communication weigh more): demo net 34 ms per 64 images,
    # ResNet-50 DCN 1.02 s per 2 images
    nets = [
        Net("demo net", 32 * 34e-3 / 64, 127_000, 4, {0.1: 2, 25.0: 1}),
        Net("ResNet-50 DCN", 32 * 1.02 / 2, 104_551_496, 53, {0.1: 96, 25.0: 5}),
    ]
    table(nets, (0.1, 25.0))
