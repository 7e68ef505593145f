"""The CPU deform_conv2d and ms_deform_attn give the same bits whatever Numba's thread count and
cache state.

Each run is a fresh process (``NUMBA_NUM_THREADS`` is read once, at import) that calls the public API,
``cudcn.functional.deform_conv2d`` and ``cudcn.functional.ms_deform_attn`` on ``cudcn.Tensor`` inputs
with ``.backward()``, and prints a digest of the output and of every gradient. A process that
JIT-compiles the kernels (empty ``NUMBA_CACHE_DIR``) must agree with the processes that load them
from that cache, on 1, 2 and 3 Numba threads: this caught kernels whose fast-math flags let LLVM
round differently in a compiled and in a cached build.
The kernels are forced onto all threads even for these tiny shapes, so that the thread count matters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SEED = 1100

# Two cases per process (each process pays for the import; the cold one for the compile too),
# then the first from three Python threads at once:
# mask and bias, batch 2; no mask, weight and offset groups crossing, stride 2 and dilation 2.
SCRIPT = """
import hashlib, json, sys, threading
import numba
import numpy as np
import cudcn
from cudcn.backends.cpu import threads
from cudcn.functional import deform_conv2d, ms_deform_attn

threads.SERIAL_WORK = 0  # even tiny shapes on all of Numba's threads
seed = int(sys.argv[1])
cases = [
    dict(b=2, c=8, o=6, hw=(9, 7), mask=True, stride=1, dilation=1, groups=1, og=1),
    dict(b=1, c=12, o=6, hw=(10, 11), mask=False, stride=2, dilation=2, groups=2, og=3),
]
def digest(a):
    a = a.data if isinstance(a, cudcn.Tensor) else a
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
def run_case(n, case):
    rng = np.random.default_rng(seed + n)
    b, c, o, (h, w), og = case["b"], case["c"], case["o"], case["hw"], case["og"]
    s, d = case["stride"], case["dilation"]
    ho, wo = (h + 2 - 2 * d - 1) // s + 1, (w + 2 - 2 * d - 1) // s + 1
    def leaf(*shape, low=None):
        a = rng.uniform(low, 1, shape) if low is not None else rng.standard_normal(shape)
        return cudcn.Tensor(a.astype(np.float32), requires_grad=True)
    x = leaf(b, c, h, w)
    off = cudcn.Tensor((3 * rng.standard_normal((b, 18 * og, ho, wo))).astype(np.float32),
                       requires_grad=True)
    wt = leaf(o, c // case["groups"], 3, 3)
    bias = leaf(o)
    mask = leaf(b, 9 * og, ho, wo, low=0.0) if case["mask"] else None
    y = deform_conv2d(x, off, wt, bias, stride=s, padding=1, dilation=d, mask=mask)
    g = rng.standard_normal(y.shape).astype(np.float32)
    (y * cudcn.Tensor(g)).sum().backward()
    named = {"out": y, "input": x.grad, "offset": off.grad, "weight": wt.grad, "bias": bias.grad}
    if mask is not None:
        named["mask"] = mask.grad
    return {f"{n}/{name}": digest(a) for name, a in named.items()}

def run_msda():
    # Two batch items, 4 heads, D = 37 (two runs of lanes and a tail), 3 levels, points outside.
    rng = np.random.default_rng(seed + 10)
    levels = [[6, 7], [3, 4], [1, 2]]
    leaf = lambda a: cudcn.Tensor(a.astype(np.float32), requires_grad=True)
    value = leaf(rng.standard_normal((2, 56, 4, 37)))
    loc = leaf(rng.uniform(-0.1, 1.1, (2, 90, 4, 3, 3, 2)))
    w = leaf(rng.standard_normal((2, 90, 4, 3, 3)))
    y = ms_deform_attn(value, levels, [0, 42, 54], loc, w)
    g = rng.standard_normal(y.shape).astype(np.float32)
    (y * cudcn.Tensor(g)).sum().backward()
    named = {"out": y, "value": value.grad, "locations": loc.grad, "weights": w.grad}
    return {f"msda/{name}": digest(a) for name, a in named.items()}

digests = {}
for n, case in enumerate(cases):
    digests |= run_case(n, case)
digests |= run_msda()
# Three Python threads calling at once (the workqueue layer would abort without the launch lock).
again = [None] * 3
def worker(i):
    again[i] = run_case(0, cases[0])
pool = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
for t in pool:
    t.start()
for t in pool:
    t.join()
digests["concurrent calls agree"] = all(a == run_case(0, cases[0]) for a in again)
digests["threads"] = numba.get_num_threads()
digests["layer"] = numba.threading_layer()
print(json.dumps(digests))
"""


def run(cache_dir: str, threads: int) -> dict:
    """Digests from a fresh process with this Numba cache folder and thread count."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, NUMBA_NUM_THREADS=str(threads))
    env.pop("NUMBA_THREADING_LAYER", None)  # the backend's own choice
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(SEED)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    digests = json.loads(done.stdout.strip().splitlines()[-1])
    assert digests.pop("threads") == threads
    assert digests.pop("layer") == "workqueue"  # the backend's choice in a default environment
    assert digests.pop("concurrent calls agree") is True
    return digests


@pytest.mark.slow
@pytest.mark.parametrize("cold_threads", [1, 3])
def test_cold_and_warm_cache_and_thread_counts_give_the_same_bits(tmp_path, cold_threads):
    """A compiling process against cached ones on 1, 2 and 3 threads (seed in ``SEED``)."""
    cache = str(tmp_path / "numba_cache")
    cold = run(cache, cold_threads)
    assert os.listdir(cache), "the cold run wrote no cache: the test would compare two cold runs"
    assert len(cold) == 15  # 6 digests for the masked case, 5 for the other, 4 for ms_deform_attn
    for threads in (1, 2, 3) if cold_threads == 1 else (cold_threads,):
        assert run(cache, threads) == cold, f"warm cache, {threads} threads"
