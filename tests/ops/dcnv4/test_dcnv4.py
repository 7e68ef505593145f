"""dcnv4 on every backend against the float64 reference (which unpacks DCNv4's tensor element by
element), the packing against dcnv3 bit for bit, gradcheck and validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import cudcn
from cudcn import reference
from cudcn.dtypes import FLOAT_DTYPES
from cudcn.functional import dcnv4
from cudcn.ops import (
    dcnv3_backward,
    dcnv3_forward,
    dcnv3_to_dcnv4,
    dcnv4_backward,
    dcnv4_forward,
    dcnv4_to_dcnv3,
)
from cudcn.ops.dcnv4 import packed_width
from cudcn.testing import assert_allclose_to_reference, gradcheck, poison_outputs
from tests.conftest import Backend

from ..dcnv3.cases import CASES, Case, make_inputs, scales

SEED = 20261221


def packed(case: Case, dtype, seed: int, padded: bool = True):
    """Random input and offset_mask (padding channels filled with a sentinel that must be ignored)
    plus the dcnv3 offset and mask they hold."""
    x, offset, mask = make_inputs(case, dtype, seed)
    rc = case.remove_center
    om = dcnv3_to_dcnv4(offset, mask, case.kernel, case.group, rc, padded=padded)
    om[..., case.group * case.params().points * 3 :] = 7.0
    return x, om, offset, mask


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=lambda c: c.id)
def test_matches_reference(backend, case, dtype):
    seed = SEED + CASES.index(case)
    x, om, offset, mask = packed(case, dtype, seed)
    p = case.params()
    ref_out = reference.dcnv4_forward(x, om, p)
    grad_out = np.random.default_rng(seed + 1).standard_normal(ref_out.shape).astype(dtype)
    ref_g_input, ref_g_om = reference.dcnv4_backward(grad_out, x, om, p)
    dev = [backend.asarray(a) for a in (x, om)]
    with backend.context(), poison_outputs():
        out = backend.to_numpy(dcnv4_forward(*dev, *case.args()))
        g_input, g_om = (
            backend.to_numpy(g) for g in dcnv4_backward(backend.asarray(grad_out), *dev, *case.args())
        )
    s_out, s_input, s_offset, s_mask = scales(x, offset, mask, grad_out, p)
    assert out.dtype == g_input.dtype == g_om.dtype == dtype
    assert_allclose_to_reference(out, ref_out, dtype, scale=s_out, name=f"output (seed {seed})")
    assert_allclose_to_reference(g_input, ref_g_input, dtype, scale=s_input, name="grad input")
    s_om = dcnv3_to_dcnv4(s_offset, s_mask, case.kernel, case.group, case.remove_center)
    assert_allclose_to_reference(g_om, ref_g_om, dtype, scale=s_om, name="grad offset_mask")
    np.testing.assert_array_equal(g_om[..., case.group * p.points * 3 :], 0)


def check_packing(backend, case: Case, padded: bool) -> None:
    """dcnv4 on the packed tensor is dcnv3 on its parts, bit for bit, gradients included (under
    cudcn.deterministic(): the GPU's atomic scatters would differ in the last bits run to run)."""
    x, om, offset, mask = packed(case, np.float32, SEED + 20, padded)
    assert om.shape[3] == (packed_width(case.group, case.params().points) if padded else om.shape[3])
    grad = np.random.default_rng(SEED).standard_normal((case.batch, *case.params().output_size, x.shape[3]))
    grad = grad.astype(np.float32)
    with backend.context(), cudcn.deterministic():
        dev = [backend.asarray(a) for a in (x, om, offset, mask, grad)]
        out4 = backend.to_numpy(dcnv4_forward(dev[0], dev[1], *case.args()))
        out3 = backend.to_numpy(dcnv3_forward(dev[0], dev[2], dev[3], *case.args()))
        g4 = dcnv4_backward(dev[4], dev[0], dev[1], *case.args())
        g3 = dcnv3_backward(dev[4], dev[0], dev[2], dev[3], *case.args())
    np.testing.assert_array_equal(out4, out3)
    np.testing.assert_array_equal(backend.to_numpy(g4[0]), backend.to_numpy(g3[0]))
    g_offset, g_mask = dcnv4_to_dcnv3(backend.to_numpy(g4[1]), case.kernel, case.group, case.remove_center)
    np.testing.assert_array_equal(g_offset, backend.to_numpy(g3[1]))
    np.testing.assert_array_equal(g_mask, backend.to_numpy(g3[2]))


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_packing_is_dcnv3_every_case(case, padded):
    """The packing is array layout before the core: every case on the CPU backend."""
    check_packing(Backend("cpu"), case, padded)


def test_packing_is_dcnv3(backend):
    check_packing(backend, CASES[3], padded=True)


def test_packed_width_is_dcnv4s():
    assert packed_width(4, 9) == 112  # G·P·3 = 108 rounded up to a multiple of 8
    assert packed_width(1, 8) == 24 and packed_width(2, 24) == 144


def test_gradcheck(backend):
    """A tiny case (the emulated backend launches the kernels twice per element), the padding
    channels included (their gradient is 0 both ways)."""
    case = Case("gradcheck", batch=1, height=2, width=3, depth=1, kernel=(1, 3), padding=(0, 1))
    case = dataclasses.replace(case, remove_center=True, offset_scale=0.5)
    x, om, _, _ = packed(case, np.float64, SEED + 30)
    points = case.params().points
    body = om[..., : case.group * points * 3].reshape(*om.shape[:3], case.group, -1)
    frac = np.random.default_rng(SEED).uniform(0.1, 0.9, body[..., : 2 * points].shape)
    body[..., : 2 * points] = (np.floor(body[..., : 2 * points]) + frac) / case.offset_scale
    om[..., : case.group * points * 3] = body.reshape(*om.shape[:3], -1)
    assert om.shape[3] == 16  # G·P·3 = 12, padded
    with backend.context():
        dev = [backend.asarray(a) for a in (x, om)]
        assert gradcheck(lambda x, om: dcnv4(x, om, *case.args()), dev, seed=SEED)


def test_validation():
    case = Case("bad")
    x, om, _, _ = packed(case, np.float32, SEED)
    with pytest.raises(ValueError, match=r"L = G·P·3 = 54 or DCNv4's padded ceil\(G·P·3 / 8\)·8 = 56"):
        dcnv4_forward(x, om[..., :55], *case.args())
    with pytest.raises(ValueError, match=r"offset_mask must have shape"):
        dcnv4_forward(x, om[:, :4], *case.args())
    with pytest.raises(ValueError, match=r"offset_mask must be 4-D"):
        dcnv4_forward(x, om[0], *case.args())
    with pytest.raises(TypeError, match=r"offset_mask has dtype float64 but input"):
        dcnv4_forward(x, om.astype(np.float64), *case.args())
    with pytest.raises(ValueError, match=r"grad_out must have shape"):
        dcnv4_backward(np.zeros((2, 5, 6, 5), np.float32), x, om, *case.args())
