"""deform_conv2d through the public ops on every backend, against the float64 reference.

Seeds are part of each test id, so a failure is replayed by running that id.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import correlate

import cudcn
from cudcn import reference
from cudcn.dtypes import FLOAT_DTYPES
from cudcn.ops import deform_conv2d_backward, deform_conv2d_forward
from cudcn.testing import assert_allclose_to_reference, gradcheck, poison_outputs

from .cases import CASES, Case, make_inputs

NAMES = ("input", "offset", "weight", "bias", "mask")
SEED = 20261124


def params(case: Case) -> dict:
    return {"stride": case.stride, "padding": case.padding, "dilation": case.dilation}


def run_both(backend, case: Case, inputs: dict, grad_out: np.ndarray):
    """Forward and backward on ``backend`` with outputs poisoned; results back on the host."""
    dev = {k: None if v is None else backend.asarray(v) for k, v in inputs.items()}
    args = [dev[n] for n in ("input", "offset", "weight", "bias")]
    with backend.context(), poison_outputs():
        out = deform_conv2d_forward(*args, **params(case), mask=dev["mask"])
        grads = deform_conv2d_backward(backend.asarray(grad_out), *args, **params(case), mask=dev["mask"])
    return backend.to_numpy(out), [backend.to_numpy(g) for g in grads]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(backend, case, dtype):
    seed = SEED + CASES.index(case)
    inputs = make_inputs(case, dtype, seed)
    x64 = {k: None if v is None else v.astype(np.float64) for k, v in inputs.items()}
    ref_out = reference.deform_conv2d_forward(*(x64[n] for n in NAMES), case.params())
    grad_out = np.random.default_rng(seed + 1).standard_normal(ref_out.shape).astype(dtype)
    ref_grads = reference.deform_conv2d_backward(
        grad_out.astype(np.float64), *(x64[n] for n in NAMES), case.params()
    )
    out, grads = run_both(backend, case, inputs, grad_out)
    assert out.dtype == dtype
    # Sum of |terms| per output: the reference on absolute values (bilinear weights are >= 0).
    abs_in = {k: None if v is None or k == "offset" else np.abs(v) for k, v in x64.items()}
    abs_in["offset"] = x64["offset"]
    scale = reference.deform_conv2d_forward(*(abs_in[n] for n in NAMES), case.params())
    assert_allclose_to_reference(out, ref_out, dtype, scale=scale, name=f"output (seed {seed})")
    for name, got, want in zip(NAMES, grads, ref_grads, strict=True):
        if want is None:
            assert got is None, name
            continue
        assert got.shape == want.shape and got.dtype == dtype, name
        assert_allclose_to_reference(got, want, dtype, name=f"grad {name} (seed {seed})")


def test_batch_zero(backend):
    case = Case("batch_0", batch=0)
    inputs = make_inputs(case, np.float32, SEED)
    out, grads = run_both(backend, case, inputs, np.zeros((0, 6, 6, 7), np.float32))
    assert out.shape == (0, 6, 6, 7)
    assert grads[0].shape == inputs["input"].shape
    np.testing.assert_array_equal(grads[2], 0)
    np.testing.assert_array_equal(grads[3], 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e9, -1e30])
def test_non_finite_offsets_contribute_zero(backend, bad):
    """A sample at a non-finite or huge offset reads nothing and contributes 0."""
    case = Case("bad_offsets", bias=False)
    inputs = make_inputs(case, np.float64, SEED)
    inputs["offset"][:, :, 1:3, 2:4] = bad
    grad_out = np.ones((2, 6, 6, 7))
    out, grads = run_both(backend, case, inputs, grad_out)
    assert np.isfinite(out).all()
    for g in grads:
        assert g is None or np.isfinite(g).all()
    # Every tap of output (1, 2) is displaced away: the output is exactly 0 there.
    np.testing.assert_array_equal(out[:, :, 1, 2], 0.0)


def test_non_contiguous_inputs(backend):
    case = Case("strided")
    inputs = make_inputs(case, np.float64, SEED)
    dev = {k: backend.asarray(v) for k, v in inputs.items()}
    # The same values seen through transposed and sliced views.
    x_t = backend.asarray(np.ascontiguousarray(inputs["input"].transpose(0, 1, 3, 2)))
    x_view = x_t.transpose(0, 1, 3, 2)
    wide = backend.asarray(np.repeat(inputs["offset"], 2, axis=3))
    offset_view = wide[:, :, :, ::2]
    assert not x_view.flags.c_contiguous and not offset_view.flags.c_contiguous
    with backend.context():
        want = deform_conv2d_forward(
            dev["input"], dev["offset"], dev["weight"], dev["bias"], padding=1, mask=dev["mask"]
        )
        got = deform_conv2d_forward(
            x_view, offset_view, dev["weight"], dev["bias"], padding=1, mask=dev["mask"]
        )
    np.testing.assert_array_equal(backend.to_numpy(got), backend.to_numpy(want))


def plain_conv(x, w, bias, padding):
    """An independent dense convolution: scipy's correlate per (batch, out, in) channel."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((x.shape[0], w.shape[0], xp.shape[2] - w.shape[2] + 1, xp.shape[3] - w.shape[3] + 1))
    for b in range(x.shape[0]):
        for o in range(w.shape[0]):
            for c in range(x.shape[1]):
                out[b, o] += correlate(xp[b, c], w[o, c], mode="valid")
            out[b, o] += bias[o]
    return out


def test_zero_offset_is_plain_convolution(backend):
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    offset = np.zeros((2, 18, 7, 6))
    with backend.context():
        got = deform_conv2d_forward(*(backend.asarray(a) for a in (x, offset, w, b)), padding=1)
    np.testing.assert_allclose(backend.to_numpy(got), plain_conv(x, w, b, 1), rtol=1e-12, atol=1e-12)


def test_integer_offset_is_shifted_convolution(backend):
    """A constant offset (dy, dx) = (1, -2) is a plain convolution over the shifted input."""
    rng = np.random.default_rng(SEED + 7)
    x = rng.standard_normal((1, 2, 8, 9))
    w = rng.standard_normal((3, 2, 3, 3))
    b = np.zeros(3)
    offset = np.zeros((1, 18, 8, 9))
    offset[:, 0::2] = 1.0
    offset[:, 1::2] = -2.0
    # Output (oy, ox), tap (i, j) reads x[oy - 1 + i + 1, ox - 1 + j - 2], zero outside: with x
    # zero-padded by 3 that window starts at row oy + 3, column ox.
    big = np.pad(x, ((0, 0), (0, 0), (3, 3), (3, 3)))
    window = big[:, :, 3 : 3 + 8 + 2, 0 : 9 + 2]
    with backend.context():
        got = deform_conv2d_forward(*(backend.asarray(a) for a in (x, offset, w, b)), padding=1)
    np.testing.assert_allclose(backend.to_numpy(got), plain_conv(window, w, b, 0), atol=1e-12)


def test_mask_of_ones_is_no_mask(backend):
    case = Case("ones_mask")
    inputs = make_inputs(case, np.float64, SEED + 3)
    dev = {k: backend.asarray(v) for k, v in inputs.items()}
    ones = backend.asarray(np.ones_like(inputs["mask"]))
    args = (dev["input"], dev["offset"], dev["weight"], dev["bias"])
    with backend.context():
        with_mask = deform_conv2d_forward(*args, padding=1, mask=ones)
        without = deform_conv2d_forward(*args, padding=1)
    np.testing.assert_allclose(backend.to_numpy(with_mask), backend.to_numpy(without), atol=1e-13)


@pytest.mark.parametrize(
    "case",
    [
        Case("gc_basic", batch=1, in_channels=2, out_channels=2, height=4, width=4),
        Case(
            "gc_groups",
            batch=1,
            in_channels=4,
            out_channels=2,
            height=4,
            width=3,
            kernel=(2, 2),
            padding=(0, 1),
            stride=(2, 1),
            groups=2,
            offset_groups=2,
        ),
    ],
    ids=lambda c: c.id,
)
def test_gradcheck_every_input(backend, case):
    inputs = make_inputs(case, np.float64, SEED + 11, avoid_kinks=True)
    dev = [backend.asarray(inputs[n]) for n in NAMES]

    def fn(x, offset, weight, bias, mask):
        return cudcn.functional.deform_conv2d(x, offset, weight, bias, **params(case), mask=mask)

    with backend.context():
        assert gradcheck(fn, dev)


def test_tensor_path_records_and_matches_array_level():
    case = Case("tape", batch=1, height=5, width=5)
    inputs = make_inputs(case, np.float64, SEED + 5)
    tensors = {k: cudcn.Tensor(v, requires_grad=True) for k, v in inputs.items()}
    out = cudcn.functional.deform_conv2d(
        tensors["input"],
        tensors["offset"],
        tensors["weight"],
        tensors["bias"],
        padding=1,
        mask=tensors["mask"],
    )
    assert isinstance(out, cudcn.Tensor)
    grad = np.random.default_rng(1).standard_normal(out.shape)
    out.backward(grad)
    want = deform_conv2d_backward(grad, *(inputs[n] for n in NAMES[:4]), padding=1, mask=inputs["mask"])
    for name, w in zip(NAMES, want, strict=True):
        np.testing.assert_array_equal(tensors[name].grad, w)


def test_plain_arrays_give_plain_array():
    case = Case("plain", batch=1)
    inputs = make_inputs(case, np.float32, SEED)
    out = cudcn.functional.deform_conv2d(*(inputs[n] for n in NAMES[:4]), padding=1, mask=inputs["mask"])
    assert type(out) is np.ndarray and out.dtype == np.float32
