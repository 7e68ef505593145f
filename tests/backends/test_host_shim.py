"""The emulator's execution model (cudcn/kernels/host_shim.h) on kernels written to fail without it:
threads of a block that share memory, meet at barriers and exchange values in warps; blocks in a
shuffled, seeded order; and the GPU's float rules (flushed denormals, fmax's NaN rule, saturating
float -> int). Race detection is in test_sanitizers.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cudcn.backends.emulated import build as host_build

from .cooperation_kernels import library

pytestmark = pytest.mark.skipif(
    shutil.which(host_build.compiler()) is None, reason="no C++ compiler for the emulated backend"
)
SEED = 5150


@pytest.fixture
def concurrent(monkeypatch):
    monkeypatch.setenv("CUDCN_EMULATED_MODE", "concurrent")
    monkeypatch.setenv("CUDCN_EMULATED_WORKERS", "3")


@pytest.mark.parametrize("seed", ["0", "1", "2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shared_memory_and_barrier_are_per_block(concurrent, monkeypatch, dtype, seed) -> None:
    monkeypatch.setenv("CUDCN_EMULATED_SEED", seed)
    kernel = library().get_kernel(f"block_reverse<{'float' if dtype == np.float32 else 'double'}>")
    values = np.random.default_rng(SEED).standard_normal((7, 64)).astype(dtype)
    out = np.full_like(values, np.nan)
    kernel((7,), (64,), (values, out))  # 7 blocks, 3 at a time
    np.testing.assert_array_equal(out, values[:, ::-1])


def test_warp_shuffles_and_ballot(concurrent) -> None:
    kernel = library().get_kernel("warp_reduce")
    # Small integers: every sum is exact in float32, whatever the order of the additions.
    values = np.random.default_rng(SEED).integers(-8, 9, 3 * 96).astype(np.float32)
    warps = values.reshape(-1, 32)
    sums, total = np.full(len(warps), np.nan, np.float32), np.full(len(warps), np.nan, np.float32)
    votes = np.zeros(len(warps), np.uint32)
    kernel((3,), (96,), (values, sums, total, votes))
    np.testing.assert_array_equal(sums, warps.sum(axis=1))
    np.testing.assert_array_equal(total, warps.sum(axis=1))
    want = ((warps > 0) * (1 << np.arange(32, dtype=np.uint64))).sum(axis=1).astype(np.uint32)
    np.testing.assert_array_equal(votes, want)


def test_barrier_does_not_wait_for_threads_that_returned(concurrent) -> None:
    kernel = library().get_kernel("early_exit")
    values = np.arange(100, 164, dtype=np.int32)
    out = np.full(64, -1, np.int32)
    kernel((1,), (64,), (values, out, np.int32(40)))
    np.testing.assert_array_equal(out[:40], values[:40][::-1])
    np.testing.assert_array_equal(out[40:], -1)


def test_serial_mode_refuses_a_cooperating_kernel(monkeypatch) -> None:
    monkeypatch.setenv("CUDCN_EMULATED_MODE", "serial")
    kernel = library().get_kernel("block_reverse<float>")
    values = np.zeros((1, 32), np.float32)
    with pytest.raises(RuntimeError, match="CUDCN_EMULATED_MODE=concurrent"):
        kernel((1,), (32,), (values, values.copy()))


def test_cooperating_source_runs_concurrent_by_default(monkeypatch) -> None:
    monkeypatch.delenv("CUDCN_EMULATED_MODE", raising=False)
    assert library().get_kernel("early_exit").cooperates
    values = np.arange(32, dtype=np.int32)
    out = np.zeros(32, np.int32)
    library().get_kernel("early_exit")((1,), (32,), (values, out, np.int32(32)))
    np.testing.assert_array_equal(out, values[::-1])


def _block_order(monkeypatch, seed: str) -> np.ndarray:
    monkeypatch.setenv("CUDCN_EMULATED_SEED", seed)
    counter, ticket = np.zeros(1, np.uint32), np.zeros(16, np.uint32)
    library().get_kernel("block_order")((16,), (32,), (counter, ticket))
    return ticket


@pytest.mark.parametrize("mode", ["serial", "concurrent"])
def test_block_order_is_shuffled_by_the_seed(monkeypatch, mode) -> None:
    monkeypatch.setenv("CUDCN_EMULATED_MODE", mode)
    monkeypatch.setenv("CUDCN_EMULATED_WORKERS", "1")  # one block at a time: the order is exact
    first, again, other = (_block_order(monkeypatch, s) for s in ("0", "0", "1"))
    np.testing.assert_array_equal(np.sort(first), np.arange(16))  # every block ran once
    assert not np.array_equal(first, np.arange(16)), "blocks ran in grid order"
    np.testing.assert_array_equal(first, again)  # a seed gives one order
    assert not np.array_equal(first, other), "seeds 0 and 1 gave the same order"


@pytest.mark.parametrize("mode", ["serial", "concurrent"])
def test_gpu_float_rules(monkeypatch, mode) -> None:
    monkeypatch.setenv("CUDCN_EMULATED_MODE", mode)
    kernel = library().get_kernel("float_rules")
    tiny = np.float32(1e-39)  # a float32 denormal
    values = np.array([np.nan, 3e9, -3e9, -2.7, 2.7, tiny, 1e-30, np.inf], np.float32)
    ints = np.zeros(len(values), np.int32)
    flushed, largest = np.full_like(values, -1), np.full_like(values, -1)
    kernel((1,), (32,), (values, ints, flushed, largest, np.float32(1e-10), np.int32(len(values))))
    imax, imin = np.iinfo(np.int32).max, np.iinfo(np.int32).min
    np.testing.assert_array_equal(ints, [0, imax, imin, -2, 2, 0, 0, imax])  # cvt.rzi.s32
    assert flushed[5] == 0 and flushed[6] == 0  # denormal input; denormal result 1e-40
    assert flushed[3] == np.float32(-2.7) * np.float32(1e-10)  # normal values are untouched
    np.testing.assert_array_equal(
        largest, np.array([1, 3e9, 1, 1, 2.7, 1, 1, np.inf], np.float32)
    )  # fmaxf(NaN, 1) = 1
    # The calling thread's float environment is restored: NumPy still keeps denormals.
    assert tiny * np.float32(1) != 0


SHUFFLE_FROM_RETURNED = r"""
import sys
import numpy as np
from cooperation_kernels import library

values, total = np.arange(32, dtype=np.float32), np.full(1, np.nan, np.float32)
library().get_kernel("shuffle_from_returned")((1,), (32,), (values, total, np.int32(sys.argv[1])))
print("sum", total[0])
"""


@pytest.mark.parametrize("count", [32, 3])
def test_a_shuffle_reading_a_returned_lane_traps(count) -> None:
    """Lanes that returned leave the warp; a shuffle that reads one (undefined on a GPU) ends the
    process with a trap instead of reading a stale slot. A whole warp sums as usual."""
    env = dict(os.environ, CUDCN_EMULATED_MODE="concurrent")
    here = Path(__file__).resolve().parent
    env["PYTHONPATH"] = os.pathsep.join([str(here.parents[1]), str(here)])
    args = [sys.executable, "-c", SHUFFLE_FROM_RETURNED, str(count)]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    if count == 32:
        assert result.returncode == 0 and "sum 496.0" in result.stdout, result.stderr[-2000:]
    else:
        assert result.returncode != 0
        assert "a shuffle reads a lane that has returned" in result.stderr, result.stderr[-2000:]
