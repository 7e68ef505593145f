"""dcnv3 against oracles that do not share its code: the depthwise box filter (zero offsets, mask
1/P), deform_conv2d with groups = C and all-ones weights through the public layout converter, and
the reference's zero padding against sampling the unpadded image."""

from __future__ import annotations

import numpy as np
import pytest

from cudcn.functional import dcnv3, deform_conv2d
from cudcn.ops import (
    dcnv3_backward,
    dcnv3_forward,
    dcnv3_to_deform_conv2d,
    deform_conv2d_backward,
    deform_conv2d_to_dcnv3,
)
from tests.conftest import Backend

from .cases import CASES, Case, make_inputs

SEED = 20261220


def box_filter(x: np.ndarray, case: Case) -> np.ndarray:
    """The mean of the kernel's taps on the zero-padded input, per channel, with the regular
    (uncentred) conv grid: ``x_pad[ho·sh + j·dh, wo·sw + i·dw]`` (offset_scale 1 centres nothing)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = case.kernel, case.stride, case.padding, case.dilation
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    ho, wo = case.params().output_size
    taps = [(i, j) for i in range(kw) for j in range(kh)]
    if case.remove_center:
        taps.remove((kw // 2, kh // 2))
    out = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for i, j in taps:
        out += padded[:, j * dh : j * dh + (ho - 1) * sh + 1 : sh, i * dw : i * dw + (wo - 1) * sw + 1 : sw]
    return out / len(taps)


@pytest.mark.parametrize("case", [c for c in CASES if c.offset_scale == 1.0], ids=lambda c: c.id)
def test_zero_offsets_and_uniform_mask_are_a_box_filter(backend, case):
    x, offset, mask = make_inputs(case, np.float64, SEED)
    points = case.params().points
    with backend.context():
        out = dcnv3(
            backend.asarray(x),
            backend.asarray(0 * offset),
            backend.asarray(0 * mask + 1 / points),
            *case.args(),
        )
    np.testing.assert_allclose(backend.to_numpy(out), box_filter(x, case), rtol=1e-13, atol=1e-13)


def test_offset_scale_scales_the_grid_around_its_centre(backend):
    """Zero offsets and offset_scale 2 on a 3x3 kernel: the taps land on a 5x5 grid's corners,
    edges and centre, i.e. a 3x3 kernel of dilation 2 with padding 2 on the same output pixels."""
    case = Case("scaled", height=7, width=7, offset_scale=2.0, group=1, depth=1)
    x, offset, mask = make_inputs(case, np.float64, SEED + 1)
    dilated = Case("dilated", height=7, width=7, group=1, depth=1, dilation=(2, 2), padding=(2, 2))
    with backend.context():
        got = dcnv3_forward_host(backend, x, 0 * offset, mask, case)
        want = dcnv3_forward_host(backend, x, 0 * offset, mask, dilated)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def dcnv3_forward_host(backend, x, offset, mask, case: Case) -> np.ndarray:
    out = dcnv3(*(backend.asarray(a) for a in (x, offset, mask)), *case.args())
    return backend.to_numpy(out)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_equals_deform_conv2d_through_the_converter(case):
    """Every case on the CPU backend (another op's kernels: deform_conv2d's)."""
    check_deform_conv2d(Backend("cpu"), case)


def test_equals_deform_conv2d(backend):
    check_deform_conv2d(backend, CASES[3])


def check_deform_conv2d(backend, case: Case) -> None:
    """dcnv3 with C = G·D is deform_conv2d with groups = C, all-ones weights and the rearranged
    offsets and mask: outputs and all three gradients (the offset's through the chain rule
    ``d/d offset = s · d/d (dx, dy)``)."""
    x, offset, mask = make_inputs(case, np.float64, SEED + 2)
    k, stride, padding, dilation, group, s, rc = case.args()
    off2, mask2 = dcnv3_to_deform_conv2d(offset, mask, k, dilation, group, s, rc)
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    weight = np.ones((x.shape[3], 1, *case.kernel))
    grad = np.random.default_rng(SEED).standard_normal((x.shape[0], *case.params().output_size, x.shape[3]))
    grad_nchw = np.ascontiguousarray(grad.transpose(0, 3, 1, 2))
    with backend.context():
        dev = [backend.asarray(a) for a in (x, offset, mask, grad)]
        out3 = backend.to_numpy(dcnv3(*dev[:3], *case.args()))
        grads3 = [backend.to_numpy(g) for g in dcnv3_backward(dev[3], *dev[:3], *case.args())]
        dev2 = [backend.asarray(a) for a in (x_nchw, off2, weight, mask2, grad_nchw)]
        out2 = backend.to_numpy(deform_conv2d(*dev2[:3], None, stride, padding, dilation, dev2[3]))
        g2 = deform_conv2d_backward(dev2[4], *dev2[:3], None, stride, padding, dilation, dev2[3])
        g2 = [backend.to_numpy(g) for g in (g2[0], g2[1], g2[4])]
    tol = {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(out3, out2.transpose(0, 2, 3, 1), **tol)
    np.testing.assert_allclose(grads3[0], g2[0].transpose(0, 2, 3, 1), **tol)
    # The offset gradient: rearrange deform_conv2d's (dy, dx) gradient with s = 1 (no shift), times s.
    g_offset, g_mask = deform_conv2d_to_dcnv3(g2[1], g2[2], k, dilation, 1.0, rc)
    np.testing.assert_allclose(grads3[1], s * g_offset, **tol)
    np.testing.assert_allclose(grads3[2], g_mask, **tol)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_converter_round_trip(case):
    _, offset, mask = make_inputs(case, np.float64, SEED + 3)
    k, _, _, dilation, group, s, rc = case.args()
    off2, mask2 = dcnv3_to_deform_conv2d(offset, mask, k, dilation, group, s, rc)
    assert off2.shape == (case.batch, 2 * group * k[0] * k[1], *case.params().output_size)
    back = deform_conv2d_to_dcnv3(off2, mask2, k, dilation, s, rc)
    np.testing.assert_allclose(back[0], offset, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(back[1], mask)
    if rc:  # the removed centre tap: offset 0, mask 0
        centre = (k[0] // 2) * k[1] + k[1] // 2
        assert not off2[:, 2 * centre : 2 * centre + 2].any() and not mask2[:, centre].any()


def test_padding_is_zeros_outside(backend):
    """InternImage pads the input with zeros; the op samples the unpadded input with zeros
    outside. Same values and gradients: the op with padding against the op on the zero-padded
    input without padding (the same offsets), whose input gradient, cropped, must agree."""
    case = Case("padded", padding=(2, 1), offset_scale=1.5)
    inner = Case("inner", height=9, width=8, padding=(0, 0), offset_scale=1.5)
    x, offset, mask = make_inputs(case, np.float64, SEED + 4, reach=4.0)
    x_padded = np.pad(x, ((0, 0), (2, 2), (1, 1), (0, 0)))
    grad = np.random.default_rng(SEED).standard_normal((2, 7, 6, 6))
    with backend.context():
        results = []
        for c, xx in ((case, x), (inner, x_padded)):
            dev = [backend.asarray(a) for a in (xx, offset, mask, grad)]
            out = dcnv3_forward(*dev[:3], *c.args())
            results.append([backend.to_numpy(a) for a in (out, *dcnv3_backward(dev[3], *dev[:3], *c.args()))])
    (out, g_x, g_off, g_mask), (out_p, g_xp, g_off_p, g_mask_p) = results
    tol = {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(out, out_p, **tol)
    np.testing.assert_allclose(g_x, g_xp[:, 2:-2, 1:-1], **tol)
    np.testing.assert_allclose(g_off, g_off_p, **tol)
    np.testing.assert_allclose(g_mask, g_mask_p, **tol)
