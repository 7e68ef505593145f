"""AddressSanitizer run of the host-built kernels, so an out-of-bounds access in a kernel fails CI.

A subprocess builds the kernels with ``CUDCN_HOST_SANITIZE=address`` (a separate cache entry), preloads
the compiler's ``libasan`` (Python itself is not instrumented) with leak detection off, and runs a small
set of emulated configurations against the reference: borders, big and non-finite offsets, crossing
groups, several batch chunks and the 64-bit index kernels. A second run plants an out-of-bounds read to
prove the harness reports one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cudcn.backends.emulated.build import compiler

ROOT = Path(__file__).resolve().parent.parent

CONFIGS = r"""
import numpy as np
from cudcn import reference
from cudcn.backends import poisoning
from cudcn.backends.cuda import deform_conv2d as dc_launch, launch
import cudcn.backends.emulated as emulated

def run(seed, dtype, batch, channels, size, out_channels, kernel, stride, padding, dilation,
        groups, offset_groups, use_mask, scale):
    rng = np.random.default_rng(seed)
    kh, kw = kernel
    out_h = (size[0] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (size[1] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    taps = offset_groups * kh * kw
    x = rng.standard_normal((batch, channels, *size)).astype(dtype)
    offset = rng.uniform(-scale, scale, (batch, 2 * taps, out_h, out_w)).astype(dtype)
    offset.flat[::9] = np.round(offset.flat[::9])  # exact pixel and border coordinates
    offset.flat[1::17] = np.nan
    offset.flat[2::23] = np.inf
    offset.flat[3::29] = -1.0e30
    weight = rng.standard_normal((out_channels, channels // groups, kh, kw)).astype(dtype)
    bias = rng.standard_normal(out_channels).astype(dtype)
    mask = rng.uniform(0.1, 1, (batch, taps, out_h, out_w)).astype(dtype) if use_mask else None
    grad_out = rng.standard_normal((batch, out_channels, out_h, out_w)).astype(dtype)
    p = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
             offset_groups=offset_groups)
    with poisoning():
        got = [emulated.deform_conv2d_forward(x, offset, weight, bias, mask, **p),
               *emulated.deform_conv2d_backward(grad_out, x, offset, weight, bias, mask, **p)]
    want = [reference.deform_conv2d_forward(x, offset, weight, bias, mask, **p),
            *reference.deform_conv2d_backward(grad_out, x, offset, weight, bias, mask, **p)]
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for g, w in zip(got, want):
        if w is not None:
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol * max(1.0, np.abs(w).max()))

checked = 0
for dtype in (np.float32, np.float64):
    run(1, dtype, 2, 6, (5, 6), 4, (2, 3), (2, 1), (1, 0), (2, 1), 2, 3, True, 4.0)
    run(2, dtype, 2, 4, (4, 4), 4, (3, 3), (1, 1), (2, 2), (1, 1), 1, 2, False, 6.0)
    checked += 2
dc_launch.COLUMN_BUDGET_BYTES = 1  # one item per chunk
launch.INDEX32_LIMIT = 0  # the long long kernels
run(3, np.float64, 3, 2, (3, 5), 3, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, 2.0)
print("checked", checked + 1)
"""

PLANTED = r"""
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


def _libasan() -> str | None:
    try:
        found = subprocess.run(
            [compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return found if os.path.isabs(found) and os.path.exists(found) else None


LIBASAN = _libasan()
pytestmark = pytest.mark.skipif(LIBASAN is None, reason="the C++ compiler has no libasan.so")


def _run_sanitized(script: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=str(LIBASAN),
        ASAN_OPTIONS="detect_leaks=0",
        CUDCN_HOST_SANITIZE="address",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    env.pop("CUDCN_HOST_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900
    )


def test_emulated_kernels_are_clean_under_asan() -> None:
    result = _run_sanitized(CONFIGS)
    assert "AddressSanitizer" not in result.stderr, result.stderr[-6000:]
    assert result.returncode == 0, result.stderr[-6000:]
    assert "checked 5" in result.stdout


def test_asan_reports_a_planted_out_of_bounds_read() -> None:
    result = _run_sanitized(PLANTED)
    assert result.returncode != 0
    assert "heap-buffer-overflow" in result.stderr, result.stderr[-3000:]
    assert "deform_conv2d_im2col" in result.stderr  # the report names the kernel
