"""Issue 22, items 1, 2 and 11 for the RoI ops: per-bin sample counts are bounded (a ValueError that
names the argument, the limit and the value, at once, never a hang or garbage), a failed scratch
allocation raises MemoryError instead of returning uninitialised memory, and ``aligned`` must be a
bool.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import cudcn
from cudcn.functional import deform_psroi_pool, deform_roi_pool, roi_align
from cudcn.ops import roi_align_forward
from cudcn.ops.deform_roi_pool import MAX_SAMPLES_PER_AXIS, MAX_SAMPLES_PER_BIN

BACKENDS = ("cpu", "emulated")


def feats_rois() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    return feats, np.array([[0, 1.0, 1.0, 12.0, 12.0]], np.float32)


def test_one_limit() -> None:
    assert MAX_SAMPLES_PER_AXIS**2 == MAX_SAMPLES_PER_BIN == 2**20


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ratio", [20000, 4000, MAX_SAMPLES_PER_AXIS + 1, 2**31, 2**63])
def test_sampling_ratio_bound(backend: str, ratio: int) -> None:
    """The issue's ``roi_align(feats, rois, (7, 7), 1.0, 20000)`` returned garbage; 2**31 hung."""
    feats, rois = feats_rois()
    start = time.perf_counter()
    with cudcn.use_backend(backend):
        with pytest.raises(
            ValueError, match=rf"sampling_ratio must be at most {MAX_SAMPLES_PER_AXIS}.*{ratio}"
        ):
            roi_align(feats, rois, (7, 7), 1.0, ratio)
        with pytest.raises(ValueError, match="sampling_ratio"):
            deform_roi_pool(feats, rois, None, (7, 7), 1.0, ratio)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_part", [100000, MAX_SAMPLES_PER_AXIS + 1, 2**31])
def test_sample_per_part_bound(backend: str, per_part: int) -> None:
    """The issue's ``deform_psroi_pool(..., sample_per_part=100000)`` returned 4.7e-310."""
    feats, rois = feats_rois()
    kw = {"spatial_scale": 1.0, "output_dim": 1, "group_size": 2, "pooled_size": 2}
    with cudcn.use_backend(backend):
        with pytest.raises(
            ValueError, match=rf"sample_per_part must be at most {MAX_SAMPLES_PER_AXIS}.*{per_part}"
        ):
            deform_psroi_pool(feats, rois, None, sample_per_part=per_part, **kw)


@pytest.mark.slow
def test_largest_sampling_ratio_is_right() -> None:
    """At the limit the CPU still gives the emulated backend's result (one bin, 2**20 samples)."""
    feats, rois = feats_rois()
    with cudcn.use_backend("cpu"):
        got = roi_align_forward(feats, rois, 1, 1.0, MAX_SAMPLES_PER_AXIS, True)
    with cudcn.use_backend("emulated"):
        want = roi_align_forward(feats, rois, 1, 1.0, MAX_SAMPLES_PER_AXIS, True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("aligned", ["no", "False", 0, 1, None, np.float64(1.0)])
def test_aligned_must_be_bool(aligned: object) -> None:
    feats, rois = feats_rois()
    with pytest.raises(TypeError, match="aligned must be a bool"):
        roi_align(feats, rois, 2, aligned=aligned)
    with pytest.raises(TypeError, match="aligned must be a bool"):
        roi_align_forward(feats, rois, 2, aligned=aligned)


def test_aligned_numpy_bool_accepted() -> None:
    feats, rois = feats_rois()
    np.testing.assert_array_equal(
        roi_align_forward(feats, rois, 2, aligned=np.bool_(True)),
        roi_align_forward(feats, rois, 2, aligned=True),
    )


MEMORY_PROBE = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from cudcn.ops import deform_psroi_pool_forward, roi_align_backward, roi_align_forward

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((1, 8, 16, 16))
    rois = np.array([[0, 1.0, 1.0, 12.0, 12.0]])
    small = roi_align_forward(feats, rois, 1, 1.0, 2, True)  # compile/load, start the threads
    kw = dict(spatial_scale=1.0, output_dim=2, group_size=2, pooled_size=1)
    deform_psroi_pool_forward(feats, rois, None, sample_per_part=2, **kw)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize")) * 1024
    # the scratch for a 1024 x 1024 grid needs 4 * 2**20 taps * 32 bytes = 128 MiB per task
    resource.setrlimit(resource.RLIMIT_AS, (vm + 48 * 2**20, resource.RLIM_INFINITY))
    results = []
    grad = np.ones((1, 8, 1, 1))
    for name, call in (
        ("roi_align", lambda: roi_align_forward(feats, rois, 1, 1.0, 1024, True)),
        ("roi_align backward", lambda: roi_align_backward(grad, feats, rois, 1, 1.0, 1024, True)),
        ("psroi", lambda: deform_psroi_pool_forward(feats, rois, None, sample_per_part=1024, **kw)),
    ):
        try:
            out = call()
        except MemoryError:
            results.append(name + " MemoryError")
            continue
        out = out[0] if isinstance(out, tuple) else out
        ok = bool(np.isfinite(out).all() and np.abs(out).max() < 10)
        results.append(name + (" ok " if ok else " GARBAGE ") + repr(out.ravel()[:4]))
    print("\\n".join(results))
    """
)


def test_scratch_allocation_failure_raises() -> None:
    """Under an address-space limit too small for the scratch of a grid the limit allows, every RoI
    op raises MemoryError or gives a sane result; before, Numba swallowed the failed allocation in a
    ``prange`` and the call returned uninitialised memory."""
    run = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 3, run.stdout
    assert not [line for line in lines if "GARBAGE" in line], run.stdout
