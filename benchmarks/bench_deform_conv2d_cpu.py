"""CPU benchmark of deform_conv2d as users call it, against a plain torch conv2d, torchvision and
ONNX Runtime's DeformConv.

Run from the repository root in a default environment (no thread or BLAS variables set by hand),
with torch and torchvision in a virtual environment of their own (they are never a test dependency),
e.g.::

    python3 -m venv venv-torch && . venv-torch/bin/activate
    pip install -e . torch torchvision
    python benchmarks/bench_deform_conv2d_cpu.py

cudcn is called through ``cudcn.functional.deform_conv2d`` on ``cudcn.Tensor`` inputs that require
gradients, ``fwd`` under ``cudcn.no_grad()``, ``f+b`` as the forward plus ``.backward(grad)`` giving
every gradient; torch's ``conv2d`` and ``torchvision.ops.deform_conv2d`` the same way, on
``torch.set_num_threads(os.cpu_count())``. float32 (``--dtype float16`` or ``bfloat16`` for the
16-bit path: every contender gets the same rounded inputs; one that has no kernel for the dtype is
reported "n/a" with its error), 3x3, padding 1, bias; cudcn and torchvision with and without mask.
Medians (ms) over ``--repeats`` turns; the contenders take turns within each repeat, each after a
short pause, so that a busy machine slows them alike (torchvision's slow backward gets
``--tv-repeats``). Ratios: ``f+b/conv`` and ``fwd/conv`` (cudcn over the plain convolution) and
``tv/f+b`` (torchvision over cudcn). With ``onnx`` and ``onnxruntime`` installed (the ``onnx`` extra)
and float32, ``ort fwd`` is ONNX Runtime's CPU ``DeformConv`` kernel running cudcn's export of the
call (with mask), on as many threads, its idle workers' spinning switched off
(``session.intra_op.allow_spinning = 0``, see ``cpu_bench.py``); ``fwd/ort`` is cudcn's forward over
it. A second row per shape gives the fastest repeat of each (on a
machine shared with other jobs, the least disturbed).

Then, per shape, where cudcn's forward+backward time goes (with mask; medians over the repeats):
the phases the CPU backend marks (``record_phases``), ``array-level`` (the backend's forward and
backward called directly) and ``tape`` (the public call minus the array-level one: argument checks,
Tensor wrapping, the tape). The last lines give the fixed cost of a call (forward+backward on a
1x1x1x1 input, in µs), the first call in a fresh process with a warm Numba cache, and the load.
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
from cpu_bench import SETTLE_S, cpu_session, medians_ms  # benchmarks/, the script's own folder

import cudcn
from cudcn.backends import cpu
from cudcn.backends.cpu.deform_conv2d import record_phases
from cudcn.functional import deform_conv2d
from cudcn.ops.deform_conv2d import DeformConv2dParams

SHAPES = [(2, 64, 56), (1, 256, 32), (8, 128, 28), (64, 32, 7)]  # (B, C_in = C_out, H = W)
PARAMS = DeformConv2dParams(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, offset_groups=1)

FIRST_CALL = """
import time
t0 = time.perf_counter()
import numpy as np
import cudcn
from cudcn.functional import deform_conv2d
t1 = time.perf_counter()
x = cudcn.Tensor(np.ones((2, 8, 10, 10), np.float32), requires_grad=True)
off = cudcn.Tensor(np.full((2, 18, 10, 10), 0.3, np.float32), requires_grad=True)
w = cudcn.Tensor(np.ones((8, 8, 3, 3), np.float32), requires_grad=True)
m = cudcn.Tensor(np.full((2, 9, 10, 10), 0.5, np.float32), requires_grad=True)
deform_conv2d(x, off, w, padding=1, mask=m).sum().backward()
t2 = time.perf_counter()
print(f"{(t1 - t0) * 1e3:.0f} {(t2 - t1) * 1e3:.0f}")
"""


def inputs(b: int, c: int, h: int, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "input": rng.standard_normal((b, c, h, h), dtype=np.float32),
        "offset": rng.uniform(-3, 3, (b, 18, h, h)).astype(np.float32),
        "weight": (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32),
        "bias": rng.standard_normal(c).astype(np.float32),
        "mask": rng.uniform(0, 1, (b, 9, h, h)).astype(np.float32),
        "grad_out": rng.standard_normal((b, c, h, h), dtype=np.float32),
    }
    return {k: v.astype(dtype) for k, v in arrays.items()}


def cudcn_fns(a: dict[str, np.ndarray], masked: bool) -> dict[str, Callable[[], object]]:
    """The public API on Tensors: forward without the tape, forward + backward with it."""
    names = ("input", "offset", "weight", "bias") + (("mask",) if masked else ())
    leaves = {k: cudcn.Tensor(a[k], requires_grad=True) for k in names}

    def call():
        t = leaves
        return deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], 1, 1, 1, t.get("mask"))

    def fwd():
        with cudcn.no_grad():
            call()

    def fwd_bwd():
        for leaf in leaves.values():
            leaf.grad = None
        call().backward(a["grad_out"])

    return {"fwd": fwd, "f+b": fwd_bwd}


def array_level(a: dict[str, np.ndarray]) -> Callable[[], object]:
    """The backend's forward and backward with mask, called directly (no checks, no tape)."""
    args = (a["input"], a["offset"], a["weight"], a["bias"], a["mask"])

    def run():
        cpu.deform_conv2d_forward(*args, PARAMS)
        cpu.deform_conv2d_backward(a["grad_out"], *args, PARAMS)

    return run


def torch_fns(a: dict[str, np.ndarray]) -> dict[str, Callable[[], object]]:
    import torch

    def as_torch(v: np.ndarray):
        if cudcn.dtypes.is_bfloat16(v.dtype):  # torch takes no ml_dtypes array: the same bits
            return torch.from_numpy(v.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(v)

    torch.set_num_threads(os.cpu_count() or 1)
    t = {k: as_torch(v) for k, v in a.items()}
    leaves = {k: t[k].clone().requires_grad_() for k in ("input", "offset", "weight", "bias", "mask")}

    def tv(masked: bool, grad: bool):
        import torchvision  # only when installed (the rows are n/a otherwise)

        x, off, w, b, m = leaves.values() if grad else (t[k] for k in leaves)
        return torchvision.ops.deform_conv2d(x, off, w, b, padding=(1, 1), mask=m if masked else None)

    def conv(grad: bool):
        x, w, b = (leaves if grad else t)["input"], (leaves if grad else t)["weight"], t["bias"]
        return torch.nn.functional.conv2d(x, w, leaves["bias"] if grad else b, padding=1)

    def forward_only(fn):
        def run():
            with torch.no_grad():
                fn()

        return run

    def with_backward(fn):
        def run():
            for leaf in leaves.values():
                leaf.grad = None
            fn().backward(t["grad_out"])

        return run

    fns = {
        "conv fwd": forward_only(lambda: conv(False)),
        "conv f+b": with_backward(lambda: conv(True)),
        "tv fwd": forward_only(lambda: tv(True, False)),
        "tv f+b": with_backward(lambda: tv(True, True)),
        "tv f+b nomask": with_backward(lambda: tv(False, True)),
    }
    for name, fn in list(fns.items()):  # one call each: drop what has no kernel for the dtype
        try:
            fn()
        except (RuntimeError, ImportError) as exc:
            print(f"{name}: n/a in {a['input'].dtype} ({str(exc).splitlines()[0][:100]})")
            del fns[name]
    return fns


def ort_fns(a: dict[str, np.ndarray], threads: int) -> dict[str, Callable[[], object]]:
    """ONNX Runtime's CPU ``DeformConv`` kernel (cudcn's export of the call: one standard node, with
    mask) on ``threads`` threads, spinning switched off (``cpu_bench``)."""
    from cudcn.onnx import export

    names = ("input", "offset", "weight", "bias", "mask")
    arrays = tuple(a[k] for k in names)
    proto = export(lambda x, o, w, b, m: deform_conv2d(x, o, w, b, 1, 1, 1, m), arrays, None)
    session = cpu_session(proto.SerializeToString(), threads)
    feeds = {i.name: x for i, x in zip(session.get_inputs(), arrays, strict=True)}
    return {"ort fwd": lambda: session.run(None, feeds)}


def phase_breakdown(a: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    """Median ms per phase of the public forward+backward with mask (phases summed within a call)."""
    run = cudcn_fns(a, True)["f+b"]
    per_call: list[dict[str, float]] = []
    for _ in range(repeats):
        time.sleep(SETTLE_S)
        with record_phases() as log:
            run()
        phases: dict[str, float] = {}
        last = log[0][1]
        for name, t in log:
            if name != "start":
                phases[name] = phases.get(name, 0.0) + (t - last) * 1e3
            last = t
        per_call.append(phases)
    return {name: statistics.median(p[name] for p in per_call) for name in per_call[0]}


def fixed_cost_us(repeats: int = 200) -> float:
    """Median µs of a public forward+backward on a 1x1x1x1 input (nearly all of it per-call cost)."""
    run = cudcn_fns(inputs(1, 1, 1), True)["f+b"]
    run()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e6


def first_call_ms() -> tuple[float, float]:
    """(import, first forward+backward) in ms, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", FIRST_CALL], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--tv-repeats", type=int, default=3)
    parser.add_argument("--shapes", type=int, default=len(SHAPES), help="the first N shapes only")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    args = parser.parse_args()
    dtype = cudcn.dtypes.bfloat16 if args.dtype == "bfloat16" else np.dtype(args.dtype)
    have_torch = importlib.util.find_spec("torch") is not None  # torchvision's rows: if it is there
    have_ort = args.dtype == "float32" and all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))
    first_call_ms()  # fills the Numba cache if it is cold
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {args.dtype}")
    cols = ["fwd", "f+b", "f+b nomask", "array f+b"]
    if have_torch:
        cols += ["conv fwd", "conv f+b", "tv fwd", "tv f+b", "tv f+b nomask"]
        cols += ["fwd/conv", "f+b/conv", "nomask/conv", "tv/f+b"]
    if have_ort:
        cols += ["ort fwd", "fwd/ort"]
    print(f"{'B,C,H=W':<18}" + "".join(f"{c:>14}" for c in cols))
    breakdowns = {}
    for b, c, h in SHAPES[: args.shapes]:
        a = inputs(b, c, h, dtype=dtype)
        masked, plain = cudcn_fns(a, True), cudcn_fns(a, False)
        fns = {"fwd": masked["fwd"], "f+b": masked["f+b"], "f+b nomask": plain["f+b"]}
        fns["array f+b"] = array_level(a)
        fns |= torch_fns(a) if have_torch else {}
        fns |= ort_fns(a, os.cpu_count() or 1) if have_ort else {}
        reps = {k: args.tv_repeats if k.startswith("tv f+b") else args.repeats for k in fns}
        medians, fastest = medians_ms(fns, reps)
        ratios = {
            "fwd/conv": ("fwd", "conv fwd"),
            "f+b/conv": ("f+b", "conv f+b"),
            "nomask/conv": ("f+b nomask", "conv f+b"),
            "tv/f+b": ("tv f+b", "f+b"),
            "fwd/ort": ("fwd", "ort fwd"),
        }
        for label, r in (("", medians), (" fastest", fastest)):
            for name, (num, den) in ratios.items():
                if num in r and den in r:
                    r[name] = r[num] / r[den]
            cells = (f"{r[c]:14.2f}" if c in r else f"{'n/a':>14}" for c in cols)
            row = f"{f'{b},{c},{h}{label}':<18}" + "".join(cells)
            print(row, flush=True)
        r = medians
        breakdowns[(b, c, h)] = phase_breakdown(a, args.repeats) | {
            "array-level total": r["array f+b"],
            "tape (public f+b - array-level)": r["f+b"] - r["array f+b"],
        }
    print("\nphases of the public fwd+bwd with mask, ms (medians):")
    shapes = list(breakdowns)
    print(f"{'phase':<34}" + "".join(f"{','.join(map(str, s)):>12}" for s in shapes))
    for name in breakdowns[shapes[0]]:
        print(f"{name:<34}" + "".join(f"{breakdowns[s].get(name, 0.0):12.2f}" for s in shapes))
    print(f"\nfixed cost of a call (public fwd+bwd, 1x1x1x1 input): {fixed_cost_us():.0f} µs")
    imp, call = first_call_ms()
    print(f"fresh process (warm Numba cache): import {imp:.0f} ms, first fwd+bwd call {call:.0f} ms")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
