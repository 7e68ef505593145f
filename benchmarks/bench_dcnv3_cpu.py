"""CPU benchmark of dcnv3 against a PyTorch reference of InternImage's ``dcnv3_core_pytorch`` logic,
with a torch depthwise convolution of the same shape as the floor.

Run from the repository root in a default environment (no thread variables set by hand), with a
Python that has cudcn and, for the torch rows, torch installed::

    pip install -e . torch
    python benchmarks/bench_dcnv3_cpu.py --repeats 10

Without torch only cudcn's rows are printed. Shapes: InternImage-T's first stage, float32, batch 1,
56 x 56, C = 64 channels in G = 4 groups (D = 16), stride 1, "same" padding, a 3x3 kernel (its own)
and a 5x5 one. Offsets are standard normal (pixels), the mask a softmax over each group's P points,
as InternImage's module produces them.

cudcn runs the array-level pair ``cudcn.ops.dcnv3_forward`` / ``dcnv3_backward`` (CPU backend);
the reference runs ``tests/ops/dcnv3/torch_peer.py`` (zero padding, normalised grid,
``grid_sample``, the mask's sum) with autograd for input, offset and mask; the floor is
``torch.nn.functional.conv2d(groups=C)`` with a C x 1 x k x k weight on the NCHW input, its
backward giving the input and weight gradients. Torch runs on ``torch.set_num_threads(os.cpu_count())``.
``f+b`` is one forward plus one backward. Medians (ms) over ``--repeats`` turns, the contenders
taking turns within each repeat after a short pause (a busy machine slows them alike); a second row
per shape gives the fastest repeat. ``ref/cudcn`` is the reference's time over cudcn's (the
speed-up), ``cudcn/dw`` cudcn's time over the depthwise convolution's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cudcn.ops import dcnv3_backward, dcnv3_forward

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests' torch peer
from cpu_bench import medians_ms  # benchmarks/, the script's own folder

SIZE, CHANNELS, GROUP = 56, 64, 4
KERNELS = (3, 5)


def inputs(k: int, seed: int = 0) -> dict:
    """float32 input, offset, mask and grad_out for a k x k kernel, and the op's arguments."""
    rng = np.random.default_rng(seed)
    points = k * k
    logits = rng.standard_normal((1, SIZE, SIZE, GROUP, points))
    mask = np.exp(logits - logits.max(-1, keepdims=True))
    mask /= mask.sum(-1, keepdims=True)
    return {
        "x": rng.standard_normal((1, SIZE, SIZE, CHANNELS), dtype=np.float32),
        "offset": rng.standard_normal((1, SIZE, SIZE, GROUP * points * 2), dtype=np.float32),
        "mask": mask.reshape(1, SIZE, SIZE, -1).astype(np.float32),
        "grad_out": rng.standard_normal((1, SIZE, SIZE, CHANNELS), dtype=np.float32),
        "args": (k, 1, k // 2, 1, GROUP, 1.0, False),
    }


def cudcn_fns(a: dict) -> dict[str, Callable[[], object]]:
    arrays = (a["x"], a["offset"], a["mask"])

    def fwd_bwd():
        dcnv3_forward(*arrays, *a["args"])
        dcnv3_backward(a["grad_out"], *arrays, *a["args"])

    return {"cudcn fwd": lambda: dcnv3_forward(*arrays, *a["args"]), "cudcn f+b": fwd_bwd}


def torch_fns(a: dict) -> dict[str, Callable[[], object]]:
    import torch

    from tests.ops.dcnv3.torch_peer import internimage_dcnv3

    torch.set_num_threads(os.cpu_count() or 1)
    t = {k: torch.from_numpy(a[k]) for k in ("x", "offset", "mask", "grad_out")}
    leaves = {k: t[k].clone().requires_grad_() for k in ("x", "offset", "mask")}
    k = a["args"][0]
    x_nchw = t["x"].permute(0, 3, 1, 2).contiguous()
    x_leaf = x_nchw.clone().requires_grad_()
    weight = torch.randn(CHANNELS, 1, k, k, requires_grad=True)
    grad_nchw = t["grad_out"].permute(0, 3, 1, 2).contiguous()

    def ref_fwd():
        with torch.no_grad():
            internimage_dcnv3(t["x"], t["offset"], t["mask"], *a["args"])

    def ref_fwd_bwd():
        for leaf in leaves.values():
            leaf.grad = None
        internimage_dcnv3(leaves["x"], leaves["offset"], leaves["mask"], *a["args"]).backward(t["grad_out"])

    def dw_fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(x_nchw, weight, padding=k // 2, groups=CHANNELS)

    def dw_fwd_bwd():
        x_leaf.grad = weight.grad = None
        torch.nn.functional.conv2d(x_leaf, weight, padding=k // 2, groups=CHANNELS).backward(grad_nchw)

    return {"ref fwd": ref_fwd, "ref f+b": ref_fwd_bwd, "dw fwd": dw_fwd, "dw f+b": dw_fwd_bwd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--kernels", nargs="*", type=int, choices=KERNELS, default=list(KERNELS))
    args = parser.parse_args()
    have_torch = importlib.util.find_spec("torch") is not None
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} CPUs")
    cols = ["cudcn fwd", "cudcn f+b"]
    if have_torch:
        cols += ["ref fwd", "ref f+b", "dw fwd", "dw f+b", "ref/cudcn fwd", "ref/cudcn f+b", "cudcn/dw f+b"]
    print(f"{'shape (float32, 1x56x56, C=64, G=4)':<36}" + "".join(f"{c:>15}" for c in cols))
    for k in args.kernels:
        a = inputs(k)
        fns = cudcn_fns(a) | (torch_fns(a) if have_torch else {})
        medians, fastest = medians_ms(fns, args.repeats)
        for suffix, r in (("", medians), (" fastest", fastest)):
            if have_torch:
                r["ref/cudcn fwd"] = r["ref fwd"] / r["cudcn fwd"]
                r["ref/cudcn f+b"] = r["ref f+b"] / r["cudcn f+b"]
                r["cudcn/dw f+b"] = r["cudcn f+b"] / r["dw f+b"]
            print(f"{f'{k}x{k}' + suffix:<36}" + "".join(f"{r[c]:15.2f}" for c in cols), flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
