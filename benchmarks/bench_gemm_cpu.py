"""CPU benchmark of the three float32 GEMMs of the deform_conv2d CPU backend, NumPy against other GEMMs.

The backend (``cudcn/backends/cpu/deform_conv2d.py``) calls ``np.matmul(..., out=...)`` on C-order
operands: ``col`` (N, K), ``W`` (C_out, K), ``go`` (C_out, N), with K = 9·C_in and N = B·H·W (3x3,
padding 1, one group; these shapes fit one batch chunk). The products, as M×N×K of the GEMM:

- ``forward``   rows (N, C_out) = col @ Wᵀ
- ``col-grad``  gcol (N, K)     = goᵀ @ W
- ``w-grad``    gw (C_out, K)   = go @ col

Contenders, each writing into a preallocated output with the same operand layouts:

1. ``numpy``  np.matmul with ``out=``, exactly as the backend calls it (the reference);
2. ``scipy``  ``scipy.linalg.blas.sgemm`` on the Fortran-order transposes of the C-order arrays with
   ``trans_a``/``trans_b`` and ``c=out.T, overwrite_c=1`` (checked copy-free with tracemalloc, and the
   result checked to share memory with ``out``);
3. ``blis``   ``blis.py.gemm`` (explosion's cython-blis, if installed) with ``trans1``/``trans2``,
   ``out=`` and ``beta=0``;
4. ``torch``  torch.matmul on ``torch.from_numpy`` views with ``out=`` and ``torch.set_num_threads
   (--threads)``, for reference only (torch is not a dependency).

Per repeat, the contenders take turns (order rotated each repeat, a 0.2 s pause before each turn);
one turn times ``number`` back-to-back calls, ``number`` chosen so that NumPy's turn lasts about
``--turn-ms``. Printed per shape, product and contender: median and fastest ms per call, GFLOP/s of
the fastest, the speed-up over NumPy (NumPy's time / the contender's, of the medians and of the
fastest repeats) and the error against NumPy (max |x - numpy| / max |numpy|). The header gives the
BLAS libraries, their threads and the load average; the load is printed again at the end.

Run from the repository root (pip install blis for the third contender)::

    python benchmarks/bench_gemm_cpu.py --repeats 15
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from importlib.metadata import version

import numpy as np
from cpu_bench import SETTLE_S  # benchmarks/, the script's own folder
from scipy.linalg.blas import sgemm

try:
    import blis.py as BLIS
except ImportError:
    BLIS = None
try:
    import torch
except ImportError:
    torch = None

SHAPES = [(2, 64, 56), (1, 256, 32), (8, 128, 28), (64, 32, 7)]  # (B, C_in = C_out, H = W)
PRODUCTS = ("forward", "col-grad", "w-grad")

Call = Callable[[], object]


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def products(
    col: np.ndarray, w: np.ndarray, go: np.ndarray, name: str
) -> tuple[tuple[int, ...], dict[str, tuple[Call, np.ndarray]]]:
    """(M, N, K) of the product and, per available contender, ``(call, out)``."""
    n, k = col.shape
    c_out = w.shape[0]
    shape = {"forward": (n, c_out), "col-grad": (n, k), "w-grad": (c_out, k)}[name]
    mnk = (*shape, {"forward": k, "col-grad": c_out, "w-grad": n}[name])
    outs = {c: np.empty(shape, np.float32) for c in ("numpy", "scipy", "blis", "torch")}
    o, s, bo, to = outs["numpy"], outs["scipy"].T, outs["blis"], outs["torch"]  # s: Fortran-order view
    fns: dict[str, tuple[Call, Call, Call]] = {  # forward, col-grad, w-grad
        "numpy": (
            lambda: np.matmul(col, w.T, out=o),
            lambda: np.matmul(go.T, w, out=o),
            lambda: np.matmul(go, col, out=o),
        ),
        "scipy": (
            lambda: sgemm(1.0, w.T, col.T, beta=0.0, c=s, trans_a=1, overwrite_c=1),
            lambda: sgemm(1.0, w.T, go.T, beta=0.0, c=s, trans_b=1, overwrite_c=1),
            lambda: sgemm(1.0, col.T, go.T, beta=0.0, c=s, overwrite_c=1),
        ),
    }
    if BLIS is not None:
        fns["blis"] = (
            lambda: BLIS.gemm(col, w, out=bo, trans2=True, beta=0.0),
            lambda: BLIS.gemm(go, w, out=bo, trans1=True, beta=0.0),
            lambda: BLIS.gemm(go, col, out=bo, beta=0.0),
        )
    if torch is not None:
        tc, tw, tg, t = (torch.from_numpy(a) for a in (col, w, go, to))
        fns["torch"] = (
            lambda: torch.matmul(tc, tw.T, out=t),
            lambda: torch.matmul(tg.T, tw, out=t),
            lambda: torch.matmul(tg, tc, out=t),
        )
    res = {m: (f[PRODUCTS.index(name)], outs[m]) for m, f in fns.items()}
    return mnk, res


def copy_free(call: Call, out: np.ndarray) -> str:
    """Whether a call allocates no array (tracemalloc peak) and its result lies in ``out``."""
    tracemalloc.start()
    r = call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ok = peak < 4096 and np.shares_memory(np.asarray(r), out)
    return "no copy" if ok else f"COPIES (peak {peak} B)"


def turn(call: Call, number: int) -> float:
    time.sleep(SETTLE_S)
    t0 = time.perf_counter()
    for _ in range(number):
        call()
    return (time.perf_counter() - t0) / number


def header(threads: int) -> None:
    print(f"load average (1/5/15 min): {load()}   os.cpu_count() = {os.cpu_count()}")
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    print(f"numpy {np.__version__}: BLAS {blas.get('name')} {blas.get('version')}")
    try:
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            name = os.path.join(*lib["filepath"].split(os.sep)[-2:])
            print(
                f"  threadpool {lib['internal_api']} {lib['version']} {lib.get('architecture')}"
                f" {lib.get('threading_layer', '')} num_threads={lib['num_threads']}  {name}"
            )
    except ImportError:
        print("  (threadpoolctl not installed)")
    if BLIS is not None:
        import blis.cy

        lib = ctypes.CDLL(blis.cy.__file__)
        lib.bli_info_get_version_str.restype = lib.bli_arch_string.restype = ctypes.c_char_p
        threaded = lib.bli_info_get_enable_threading()
        print(
            f"blis {version('blis')}: bundled BLIS {lib.bli_info_get_version_str().decode()},"
            f" sub-config {lib.bli_arch_string(lib.bli_arch_query_id()).decode()},"
            f" threading {'enabled' if threaded else 'disabled (single-threaded)'}"
        )
    if torch is not None:
        torch.set_num_threads(threads)
        print(
            f"torch {torch.__version__}: num_threads={torch.get_num_threads()}"
            f"  mkldnn={torch.backends.mkldnn.is_available()} mkl={torch.backends.mkl.is_available()}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--turn-ms", type=float, default=30.0, help="length of NumPy's turn (ms)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    args = ap.parse_args()
    header(args.threads)
    rng = np.random.default_rng(0)
    print(f"\nrepeats={args.repeats}; ms per call; speed-up = NumPy's time / the contender's (>1 faster)")
    print(
        f"{'shape':12} {'product':8} {'M×N×K':17} {'contender':9} {'median':>8} {'fastest':>8}"
        f" {'GFLOP/s':>7} {'x med':>6} {'x fast':>6} {'err':>8}  copy"
    )
    for (b, c, hw), name in itertools.product(SHAPES, PRODUCTS):
        n, k = b * hw * hw, 9 * c
        col = rng.standard_normal((n, k), dtype=np.float32)
        w = rng.standard_normal((c, k), dtype=np.float32)
        go = rng.standard_normal((c, n), dtype=np.float32)
        mnk, res = products(col, w, go, name)
        for call, _ in res.values():  # warm-up (thread pools, first-touch of the outputs)
            call()
        ref = res["numpy"][1]
        t1 = min(turn(res["numpy"][0], 1) for _ in range(3))
        number = max(1, round(args.turn_ms / 1e3 / t1))
        names = list(res)
        times: dict[str, list[float]] = {m: [] for m in names}
        for r in range(args.repeats):
            for m in names[r % len(names) :] + names[: r % len(names)]:
                times[m].append(turn(res[m][0], number))
        base_med, base_min = statistics.median(times["numpy"]), min(times["numpy"])
        for m in names:
            call, out = res[m]
            med, fast = statistics.median(times[m]), min(times[m])
            err = float(np.abs(out - ref).max() / np.abs(ref).max())
            gflops = 2 * mnk[0] * mnk[1] * mnk[2] / fast / 1e9
            cp = copy_free(call, out) if m == "scipy" else ""
            print(
                f"{f'{b},{c},{hw}':12} {name:8} {'×'.join(map(str, mnk)):17} {m:9} {med * 1e3:8.3f}"
                f" {fast * 1e3:8.3f} {gflops:7.1f} {base_med / med:6.2f} {base_min / fast:6.2f}"
                f" {err:8.1e}  {cp}"
            )
    print(f"\nload average (1/5/15 min) at the end: {load()}")


if __name__ == "__main__":
    main()
