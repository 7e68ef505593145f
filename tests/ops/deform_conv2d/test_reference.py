"""Oracles for the float64 NumPy reference of deform_conv2d (``cudcn.reference``).

The reference is the ground truth of every backend, so it is checked against independent facts:
plain convolutions (scipy), exact adjoint identities (the op is linear in input, weight and mask),
finite differences for the offsets, hand-computed boundary values and, when torch is installed,
torchvision. Random tests carry their seed in the test id.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import correlate

from cudcn import reference
from cudcn.ops.deform_conv2d import DeformConv2dParams

NAMES = ("input", "offset", "weight", "bias", "mask")


def out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - (dil * (k - 1) + 1)) // stride + 1


def make(
    seed: int,
    *,
    batch=2,
    c_in=6,
    c_out=4,
    hw=(6, 7),
    kernel=(3, 3),
    stride=(1, 1),
    padding=(1, 1),
    dilation=(1, 1),
    groups=1,
    og=1,
    mask=True,
    bias=True,
    scale=3.0,
    smooth=False,
):
    """Random float64 inputs and the parameters; ``smooth`` keeps offsets' fractions in [0.1, 0.9]."""
    rng = np.random.default_rng(seed)
    kh, kw = kernel
    ho = out_size(hw[0], kh, stride[0], padding[0], dilation[0])
    wo = out_size(hw[1], kw, stride[1], padding[1], dilation[1])
    off_shape = (batch, 2 * og * kh * kw, ho, wo)
    if smooth:
        offset = rng.integers(-3, 3, off_shape) + rng.uniform(0.1, 0.9, off_shape)
    else:
        offset = rng.uniform(-scale, scale, off_shape)
    a = {
        "input": rng.standard_normal((batch, c_in, *hw)),
        "offset": offset,
        "weight": rng.standard_normal((c_out, c_in // groups, kh, kw)),
        "bias": rng.standard_normal(c_out) if bias else None,
        "mask": rng.uniform(0.1, 1.0, (batch, og * kh * kw, ho, wo)) if mask else None,
    }
    return a, DeformConv2dParams(stride, padding, dilation, groups, og)


def forward(a: dict, p: DeformConv2dParams) -> np.ndarray:
    return reference.deform_conv2d_forward(*(a[n] for n in NAMES), p)


def backward(go: np.ndarray, a: dict, p: DeformConv2dParams):
    return reference.deform_conv2d_backward(go, *(a[n] for n in NAMES), p)


def scipy_conv(x, w, bias, stride, padding, dilation, groups):
    """Dense grouped convolution built from scipy's 2-d correlation (dilated kernel, then strides)."""
    c_out, cg, kh, kw = w.shape
    wd = np.zeros((c_out, cg, dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1))
    wd[:, :, :: dilation[0], :: dilation[1]] = w
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    per_g = c_out // groups
    out = []
    for b in range(x.shape[0]):
        rows = []
        for o in range(c_out):
            g = o // per_g
            acc = sum(correlate(xp[b, g * cg + c], wd[o, c], mode="valid") for c in range(cg))
            rows.append(acc[:: stride[0], :: stride[1]] + (0.0 if bias is None else bias[o]))
        out.append(rows)
    return np.array(out)


@pytest.mark.parametrize("seed", [11, 12])
def test_zero_offset_is_scipy_convolution(seed):
    a, p = make(seed, stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2, og=3, mask=False)
    a["offset"][:] = 0.0
    want = scipy_conv(a["input"], a["weight"], a["bias"], p.stride, p.padding, p.dilation, p.groups)
    np.testing.assert_allclose(forward(a, p), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("dy", "dx"), [(1, -2), (-3, 0), (2, 5)])
def test_integer_offset_is_shifted_convolution(dy, dx):
    a, p = make(21, mask=False, og=2)
    a["offset"][:, 0::2] = dy
    a["offset"][:, 1::2] = dx
    # Tap (i, j) of output (oy, ox) reads x[oy - 1 + i + dy, ox - 1 + j + dx], zero outside: an
    # unpadded convolution of a window of the generously zero-padded input.
    h, w = a["input"].shape[2:]
    big = np.pad(a["input"], ((0, 0), (0, 0), (8, 8), (8, 8)))
    window = big[:, :, 7 + dy : 9 + dy + h, 7 + dx : 9 + dx + w]  # rows -1 + dy .. h + dy
    want = scipy_conv(window, a["weight"], a["bias"], (1, 1), (0, 0), (1, 1), 1)
    np.testing.assert_allclose(forward(a, p), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [31])
def test_mask_of_ones_is_no_mask_and_mask_scales(seed):
    a, p = make(seed, og=2)
    ones = dict(a, mask=np.ones_like(a["mask"]))
    none = dict(a, mask=None)
    np.testing.assert_allclose(forward(ones, p), forward(none, p), rtol=0, atol=1e-13)
    half = dict(a, mask=np.full_like(a["mask"], 0.5), bias=None)
    np.testing.assert_allclose(
        forward(half, p), 0.5 * forward(dict(none, bias=None), p), rtol=1e-13, atol=1e-13
    )


@pytest.mark.parametrize("seed", [41, 42, 43])
def test_adjoint_identities(seed):
    """The op without bias is linear in input, in weight and in mask: <grad_out, out> equals
    <g_input, input> = <g_weight, weight> = <g_mask, mask>; g_bias sums grad_out."""
    a, p = make(
        seed,
        stride=(2, 1),
        padding=(1, 0),
        dilation=(2, 1),
        groups=2,
        og=3,
        kernel=(2, 3),
        hw=(8, 7),
    )
    go = np.random.default_rng(seed + 1000).standard_normal(forward(a, p).shape)
    g_in, _, g_w, g_b, g_m = backward(go, a, p)
    value = np.sum(go * forward(dict(a, bias=None), p))
    for g, x in ((g_in, a["input"]), (g_w, a["weight"]), (g_m, a["mask"])):
        np.testing.assert_allclose(np.sum(g * x), value, rtol=1e-11)
    np.testing.assert_allclose(g_b, go.sum(axis=(0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("seed", [51, 52])
@pytest.mark.parametrize("use_mask", [True, False])
def test_offset_gradient_matches_central_differences(seed, use_mask):
    a, p = make(seed, batch=1, c_in=4, c_out=3, hw=(5, 6), groups=2, og=2, mask=use_mask, smooth=True)
    go = np.random.default_rng(seed + 1).standard_normal(forward(a, p).shape)
    g_off = backward(go, a, p)[1]
    eps = 1e-6
    rng = np.random.default_rng(seed + 2)
    picks = [tuple(int(rng.integers(n)) for n in g_off.shape) for _ in range(60)]
    for idx in picks:
        plus, minus = a["offset"].copy(), a["offset"].copy()
        plus[idx] += eps
        minus[idx] -= eps
        diff = forward(dict(a, offset=plus), p) - forward(dict(a, offset=minus), p)
        np.testing.assert_allclose(g_off[idx], np.sum(go * diff) / (2 * eps), rtol=1e-6, atol=1e-7)


def test_integer_coordinates_use_forward_differences():
    """One pixel, one channel, 1x1 kernel: the value and dvalue/dy at hand-picked rows, x = 1.25."""
    img = np.array([[[[1.0, 2.0, 4.0], [8.0, 16.0, 32.0], [64.0, 128.0, 256.0]]]])
    weight = np.ones((1, 1, 1, 1))
    p = DeformConv2dParams((1, 1), (0, 0), (1, 1), groups=1, offset_groups=1)

    def at(y):
        offset = np.zeros((1, 2, 3, 3))
        offset[0, 0, 0, 0] = y  # output (0, 0) samples (y, 0 + 1.25)
        offset[0, 1, 0, 0] = 1.25
        out = reference.deform_conv2d_forward(img, offset, weight, None, None, p)[0, 0, 0, 0]
        go = np.zeros((1, 1, 3, 3))
        go[0, 0, 0, 0] = 1.0
        g = reference.deform_conv2d_backward(go, img, offset, weight, None, None, p)[1]
        return out, g[0, 0, 0, 0], g[0, 1, 0, 0]

    row = lambda r: img[0, 0, r, 1] * 0.75 + img[0, 0, r, 2] * 0.25 if 0 <= r < 3 else 0.0  # noqa: E731
    drow = lambda r: (img[0, 0, r, 2] - img[0, 0, r, 1]) if 0 <= r < 3 else 0.0  # noqa: E731
    for y in (-1, 0, 1, 2):  # integer rows: value v(y), gradient v(y + 1) - v(y)
        value, g_y, g_x = at(float(y))
        assert value == row(y)
        assert g_y == row(y + 1) - row(y)
        assert g_x == drow(y)
    for y in (-1.5, 3.0, 7.0, -1e9, 1e30, np.inf, -np.inf, np.nan):  # outside: nothing at all
        assert at(y) == (0.0, 0.0, 0.0)
    value, g_y, _ = at(1.5)
    assert value == 0.5 * row(1) + 0.5 * row(2)
    assert g_y == row(2) - row(1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e9, -1e30])
def test_non_finite_offsets_equal_far_away_samples(bad):
    a, p = make(61)
    far = dict(a, offset=a["offset"].copy())
    a["offset"][:, 2::4, 1:3] = bad  # dy of every other tap (dx left finite) ...
    a["offset"][1, 5, 2, 3] = bad  # ... and one dx
    far["offset"][:, 2::4, 1:3] = 1e3  # the same samples, far outside but finite
    far["offset"][1, 5, 2, 3] = 1e3
    go = np.random.default_rng(62).standard_normal(forward(a, p).shape)
    got, want = forward(a, p), forward(far, p)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)
    for g, h in zip(backward(go, a, p), backward(go, far, p), strict=True):
        assert np.isfinite(g).all()
        np.testing.assert_array_equal(g, h)


def test_batch_zero_and_dtypes():
    a, p = make(71, batch=0)
    a = {k: None if v is None else v.astype(np.float32) for k, v in a.items()}
    out = forward(a, p)
    assert out.shape == (0, 4, 6, 7) and out.dtype == np.float64
    grads = backward(np.zeros(out.shape, np.float32), a, p)
    for g, name in zip(grads, NAMES, strict=True):
        assert g.shape == a[name].shape and g.dtype == np.float64
    np.testing.assert_array_equal(grads[2], 0.0)


@pytest.mark.torch
@pytest.mark.parametrize("seed", [81, 82])
def test_matches_torchvision(seed):
    """Forward and every gradient equal torchvision's, integer offsets (kinks) included."""
    torch = pytest.importorskip("torch", reason="torch not installed")
    torchvision = pytest.importorskip("torchvision", reason="torchvision not installed")
    a, p = make(
        seed,
        stride=(2, 1),
        padding=(1, 0),
        dilation=(2, 1),
        groups=2,
        og=3,
        kernel=(2, 3),
        hw=(8, 7),
    )
    a["offset"][:, :, :2] = np.round(a["offset"][:, :, :2])
    go = np.random.default_rng(seed + 1).standard_normal(forward(a, p).shape)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in a.items()}
    out = torchvision.ops.deform_conv2d(
        t["input"],
        t["offset"],
        t["weight"],
        t["bias"],
        stride=p.stride,
        padding=p.padding,
        dilation=p.dilation,
        mask=t["mask"],
    )
    out.backward(torch.tensor(go))
    np.testing.assert_allclose(forward(a, p), out.detach().numpy(), rtol=1e-12, atol=1e-12)
    for name, g in zip(NAMES, backward(go, a, p), strict=True):
        np.testing.assert_allclose(g, t[name].grad.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)
