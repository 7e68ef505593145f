"""CPU benchmark of deform_conv2d: cudcn's Numba backend against torchvision and a plain torch conv2d.

Run in a default environment (no thread or BLAS variables set by hand), e.g.::

    PYTHONPATH=. /work/torchenv/bin/python benchmarks/bench_deform_conv2d_cpu.py

Times are medians (ms) over ``--repeats`` runs after warm-up, float32, 3x3 kernel, padding 1, with mask
and bias; the contenders take turns within each repeat, so that a busy machine slows them alike.
``fwd+bwd`` is one forward plus one backward giving every gradient. The torch columns (torchvision's
deform_conv2d, a plain conv2d) appear when torch and torchvision are importable. The last lines give
the first call (forward + backward) in a fresh process whose Numba cache is warm, and the load.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from cudcn.backends import cpu

SHAPES = [(2, 64, 64, 56, 56), (1, 256, 256, 32, 32)]  # (B, C_in, C_out, H, W)
SETTLE_S = 0.3
PARAMS = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1, "offset_groups": 1}

FIRST_CALL = """
import time
t0 = time.perf_counter()
import numpy as np
from cudcn.backends import cpu
t1 = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 8, 10, 10), dtype=np.float32)
off = rng.uniform(-2, 2, (2, 18, 10, 10)).astype(np.float32)
w = rng.standard_normal((8, 8, 3, 3), dtype=np.float32)
m = rng.uniform(0, 1, (2, 9, 10, 10)).astype(np.float32)
kw = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, offset_groups=1)
out = cpu.deform_conv2d_forward(x, off, w, None, m, **kw)
cpu.deform_conv2d_backward(out, x, off, w, None, m, **kw)
t2 = time.perf_counter()
print(f"{(t1 - t0) * 1e3:.0f} {(t2 - t1) * 1e3:.0f}")
"""


def medians_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median times in ms. The functions take turns, so that they share the machine's conditions, and
    each starts after a short pause, so that no thread pool still spins from the previous one."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(SETTLE_S)
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def inputs(shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    b, c_in, c_out, h, w = shape
    rng = np.random.default_rng(seed)
    return {
        "input": rng.standard_normal((b, c_in, h, w), dtype=np.float32),
        "offset": rng.uniform(-3, 3, (b, 18, h, w)).astype(np.float32),
        "weight": (rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32),
        "bias": rng.standard_normal(c_out).astype(np.float32),
        "mask": rng.uniform(0, 1, (b, 9, h, w)).astype(np.float32),
        "grad_out": rng.standard_normal((b, c_out, h, w), dtype=np.float32),
    }


def cudcn_fns(a: dict[str, np.ndarray]) -> dict[str, Callable[[], object]]:
    args = (a["input"], a["offset"], a["weight"], a["bias"], a["mask"])

    def fwd_bwd():
        cpu.deform_conv2d_forward(*args, **PARAMS)
        cpu.deform_conv2d_backward(a["grad_out"], *args, **PARAMS)

    return {"fwd": lambda: cpu.deform_conv2d_forward(*args, **PARAMS), "fwd+bwd": fwd_bwd}


def torch_fns(a: dict[str, np.ndarray]) -> dict[str, Callable[[], object]]:
    import torch
    import torchvision

    t = {k: torch.from_numpy(v) for k, v in a.items()}
    names = ("input", "offset", "weight", "bias", "mask")
    leaves = {k: t[k].clone().requires_grad_() for k in names}

    def tv(x, off, w, b, m):
        return torchvision.ops.deform_conv2d(x, off, w, b, padding=(1, 1), mask=m)

    def conv(x, w, b):
        return torch.nn.functional.conv2d(x, w, b, padding=1)

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()

        return run

    return {
        "tv fwd": no_grad(lambda: tv(*(t[k] for k in names))),
        "tv f+b": lambda: tv(*leaves.values()).backward(t["grad_out"]),
        "conv fwd": no_grad(lambda: conv(t["input"], t["weight"], t["bias"])),
        "conv f+b": lambda: conv(leaves["input"], leaves["weight"], leaves["bias"]).backward(
            t["grad_out"]
        ),
    }


def first_call_ms() -> tuple[float, float]:
    """(import, first forward+backward) in ms, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", FIRST_CALL], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    have_torch = all(importlib.util.find_spec(m) for m in ("torch", "torchvision"))
    first_call_ms()  # fills the Numba cache if it is cold
    head = f"{'B,C_in,C_out,H,W':<18} {'fwd':>7} {'fwd+bwd':>8}"
    if have_torch:
        head += f" {'tv fwd':>7} {'tv f+b':>7} {'conv fwd':>8} {'conv f+b':>8}"
        head += f" {'tv/us fwd':>9} {'tv/us f+b':>9} {'us/conv f+b':>11}"
    print(head)
    for shape in SHAPES:
        a = inputs(shape)
        fns = cudcn_fns(a) | (torch_fns(a) if have_torch else {})
        r = medians_ms(fns, args.repeats)
        row = f"{','.join(map(str, shape)):<18} {r['fwd']:7.2f} {r['fwd+bwd']:8.2f}"
        if have_torch:
            row += (
                f" {r['tv fwd']:7.2f} {r['tv f+b']:7.1f} {r['conv fwd']:8.2f} {r['conv f+b']:8.2f}"
            )
            row += f" {r['tv fwd'] / r['fwd']:9.1f} {r['tv f+b'] / r['fwd+bwd']:9.1f}"
            row += f" {r['fwd+bwd'] / r['conv f+b']:11.2f}"
        print(row, flush=True)
    imp, call = first_call_ms()
    print(
        f"fresh process (warm Numba cache): import {imp:.0f} ms, first fwd+bwd call {call:.0f} ms"
    )
    print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
