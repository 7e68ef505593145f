"""The demo's deformable digits net trained in float32, float16 (with GradScaler) and bfloat16.

The three runs start from the same weights and see the same zoomed batches. ``net.to(dtype)`` stores
parameters and activations in 16 bits while every sum stays float32; the optimiser keeps float32
master copies; float16 needs ``optim.GradScaler`` (its default first scale, 2**16, overflows float16
on purpose: that step is skipped and the scale halves), bfloat16 has float32's range and needs none.
NumPy prints RuntimeWarnings for the overflowing step, so the loop runs under ``np.errstate``. At
the end the bfloat16 net goes through a checkpoint (stored as float32: ``.npy`` has no bfloat16)
and comes back with the same predictions.

Run: python examples/half_precision_training.py [--steps 120] [--quick]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from cudcn import Tensor, nn, optim
from cudcn import functional as F
from cudcn.demo.data import load_digits, random_zoom, zoomed_test_set
from cudcn.demo.models import digit_net
from cudcn.demo.train import Device, batches, predict

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--steps", type=int, default=120, help="optimiser steps (default 120)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--quick", action="store_true", help="CI smoke run: 40 steps, fewer digits")
args = parser.parse_args()
steps = 40 if args.quick else args.steps
digits = load_digits(*((1000, 200) if args.quick else (4000, 1000)))
test = zoomed_test_set(digits)
cpu = Device("cpu", "CPU (Numba backend)", np)


def run(dtype) -> dict:
    """Train a fresh copy of the net in ``dtype``; its losses, skipped steps, timing and accuracy."""
    net = digit_net("deform", np.random.default_rng(args.seed)).to(dtype)
    opt = optim.Adam(net.parameters(), lr=3e-3)
    schedule = optim.CosineAnnealingLR(opt, T_max=steps)
    scaler = optim.GradScaler(enabled=dtype == np.float16)
    data = batches(
        digits.train, digits.train_labels, 64, steps, np.random.default_rng(args.seed), random_zoom
    )
    losses, skipped, seconds = [], 0, []
    net.train()
    with np.errstate(over="ignore", invalid="ignore"):  # the skipped steps' inf/NaN
        for x, y in data:
            start = time.perf_counter()
            loss = F.cross_entropy(net(Tensor(x.astype(dtype))), y)
            scale = scaler.get_scale()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            schedule.step()
            seconds.append(time.perf_counter() - start)
            skipped += scaler.is_enabled() and scaler.get_scale() < scale
            losses.append(float(loss.data.astype(np.float32)))
    accuracy = float(np.mean(predict(net, test.images.astype(dtype), cpu) == test.labels))
    ms = statistics.median(seconds[1:]) * 1e3  # step 1 compiles the kernels
    return {
        "net": net,
        "losses": losses,
        "skipped": skipped,
        "scale": scaler.get_scale(),
        "ms": ms,
        "accuracy": accuracy,
    }


print(f"the demo's deformable net, {steps} Adam steps of 64 zoomed digits, same start and batches")
print(
    f"{'dtype':<9} {'loss first 10 -> last 10':>25} {'skipped':>8} {'final scale':>12} "
    f"{'ms/step':>8} {'zoomed-test acc':>16}"
)
results = {}
for name, dtype in (("float32", np.float32), ("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16)):
    r = results[name] = run(dtype)
    first, last = np.mean(r["losses"][:10]), np.mean(r["losses"][-10:])
    scale = f"{r['scale']:.0f}" if name == "float16" else "-"
    print(
        f"{name:<9} {first:>14.3f} -> {last:<8.3f} {r['skipped']:>8d} {scale:>12} "
        f"{r['ms']:>8.1f} {100 * r['accuracy']:>15.1f}%"
    )

net = results["bfloat16"]["net"]
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "bfloat16.npz"
    nn.save_checkpoint(net, path)
    again = digit_net("deform", np.random.default_rng(99)).to(ml_dtypes.bfloat16)
    again.load_state_dict(nn.load_checkpoint(path))
images = test.images[:200].astype(ml_dtypes.bfloat16)
same = np.array_equal(predict(net, images, cpu), predict(again, images, cpu))
print("bfloat16 checkpoint round trip gives the same predictions:", same)
falling = all(np.mean(r["losses"][-10:]) < np.mean(r["losses"][:10]) for r in results.values())
if not (falling and same):
    raise SystemExit("a loss did not fall, or the checkpoint changed the predictions")
