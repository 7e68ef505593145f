"""``cudcn.deterministic()``: gradients that the GPU path scatters with atomics (the deform_conv2d
input gradient, the RoI and PS-RoI input, offset and trans gradients, the ms_deform_attn value
gradient, beside its warp-reduced location and weight gradients) come out bitwise identical
for any schedule of the emulated backend (worker counts, block orders, concurrent threads), where
without the mode the same schedules change the last bits (the control). The deterministic sums
stay within the stated error of the atomic ones, NaN still propagates, and the CPU backend is
deterministic with or without the mode."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import cudcn
import cudcn.backends.emulated as emulated
from cudcn import dtypes, reference
from cudcn.backends.cpu import deform_roi_pool_backward as cpu_roi_backward
from cudcn.backends.emulated import build as host_build
from cudcn.backends.emulated.loader import uses_cooperation
from cudcn.backends.launch import common as launch
from cudcn.dtypes import FLOAT_DTYPES, compute_dtype
from cudcn.ops.deform_conv2d import DeformConv2dParams
from cudcn.ops.deform_psroi_pool import DeformPSRoIPoolParams
from cudcn.ops.deform_roi_pool import DeformRoIPoolParams
from cudcn.ops.ms_deform_attn import MSDeformAttnParams
from cudcn.testing import assert_allclose_to_reference, summation_order_tolerance

pytestmark = pytest.mark.skipif(
    shutil.which(host_build.compiler()) is None, reason="no C++ compiler for the emulated backend"
)
SEED = 9091
SCHEDULES = [
    ("concurrent", "3", "0"),
    ("concurrent", "2", "1"),
    ("concurrent", "1", "2"),
    ("serial", "1", "3"),
    ("serial", "2", "4"),
    ("concurrent", "3", "5"),
]
CONV = DeformConv2dParams(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, offset_groups=1)
ROI = DeformRoIPoolParams(
    pooled_h=3, pooled_w=3, spatial_scale=0.5, sampling_ratio=2, gamma=0.3, aligned=True
)
PSROI = DeformPSRoIPoolParams(
    spatial_scale=0.5,
    output_dim=4,
    group_size=2,
    pooled_size=3,
    part_size=3,
    sample_per_part=2,
    trans_std=0.3,
)

MSDA = MSDeformAttnParams(((3, 3), (2, 2)), (0, 9))
PARAMS = {"deform_roi_pool": ROI, "deform_psroi_pool": PSROI, "ms_deform_attn": MSDA}  # but the conv
# Contributions one scattered element may receive (the summation-order bound's term count).
TERMS = {"deform_conv2d": 4 * 9 * 3, "deform_roi_pool": 4 * 9 * 12, "deform_psroi_pool": 4 * 9 * 12}
TERMS["ms_deform_attn"] = 6 * 2  # 6 queries x 2 points of one level, one neighbour each


def _inputs(op: str, dtype, seed: int = SEED) -> tuple:
    """Small inputs with many colliding scatter targets (offsets of a fraction of a pixel, many
    overlapping RoIs on a small map, many queries on small levels)."""
    rng = np.random.default_rng(seed)
    if op == "ms_deform_attn":
        # Few groups (the emulator's warp shuffles are slow), all on one head's small levels.
        value = rng.standard_normal((1, 13, 1, 5)).astype(dtype)
        locations = rng.uniform(0, 1, (1, 6, 1, 2, 2, 2)).astype(compute_dtype(dtype))
        weights, grad = rng.standard_normal((1, 6, 1, 2, 2)), rng.standard_normal((1, 6, 1, 5))
        return grad.astype(dtype), value, locations, weights.astype(dtype)
    if op == "deform_conv2d":
        x = rng.standard_normal((2, 3, 6, 6))
        offset = rng.uniform(-0.6, 0.6, (2, 18, 6, 6))
        weight, mask = rng.standard_normal((4, 3, 3, 3)), rng.uniform(0.2, 1, (2, 9, 6, 6))
        grad = rng.standard_normal((2, 4, 6, 6))
        return tuple(a.astype(dtype) for a in (grad, x, offset, weight, mask))
    channels = 4 * 4 if op == "deform_psroi_pool" else 3
    x = rng.standard_normal((2, channels, 6, 6))
    corners = rng.uniform(0, 8, (12, 2))
    rois = np.column_stack([rng.integers(0, 2, 12), corners, corners + rng.uniform(2, 5, (12, 2))])
    deform = rng.uniform(-1, 1, (12, 4, 3, 3) if op == "deform_psroi_pool" else (12, 2, 3, 3))
    grad = rng.standard_normal((12, 4 if op == "deform_psroi_pool" else channels, 3, 3))
    return tuple(a.astype(dtype) for a in (grad, x, rois, deform))


def _backward(op: str, args: tuple) -> list[np.ndarray]:
    if op == "deform_conv2d":
        grad, x, offset, weight, mask = args
        grads = emulated.deform_conv2d_backward(grad, x, offset, weight, None, mask, CONV)
        return [grads[0], grads[1], grads[4]]
    return list(getattr(emulated, f"{op}_backward")(*args, PARAMS[op]))


def _under_schedules(monkeypatch, op: str, args: tuple) -> list[list[np.ndarray]]:
    monkeypatch.setattr(launch, "THREADS_PER_BLOCK", 32)  # many blocks meet on every target
    results = []
    for mode, workers, seed in SCHEDULES:
        if uses_cooperation(op):  # serial mode refuses kernels whose threads cooperate (shuffles)
            mode = "concurrent"
        monkeypatch.setenv("CUDCN_EMULATED_MODE", mode)
        monkeypatch.setenv("CUDCN_EMULATED_WORKERS", workers)
        monkeypatch.setenv("CUDCN_EMULATED_SEED", seed)
        results.append(_backward(op, args))
    return results


def _identical(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))


OPS = ["deform_conv2d", "deform_roi_pool", "deform_psroi_pool", "ms_deform_attn"]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_deterministic_mode_is_bitwise_identical_for_every_schedule(monkeypatch, op, dtype):
    args = _inputs(op, dtype)
    with cudcn.deterministic():
        runs = _under_schedules(monkeypatch, op, args)
    assert all(_identical(runs[0], run) for run in runs[1:]), f"{op}: schedules changed the bits"
    if dtypes.is_half_dtype(dtype):
        # 16-bit gradients are float32 scatters rounded once (test_half_precision.py checks that
        # bit for bit); the rounding hides the float32 sums' last bits, so the control below runs
        # on the float32 instantiation of the same scatters only.
        return
    # Control: the same schedules without the mode do change the atomic sums' last bits, so the
    # check above could have failed.
    atomic = _under_schedules(monkeypatch, op, args)
    assert not all(_identical(atomic[0], run) for run in atomic[1:]), f"{op}: control never varied"
    # The deterministic sums are the exact sums of the same contributions: within the atomic
    # sums' summation-order error (plus the fixed-point rounding, far smaller).
    for got, other in zip(runs[0], atomic[0], strict=True):
        allowed = summation_order_tolerance(dtype, np.abs(other).max() + 1.0, TERMS[op])
        np.testing.assert_array_less(np.abs(got.astype(np.float64) - other), allowed + 1e-300)


def test_deterministic_conv_matches_the_float64_reference():
    grad, x, offset, weight, mask = _inputs("deform_conv2d", np.float64)
    with cudcn.deterministic():
        got = emulated.deform_conv2d_backward(grad, x, offset, weight, None, mask, CONV)
    want = reference.deform_conv2d_backward(grad, x, offset, weight, None, mask, CONV)
    scale = reference.deform_conv2d_backward(abs(grad), x, offset, abs(weight), None, mask, CONV)
    assert_allclose_to_reference(
        got[0], want[0], np.float64, scale=scale[0] + 1e-300, factor=64, name="grad_input"
    )


@pytest.mark.parametrize("op", OPS)
def test_nan_in_grad_out_reaches_the_same_gradients_in_both_modes(op):
    args = list(_inputs(op, np.float32))
    args[0] = args[0].copy()
    args[0].flat[5] = np.nan
    atomic = _backward(op, tuple(args))
    with cudcn.deterministic():
        exact = _backward(op, tuple(args))
    first = atomic[0]
    assert np.isnan(first).any() and not np.isnan(first).all()
    for a, d in zip(atomic, exact, strict=True):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(d))


def test_deterministic_flag_from_the_environment(monkeypatch):
    from cudcn.backends import deterministic_enabled

    monkeypatch.setenv("CUDCN_DETERMINISTIC", "1")
    assert deterministic_enabled()
    with cudcn.deterministic(False):
        assert not deterministic_enabled()
    monkeypatch.setenv("CUDCN_DETERMINISTIC", "yes")
    with pytest.raises(ValueError, match="CUDCN_DETERMINISTIC must be 0 or 1"):
        deterministic_enabled()


def test_cpu_backend_is_deterministic_with_or_without_the_mode():
    grad, x, rois, offset = _inputs("deform_roi_pool", np.float32)
    plain = cpu_roi_backward(grad, x, rois, offset, ROI)
    with cudcn.deterministic():
        again = cpu_roi_backward(grad, x, rois, offset, ROI)
    assert _identical(list(plain), list(again))
