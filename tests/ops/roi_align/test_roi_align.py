"""roi_align (torchvision's RoIAlign) on every backend: an independent NumPy oracle, torchvision
itself when installed, the array-level pair against the tape, and its own argument checks.

Seeds are fixed per test, so a failure is replayed by running that test.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

import cudcn
from cudcn.functional import roi_align
from cudcn.ops import roi_align_backward, roi_align_forward
from cudcn.testing import poison_outputs

from ..deform_roi_pool.test_forward_backward import SEED, good_args, make_rois


def clip_sample(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """An independent RoIAlign sampler: scipy's linear interpolation at the point clamped into
    [0, H - 1] x [0, W - 1] (the clamp and the snap), 0 outside [-1, H] x [-1, W]. img: (C, H, W)."""
    h, w = img.shape[1:]
    inside = (y >= -1) & (y <= h) & (x >= -1) & (x <= w)
    coords = [np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)]
    values = [map_coordinates(plane, coords, order=1, mode="nearest") for plane in img]
    return np.where(inside, np.array(values), 0.0)


def roi_align_oracle(x, rois, pooled, scale, sampling_ratio, aligned):
    """torchvision's RoIAlign written with NumPy grids and ``clip_sample``."""
    ph, pw = pooled
    out = np.zeros((len(rois), x.shape[1], ph, pw))
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        shift = 0.5 if aligned else 0.0
        (sx, sy), (ex, ey) = (
            np.array([x1, y1]) * scale - shift,
            np.array([x2, y2]) * scale - shift,
        )
        rw, rh = (ex - sx, ey - sy) if aligned else (max(ex - sx, 1.0), max(ey - sy, 1.0))
        gh = sampling_ratio if sampling_ratio > 0 else max(int(np.ceil(rh / ph)), 0)
        gw = sampling_ratio if sampling_ratio > 0 else max(int(np.ceil(rw / pw)), 0)
        bh, bw = rh / ph, rw / pw  # same operation order as the kernels: exact on boundaries
        ys = sy + np.arange(ph)[:, None] * bh + (np.arange(gh)[None, :] + 0.5) * bh / gh
        xs = sx + np.arange(pw)[:, None] * bw + (np.arange(gw)[None, :] + 0.5) * bw / gw
        yy, xx = np.meshgrid(ys.ravel(), xs.ravel(), indexing="ij")  # (ph * gh, pw * gw)
        samples = clip_sample(x[int(b)], yy, xx).reshape(x.shape[1], ph, gh, pw, gw)
        out[r] = samples.sum(axis=(2, 4)) / max(gh * gw, 1)
    return out


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
def test_roi_align_matches_numpy_oracle(backend, aligned, sampling_ratio):
    rng = np.random.default_rng(SEED + 40)
    x = rng.standard_normal((2, 3, 7, 9))
    rois = make_rois(rng, 7, 2, 7 / 0.5, 9 / 0.5)
    with backend.context(), poison_outputs():
        got = roi_align(backend.asarray(x), backend.asarray(rois), (3, 4), 0.5, sampling_ratio, aligned)
    want = roi_align_oracle(x, rois, (3, 4), 0.5, sampling_ratio, aligned)
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-12, atol=1e-12)


def test_torchvision_roi_align(backend):
    torch = pytest.importorskip("torch", reason="torch not installed")
    tv_ops = pytest.importorskip("torchvision.ops", reason="torchvision not installed")
    rng = np.random.default_rng(SEED + 43)
    x = rng.standard_normal((2, 3, 8, 7))
    rois = make_rois(rng, 8, 2, 8 / 0.5, 7 / 0.5)
    grad = rng.standard_normal((8, 3, 3, 2))
    for aligned in (False, True):
        for ratio in (-1, 2):
            xt = torch.tensor(x, requires_grad=True)
            want = tv_ops.roi_align(xt, torch.tensor(rois), (3, 2), 0.5, ratio, aligned)
            want.backward(torch.tensor(grad))
            xs = cudcn.Tensor(backend.asarray(x), requires_grad=True)
            with backend.context():
                got = roi_align(xs, backend.asarray(rois), (3, 2), 0.5, ratio, aligned)
                got.backward(backend.asarray(grad))
            np.testing.assert_allclose(
                backend.to_numpy(got.data), want.detach().numpy(), rtol=1e-10, atol=1e-12
            )
            np.testing.assert_allclose(backend.to_numpy(xs.grad), xt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_roi_align_bad_sampling_ratio_type():
    args = good_args()
    with pytest.raises(TypeError, match=r"sampling_ratio must be an int, got 2.0"):
        roi_align(args["input"], args["rois"], 2, sampling_ratio=2.0)


def test_roi_align_array_level_matches_the_tape():
    rng = np.random.default_rng(SEED + 60)
    x = rng.standard_normal((2, 3, 9, 8))
    rois = make_rois(rng, 5, 2, 9.0, 8.0)
    out = roi_align_forward(x, rois, (2, 3), 0.5, 2, aligned=False)
    xt = cudcn.Tensor(x, requires_grad=True)
    tape_out = roi_align(xt, rois, (2, 3), 0.5, 2, aligned=False)
    np.testing.assert_array_equal(out, tape_out.data)
    grad = rng.standard_normal(out.shape)
    tape_out.backward(grad)
    (g_input,) = roi_align_backward(grad, x, rois, (2, 3), 0.5, 2, aligned=False)
    np.testing.assert_array_equal(g_input, xt.grad)
