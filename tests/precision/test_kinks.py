"""Sampling points on the kinks of each op's formula, in float32 and float64, on every backend: the
emulated backend runs the .cu kernels under the GPU's float rules (flushed denormals, no FMA
contraction, fmin/fmax, saturating conversions; see cudcn/kernels/host_shim.h).

Exact kinks (coordinates built from dyadic numbers, so float32 computes them without rounding) must
follow docs/spec.md's formula on the kink itself: deform_conv2d's forward difference at integer coordinates,
the value 0 and derivative v(0) at -1 and nothing at H; RoIAlign's border inclusion at -1 and H, its
clamp at 0 and snap at H - 1; PS-RoI's limits at -0.5 and W - 0.5 and its exact integer samples.

Near kinks, a float32 coordinate may round onto the kink while the float64 reference stays beside it
(y = base + offset with offset one ulp below an integer). Either side's formula is then legitimate:
the test says so and accepts, element by element, the reference at the rounded coordinate or at the
unrounded one, each within the derived float32 tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from cudcn import reference
from cudcn.backends import get_backend
from cudcn.ops.deform_conv2d import DeformConv2dParams
from cudcn.ops.deform_psroi_pool import DeformPSRoIPoolParams
from cudcn.ops.deform_roi_pool import DeformRoIPoolParams
from cudcn.testing import poison_outputs, reference_tolerance

SEED = 77031
CONV = DeformConv2dParams(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, offset_groups=1)
H, W = 5, 6


def _conv_base() -> tuple[np.ndarray, np.ndarray]:
    """The unshifted tap positions (kh * kw, H_out, W_out) of a 3x3, pad-1 conv: y and x."""
    oy, ox = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    taps = [(i, j) for i in range(3) for j in range(3)]
    return (np.stack([oy - 1 + i for i, _ in taps]), np.stack([ox - 1 + j for _, j in taps]))


def _conv_offsets(targets_y: np.ndarray, targets_x: np.ndarray) -> np.ndarray:
    """Offsets (1, 18, H, W) that move every tap to the target coordinates."""
    by, bx = _conv_base()
    offset = np.empty((1, 18, H, W))
    offset[0, 0::2], offset[0, 1::2] = targets_y - by, targets_x - bx
    return offset


def _run_conv(backend, x, offset, weight, mask, grad):
    dev = [backend.asarray(a) for a in (x, offset, weight, mask, grad)]
    with backend.context(), poison_outputs():
        module = get_backend(dev[0])
        out = module.deform_conv2d_forward(dev[0], dev[1], dev[2], None, dev[3], CONV)
        grads = module.deform_conv2d_backward(dev[4], dev[0], dev[1], dev[2], None, dev[3], CONV)
    return [backend.to_numpy(a) for a in (out, *grads) if a is not None]


def _conv_reference(x, offset, weight, mask, grad):
    args = [a.astype(np.float64) for a in (x, offset, weight)]
    m, g = mask.astype(np.float64), grad.astype(np.float64)
    out = reference.deform_conv2d_forward(*args, None, m, CONV)
    grads = reference.deform_conv2d_backward(g, *args, None, m, CONV)
    return [out, *(a for a in grads if a is not None)]


def _conv_inputs(dtype, offset):
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((1, 2, H, W)).astype(dtype)
    weight = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
    mask = rng.uniform(0.5, 1.0, (1, 9, H, W)).astype(dtype)
    grad = rng.standard_normal((1, 3, H, W)).astype(dtype)
    return x, offset.astype(dtype), weight, mask, grad


def _allowed(dtype, want: np.ndarray, terms: int) -> np.ndarray:
    return reference_tolerance(dtype, np.abs(want).max() + 1.0, factor=4.0 * terms)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_exact_kinks_follow_the_formula(backend, dtype) -> None:
    rng = np.random.default_rng(SEED + 1)
    kinks = np.array([-1.0, 0.0, 1.0, H - 2.0, H - 1.0, H, -1.5, H - 0.5])  # border and inside
    ty = rng.choice(kinks, (9, H, W))
    tx = rng.choice(np.array([-1.0, 0.0, 2.0, W - 1.0, W, 0.5, W - 1.25]), (9, H, W))
    inputs = _conv_inputs(dtype, _conv_offsets(ty, tx))
    got, want = _run_conv(backend, *inputs), _conv_reference(*inputs)
    names = ("output", "grad_input", "grad_offset", "grad_weight", "grad_mask")
    for name, g, w in zip(names, got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=_allowed(dtype, w, 64), err_msg=name)


def test_conv_float32_coordinates_that_round_onto_a_kink(backend) -> None:
    """offset = n - ulp: base + offset rounds to the integer base + n in float32 (a kink), while
    float64 keeps it one ulp below. The offset gradient jumps there (v(y0+1) - v(y0) on either
    side of y0 = base + n), so each element must match one side's reference."""
    by, bx = _conv_base()
    rng = np.random.default_rng(SEED + 2)
    n = rng.integers(1, 3, (9, H, W)).astype(np.float32)
    below = np.nextafter(n, np.float32(0))  # one float32 ulp below n
    offset = _conv_offsets(by + below, bx + rng.uniform(-0.4, 0.4, (9, H, W)))
    inputs = _conv_inputs(np.float32, offset)
    y32 = (by.astype(np.float32) + inputs[1][0, 0::2]).astype(np.float64)  # float32 sums
    assert np.any(y32 != by + below.astype(np.float64)), "no coordinate rounded onto a kink"
    onto = inputs[1].astype(np.float64).copy()
    onto[0, 0::2] = y32 - by  # the offsets a float32 kernel effectively uses
    got = _run_conv(backend, *inputs)
    unrounded = _conv_reference(*inputs)
    rounded = _conv_reference(inputs[0], onto, *inputs[2:])
    jump = np.abs(unrounded[2] - rounded[2]).max()
    assert jump > 0.1, f"the two sides' offset gradients differ by only {jump}: no kink tested"
    names = ("output", "grad_input", "grad_offset", "grad_weight", "grad_mask")
    for name, g, a, b in zip(names, got, unrounded, rounded, strict=True):
        tol = _allowed(np.float32, np.maximum(np.abs(a), np.abs(b)), 64)
        either = (np.abs(g - a) <= tol) | (np.abs(g - b) <= tol)
        assert either.all(), f"{name}: {int((~either).sum())} elements match neither side"
    if backend.name != "cpu":  # the .cu kernels compute y in float32, on the kink side
        np.testing.assert_allclose(got[2], rounded[2], rtol=0, atol=_allowed(np.float32, rounded[2], 64))


def _run_roi(backend, x, rois, offset, grad, params):
    dev = [None if a is None else backend.asarray(a) for a in (x, rois, offset, grad)]
    with backend.context(), poison_outputs():
        module = get_backend(dev[0])
        out = module.deform_roi_pool_forward(*dev[:3], params)
        grads = module.deform_roi_pool_backward(dev[3], *dev[:3], params)
    return [backend.to_numpy(a) for a in (out, *grads) if a is not None]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roi_align_samples_on_its_border_clamp_and_snap(backend, dtype) -> None:
    """One sample per bin (sampling_ratio 1, aligned=False, scale 1): bin (i, j) of a RoI starting
    at (x1, y1) with 1-pixel bins samples (x1 + j + 0.5, y1 + i + 0.5); offsets of +-1/4 of a bin
    (gamma 0.25 * roi size 4 * offset) move samples by dyadic amounts. The RoIs put samples on
    -1 and H (included), -1.25 and H + 0.25 (outside), 0 (the clamp) and H - 1 (the snap)."""
    rng = np.random.default_rng(SEED + 3)
    x = rng.standard_normal((1, 2, H, W)).astype(dtype)
    starts = [(-1.5, -1.5), (H - 4.5, W - 4.5), (-1.75, -0.5), (H - 3.25, W - 3.25), (0.5, 0.5)]
    rois = np.array([[0, sx, sy, sx + 4, sy + 4] for sy, sx in starts], dtype)
    offset = rng.choice(np.array([-1.0, 0.0, 1.0, 0.5]), (len(starts), 2, 4, 4)).astype(dtype)
    grad = rng.standard_normal((len(starts), 2, 4, 4)).astype(dtype)
    params = DeformRoIPoolParams(
        pooled_h=4, pooled_w=4, spatial_scale=1.0, sampling_ratio=1, gamma=0.25, aligned=False
    )
    got = _run_roi(backend, x, rois, offset, grad, params)
    x64, r64, o64, g64 = (a.astype(np.float64) for a in (x, rois, offset, grad))
    want = [
        reference.deform_roi_pool_forward(x64, r64, o64, params),
        *reference.deform_roi_pool_backward(g64, x64, r64, o64, params),
    ]
    for name, g, w in zip(("output", "grad_input", "grad_offset"), got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=_allowed(dtype, w, 64), err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_psroi_samples_on_its_limits_and_integers(backend, dtype) -> None:
    """sample_per_part 2 on 1-pixel bins puts samples at start + {0, 0.5}; RoIs with integer
    corners and scale 1 start at x1 - 0.5, and trans (std 0.25 * roi size 4 = 1 pixel per unit)
    moves them by +-0.5 or 1: samples fall on -1 (skipped), -0.5 and W - 0.5 (kept, clamped),
    W (skipped) and on integers (floor = ceil)."""
    rng = np.random.default_rng(SEED + 4)
    channels = 2 * 4  # output_dim 2, group_size 2
    x = rng.standard_normal((1, channels, H, W)).astype(dtype)
    corners = [(0, 0), (H - 4, W - 4), (-1, -1), (2, 1)]
    rois = np.array([[0, cx, cy, cx + 3, cy + 3] for cy, cx in corners], dtype)
    trans = rng.choice(np.array([-0.5, 0.0, 0.5, 1.0]), (len(corners), 2, 4, 4)).astype(dtype)
    grad = rng.standard_normal((len(corners), 2, 4, 4)).astype(dtype)
    params = DeformPSRoIPoolParams(
        spatial_scale=1.0,
        output_dim=2,
        group_size=2,
        pooled_size=4,
        part_size=4,
        sample_per_part=2,
        trans_std=0.25,
    )
    dev = [backend.asarray(a) for a in (x, rois, trans, grad)]
    with backend.context(), poison_outputs():
        module = get_backend(dev[0])
        got = [
            module.deform_psroi_pool_forward(*dev[:3], params),
            *module.deform_psroi_pool_backward(dev[3], *dev[:3], params),
        ]
    x64, r64, t64, g64 = (a.astype(np.float64) for a in (x, rois, trans, grad))
    want = [
        reference.deform_psroi_pool_forward(x64, r64, t64, params),
        *reference.deform_psroi_pool_backward(g64, x64, r64, t64, params),
    ]
    for name, g, w in zip(("output", "grad_input", "grad_trans"), got, want, strict=True):
        g = backend.to_numpy(g)
        np.testing.assert_allclose(g, w, rtol=0, atol=_allowed(dtype, w, 64), err_msg=name)
