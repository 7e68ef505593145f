"""The host-built kernels under AddressSanitizer and ThreadSanitizer, and proof that both can fail.

Each check runs ``tests/backends/sanitized_kernels.py`` for one op (every kernel of it, small blocks,
grid-stride loops that wrap; one test per op and sanitizer) in a subprocess that builds the kernels
with ``CUDCN_HOST_SANITIZE`` (a separate cache entry) and preloads the sanitizer's runtime (Python
itself is not instrumented). The emulated backend runs concurrent, 3 blocks at a time, every CUDA
thread an OS thread, so ThreadSanitizer sees the threads of a block as the separate threads they are
on a GPU.

The checks that prove the harness can fail: an out-of-bounds read planted in a launch (ASan), a
one-block kernel that adds with a plain read-add-write (TSan sees threads of one block race), and a
copy of the package whose kernels' ``atomicAdd`` calls (all in ``Scatter::add``, common.cuh) are
replaced by ``+=``: the mutation the race check exists for, which TSan must report in each scatter
kernel, while the real kernels run clean.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cudcn.backends.emulated.build import compiler

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "sanitized_kernels.py"
TESTS = Path(__file__).resolve().parent
OPTIONS = {"address": "ASAN_OPTIONS=detect_leaks=0", "thread": "TSAN_OPTIONS=halt_on_error=0"}
# Each op's configurations in sanitized_kernels.py (how many must be checked) and its scatter kernel.
RUNS = {"deform_conv2d": 24, "deform_roi_pool": 36, "deform_psroi_pool": 24, "ms_deform_attn": 24}
SCATTER_KERNELS = {
    "deform_conv2d": "deform_conv2d_col2im",
    "deform_roi_pool": "deform_roi_pool_backward",
    "deform_psroi_pool": "deform_psroi_pool_backward",
    "ms_deform_attn": "ms_deform_attn_backward",
}

pytestmark = pytest.mark.slow  # each check builds the kernels under a sanitizer: 1-2 min

PLANTED_OUT_OF_BOUNDS = r"""
import numpy as np
from cudcn.backends.emulated.loader import host_library

kernel = host_library("deform_conv2d").get_kernel("deform_conv2d_im2col<double, int>")
x = np.ones((1, 2, 3, 2))  # the geometry below claims (1, 2, 3, 3): the second channel overruns
offset = np.zeros((1, 18, 3, 3))
columns = np.empty(2 * 9 * 9)
geometry = (1, 2, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0)
kernel((1,), (256,), (x, offset, np.zeros(1), columns, np.int32(18),
                      *(np.int32(v) for v in geometry)))
print("no report")
"""

ONE_BLOCK_SUM = r"""
import sys
import numpy as np
from cooperation_kernels import library

values, total = np.arange(32, dtype=np.float64), np.zeros(1)
library().get_kernel(sys.argv[1])((1,), (32,), (values, total))
print("sum", total[0])
"""


@functools.cache
def runtime(name: str) -> str | None:
    """The compiler's sanitizer runtime (libasan.so / libtsan.so), or None."""
    try:
        found = subprocess.run(
            [compiler(), f"-print-file-name=lib{name[0]}san.so"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return found if os.path.isabs(found) and os.path.exists(found) else None


def sanitized(name: str, args: list[str], package_root: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``python *args`` with kernels built under sanitizer ``name`` (``address``/``thread``)."""
    library = runtime(name)
    if library is None:
        pytest.skip(f"the C++ compiler has no lib{name[0]}san.so")
    env = dict(os.environ)
    key, value = OPTIONS[name].split("=", 1)
    env.update(
        {key: value},
        LD_PRELOAD=library,
        CUDCN_HOST_SANITIZE=name,
        CUDCN_EMULATED_MODE="concurrent",
        CUDCN_EMULATED_WORKERS="3",
        PYTHONPATH=os.pathsep.join([str(package_root), str(TESTS)]),
    )
    env.pop("CUDCN_HOST_DEBUG", None)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("op", RUNS)
@pytest.mark.parametrize("name", ["address", "thread"])
def test_every_kernel_is_clean_under_the_sanitizer(name: str, op: str) -> None:
    result = sanitized(name, [str(SCRIPT), op])
    assert "Sanitizer" not in result.stderr, result.stderr[-8000:]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"checked {op} {RUNS[op]}" in result.stdout


def test_asan_reports_a_planted_out_of_bounds_read() -> None:
    result = sanitized("address", ["-c", PLANTED_OUT_OF_BOUNDS])
    assert result.returncode != 0
    assert "heap-buffer-overflow" in result.stderr, result.stderr[-3000:]
    assert "deform_conv2d_im2col" in result.stderr  # the report names the kernel


def test_tsan_sees_the_threads_of_one_block_race() -> None:
    racy = sanitized("thread", ["-c", ONE_BLOCK_SUM, "racy_sum"])
    assert "WARNING: ThreadSanitizer: data race" in racy.stderr, racy.stderr[-3000:]
    assert "racy_sum" in racy.stderr
    atomic = sanitized("thread", ["-c", ONE_BLOCK_SUM, "atomic_sum"])
    assert "ThreadSanitizer" not in atomic.stderr, atomic.stderr[-3000:]
    assert "sum 496.0" in atomic.stdout  # 0 + 1 + ... + 31


_ATOMIC_ADD = re.compile(r"atomicAdd\(([^;]*?),\s*([^;]*)\);")


@pytest.mark.parametrize("op", SCATTER_KERNELS)
def test_tsan_reports_atomic_adds_turned_into_plain_adds(tmp_path: Path, op: str) -> None:
    """The mutation the race check exists for, on a copy of the package: it must be reported in
    each scatter kernel (the real kernels pass test_every_kernel_is_clean_under_the_sanitizer)."""
    copy = tmp_path / "cudcn"
    shutil.copytree(ROOT / "cudcn", copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / "kernels" / "common.cuh"  # every scatter adds through its Scatter::add
    text, count = _ATOMIC_ADD.subn(r"*(\1) += \2;", path.read_text())
    # Scatter::add's atomicAdd calls: the float one (atomic mode, non-finite values), the survey's
    # count and the two fixed-point words.
    assert count == 4, f"expected the 4 atomicAdd calls of Scatter::add, mutated {count}"
    path.write_text(text)
    # One op per process: TSan names the functions of the first kernel library loaded only.
    result = sanitized("thread", [str(SCRIPT), "--one", op], package_root=tmp_path)
    assert "WARNING: ThreadSanitizer: data race" in result.stderr, result.stderr[-3000:]
    kernel = SCATTER_KERNELS[op]
    assert kernel in result.stderr, f"no race reported in {kernel}: {result.stderr[-3000:]}"
