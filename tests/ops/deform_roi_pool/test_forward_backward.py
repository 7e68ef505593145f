"""deform_roi_pool on every backend, against the float64 reference and oracles (roi_align, its
offset-free case, has its own tests in tests/ops/roi_align/).

Seeds are part of each test id or printed, so a failure is replayed by running that id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import cudcn
from cudcn import reference
from cudcn.backends import get_backend
from cudcn.dtypes import FLOAT_DTYPES
from cudcn.functional import deform_roi_pool, roi_align
from cudcn.ops import (
    deform_roi_pool_backward,
    deform_roi_pool_forward,
)
from cudcn.ops.deform_roi_pool import DeformRoIPoolParams
from cudcn.testing import (
    assert_allclose_to_reference,
    assert_equal_up_to_summation_order,
    gradcheck,
    poison_outputs,
)

SEED = 20261124


def make_rois(rng: np.random.Generator, n: int, batch: int, height: float, width: float):
    """(n, 5) RoIs in image units over a height x width image: random boxes that cross the border
    or lie outside, plus a degenerate (x2 < x1), a tiny and a huge one when n >= 4."""
    x1 = rng.uniform(-0.3 * width, 1.1 * width, n)
    y1 = rng.uniform(-0.3 * height, 1.1 * height, n)
    w = rng.uniform(0.2, 0.8, n) * width
    h = rng.uniform(0.2, 0.8, n) * height
    rois = np.stack([rng.integers(0, batch, n), x1, y1, x1 + w, y1 + h], axis=1)
    if n >= 4:
        rois[1, 3] = rois[1, 1] - 0.7 * width / 4  # degenerate: x2 < x1
        rois[2, 3:] = rois[2, 1:3] + 0.03  # tiny
        rois[3, 1:] = [-width, -height, 2 * width, 2 * height]  # covers far more than the image
    return rois


@dataclass(frozen=True)
class Case:
    """One deform_roi_pool configuration (feature map B x C x H x W, rois in image units)."""

    id: str
    batch: int = 2
    channels: int = 3
    height: int = 6
    width: int = 7
    n_rois: int = 6
    pooled: tuple[int, int] = (3, 2)
    spatial_scale: float = 0.5
    sampling_ratio: int = 2
    gamma: float = 0.1
    aligned: bool = True
    offset: bool = True

    def params(self) -> DeformRoIPoolParams:
        """The parameters object the reference and the backends take."""
        p = (self.spatial_scale, self.sampling_ratio, self.gamma, self.aligned)
        return DeformRoIPoolParams(*self.pooled, *p)


CASES = [
    Case("basic"),
    Case("adaptive_grid", sampling_ratio=0, pooled=(2, 3), spatial_scale=1.0),
    Case("one_sample", sampling_ratio=1, gamma=0.3),
    Case("many_samples", sampling_ratio=3, pooled=(1, 1), n_rois=5),
    Case("not_aligned", aligned=False, offset=False, sampling_ratio=0),
    Case("not_aligned_offset", aligned=False, spatial_scale=0.25, height=5, width=5),
    Case("no_offset", offset=False, pooled=(4, 4), height=3, width=9),
    Case("one_pixel_map", height=1, width=1, n_rois=4, sampling_ratio=0),
]


def make_inputs(case: Case, dtype, seed: int):
    """Random input, rois and (maybe) offset of ``case``, as ``dtype``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.batch, case.channels, case.height, case.width))
    rois = make_rois(
        rng, case.n_rois, case.batch, case.height / case.spatial_scale, case.width / case.spatial_scale
    )
    offset = rng.uniform(-1.0, 1.0, (case.n_rois, 2, *case.pooled)) if case.offset else None
    return tuple(None if a is None else a.astype(dtype) for a in (x, rois, offset))


def coordinate_scale(x: np.ndarray, rois: np.ndarray, case: Case) -> float:
    """Bound on the error a float32 backend makes from rounding sample coordinates: the largest
    coordinate (in pixels, offsets included) times the largest bilinear slope 2 max|x|."""
    reach = float(np.abs(rois[:, 1:]).max()) * case.spatial_scale * (1 + 2 * case.gamma) + 1
    return 2 * float(np.abs(x).max()) * reach


def run_both(backend, case: Case, x, rois, offset, grad_out):
    """The backend's forward and backward (every parameter combination, aligned=False with an offset
    included) with outputs poisoned; results on the host."""
    dev = [None if a is None else backend.asarray(a) for a in (x, rois, offset)]
    with backend.context(), poison_outputs():
        module = get_backend(dev[0])
        out = module.deform_roi_pool_forward(*dev, case.params())
        grads = module.deform_roi_pool_backward(backend.asarray(grad_out), *dev, case.params())
    return backend.to_numpy(out), [backend.to_numpy(g) for g in grads]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(backend, case, dtype):
    seed = SEED + CASES.index(case)
    x, rois, offset = make_inputs(case, dtype, seed)
    ref_out = reference.deform_roi_pool_forward(x, rois, offset, case.params())
    grad_out = np.random.default_rng(seed + 1).standard_normal(ref_out.shape).astype(dtype)
    ref_grads = reference.deform_roi_pool_backward(grad_out, x, rois, offset, case.params())
    out, grads = run_both(backend, case, x, rois, offset, grad_out)
    assert out.dtype == dtype and out.shape == ref_out.shape
    coords = coordinate_scale(x, rois, case)
    # Output: the per-bin mean of |terms| (the reference on |x|) plus the coordinate rounding bound.
    scale = reference.deform_roi_pool_forward(np.abs(x), rois, offset, case.params()) + coords
    assert_allclose_to_reference(out, ref_out, dtype, scale=scale, name=f"output (seed {seed})")
    g_scale = float(np.abs(grad_out).max()) * (1 + coords)
    for name, got, want in zip(("input", "offset"), grads, ref_grads, strict=True):
        if want is None:
            assert got is None, name
            continue
        assert got.shape == want.shape and got.dtype == dtype, name
        s = g_scale * (1 + case.gamma * coords) if name == "offset" else g_scale
        assert_allclose_to_reference(got, want, dtype, scale=s, name=f"grad {name} (seed {seed})")


def test_zero_offset_is_roi_align(backend):
    rng = np.random.default_rng(SEED + 41)
    x = rng.standard_normal((2, 4, 8, 6))
    rois = make_rois(rng, 6, 2, 8 / 0.25, 6 / 0.25)
    zeros = np.zeros((6, 2, 2, 3))
    grad = rng.standard_normal((6, 4, 2, 3))
    dev = [backend.asarray(a) for a in (x, rois, zeros, grad)]
    with backend.context():
        out = deform_roi_pool_forward(*dev[:3], (2, 3), 0.25, 0, gamma=0.7)
        want = roi_align(*dev[:2], (2, 3), 0.25, 0, aligned=True)
        g_input, g_offset = deform_roi_pool_backward(dev[3], *dev[:3], (2, 3), 0.25, 0, gamma=0.7)
        g_plain, none = deform_roi_pool_backward(dev[3], *dev[:2], None, (2, 3), 0.25, 0)
        (abs_sum, _) = deform_roi_pool_backward(abs(dev[3]), *dev[:2], None, (2, 3), 0.25, 0)
    assert none is None and backend.to_numpy(g_offset).shape == (6, 2, 2, 3)
    np.testing.assert_array_equal(backend.to_numpy(out), backend.to_numpy(want))
    # atomicAdd scatters (cuda, emulated) add in a schedule-dependent order; the CPU's do not.
    grid = int(np.ceil(np.max(rois[:, 3:] - rois[:, 1:3]) * 0.25 / 2))  # samples per bin and axis
    assert_equal_up_to_summation_order(
        g_input,
        g_plain,
        exact=backend.name == "cpu",
        abs_sum=backend.to_numpy(abs_sum),
        terms=6 * 2 * 3 * 4 * (grid + 1) ** 2,
        name="grad_input",
    )


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_constant_offset_is_shifted_roi(backend, sampling_ratio):
    """A constant offset (ox, oy) moves every bin by gamma * roi size * (ox, oy): the same as moving
    the RoI itself by that amount (in image units, / spatial_scale)."""
    rng = np.random.default_rng(SEED + 42)
    x = rng.standard_normal((1, 3, 9, 8))
    rois = make_rois(rng, 5, 1, 9 / 0.5, 8 / 0.5)
    gamma, shift = 0.2, np.array([0.35, -0.6])  # (x, y): channel 0 is x
    offset = np.broadcast_to(shift[None, :, None, None], (5, 2, 3, 3)).copy()
    moved = rois.copy()
    moved[:, [1, 3]] += gamma * (rois[:, 3] - rois[:, 1])[:, None] * shift[0]
    moved[:, [2, 4]] += gamma * (rois[:, 4] - rois[:, 2])[:, None] * shift[1]
    with backend.context():
        got = deform_roi_pool(*(backend.asarray(a) for a in (x, rois, offset)), 3, 0.5, sampling_ratio, gamma)
        want = deform_roi_pool(
            backend.asarray(x), backend.asarray(moved), None, 3, 0.5, sampling_ratio, gamma
        )
    np.testing.assert_allclose(backend.to_numpy(got), backend.to_numpy(want), atol=1e-12)


def test_gradcheck_input_and_offset(backend):
    """Random offsets put the samples at random, non-integer points (away from the kinks)."""
    case = Case("gradcheck", batch=2, channels=2, height=5, width=6, n_rois=3, pooled=(2, 2))
    x, rois, offset = make_inputs(case, np.float64, SEED + 44)
    dev_rois = backend.asarray(rois)

    def fn(x, offset):
        return deform_roi_pool(x, dev_rois, offset, (2, 2), 0.5, 2, gamma=0.1)

    with backend.context():
        assert gradcheck(fn, [backend.asarray(x), backend.asarray(offset)], seed=SEED)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30])
def test_non_finite_offsets_read_nothing(backend, bad):
    case = Case("bad_offsets", n_rois=4)
    x, rois, offset = make_inputs(case, np.float64, SEED + 45)
    offset[:, :, 1, 0] = bad
    out, grads = run_both(backend, case, x, rois, offset, np.ones((4, 3, 3, 2)))
    assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads)
    np.testing.assert_array_equal(out[:, :, 1, 0], 0.0)  # every sample of that bin is outside


def test_empty_rois(backend):
    x = backend.asarray(np.ones((2, 3, 4, 4)))
    rois = backend.asarray(np.zeros((0, 5)))
    offset = backend.asarray(np.zeros((0, 2, 2, 2)))
    with backend.context():
        out = deform_roi_pool_forward(x, rois, offset, 2)
        g_input, g_offset = deform_roi_pool_backward(
            backend.asarray(np.zeros((0, 3, 2, 2))), x, rois, offset, 2
        )
    assert out.shape == (0, 3, 2, 2) and g_offset.shape == (0, 2, 2, 2)
    np.testing.assert_array_equal(backend.to_numpy(g_input), 0.0)


def test_cpu_backward_is_deterministic_across_thread_counts():
    numba = pytest.importorskip("numba")
    case = Case("determinism", channels=5, n_rois=12)
    x, rois, offset = make_inputs(case, np.float32, SEED + 46)
    grad = np.random.default_rng(SEED).standard_normal((12, 5, 3, 2)).astype(np.float32)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, before, before):
            numba.set_num_threads(threads)
            with cudcn.use_backend("cpu"):
                results.append(deform_roi_pool_backward(grad, x, rois, offset, (3, 2), 0.5, 2))
    finally:
        numba.set_num_threads(before)
    for g in results[1:]:
        np.testing.assert_array_equal(g[0], results[0][0])
        np.testing.assert_array_equal(g[1], results[0][1])


def test_tensor_path_gives_tensor_and_array_level_grads():
    case = Case("tape", n_rois=3)
    x, rois, offset = make_inputs(case, np.float64, SEED + 47)
    xt, ot = cudcn.Tensor(x, requires_grad=True), cudcn.Tensor(offset, requires_grad=True)
    out = deform_roi_pool(xt, rois, ot, (3, 2), 0.5, 2)
    assert isinstance(out, cudcn.Tensor)
    grad = np.random.default_rng(3).standard_normal(out.shape)
    out.backward(grad)
    g_input, g_offset = deform_roi_pool_backward(grad, x, rois, offset, (3, 2), 0.5, 2)
    np.testing.assert_array_equal(xt.grad, g_input)
    np.testing.assert_array_equal(ot.grad, g_offset)
    plain = deform_roi_pool(x.astype(np.float32), rois.astype(np.float32), None, 2)
    assert type(plain) is np.ndarray and plain.dtype == np.float32


def test_non_contiguous_inputs(backend):
    case = Case("strided")
    x, rois, offset = make_inputs(case, np.float64, SEED + 48)
    x_view = backend.asarray(np.ascontiguousarray(x.transpose(0, 1, 3, 2))).transpose(0, 1, 3, 2)
    rois_view = backend.asarray(np.repeat(rois, 2, axis=0))[::2]
    assert not x_view.flags.c_contiguous and not rois_view.flags.c_contiguous
    with backend.context():
        want = deform_roi_pool_forward(*(backend.asarray(a) for a in (x, rois, offset)), (3, 2))
        got = deform_roi_pool_forward(x_view, rois_view, backend.asarray(offset), (3, 2))
    np.testing.assert_array_equal(backend.to_numpy(got), backend.to_numpy(want))


def good_args(dtype=np.float32) -> dict:
    rng = np.random.default_rng(0)
    return {
        "input": rng.standard_normal((2, 3, 5, 6)).astype(dtype),
        "rois": np.array([[0, 1, 1, 4, 4], [1, 0, 2, 3, 5]], dtype),
        "offset": rng.standard_normal((2, 2, 2, 3)).astype(dtype),
        "output_size": (2, 3),
    }


def call(**changes):
    args = {**good_args(), **changes}
    return deform_roi_pool_forward(**args)


def test_good_arguments_pass():
    assert call().shape == (2, 3, 2, 3)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"rois": np.zeros((2, 4), np.float32)}, ValueError, r"rois must have shape \(2, 5\)"),
        ({"rois": np.zeros(5, np.float32)}, ValueError, r"rois must be 2-D \(R, 5\)"),
        (
            {"rois": np.zeros((2, 5), np.int64)},
            TypeError,
            r"rois must have dtype float16, bfloat16 \(ml_dtypes.bfloat16\), float32 or float64, got int64",
        ),
        ({"rois": np.zeros((2, 5), np.float64)}, TypeError, r"rois has dtype float64 but input"),
        ({"rois": np.array([[2, 0, 0, 1, 1.0]], np.float32)}, ValueError, r"\[0, 2\).*rois\[0\]"),
        ({"rois": np.array([[-1, 0, 0, 1, 1.0]], np.float32)}, ValueError, r"batch index in"),
        ({"rois": np.array([[0.5, 0, 0, 1, 1.0]], np.float32)}, ValueError, r"integer batch"),
        ({"rois": np.array([[0, 0, np.nan, 1, 1]], np.float32)}, ValueError, r"must be finite"),
        ({"rois": np.array([[0, 0, 0, np.inf, 1]], np.float32)}, ValueError, r"must be finite"),
        ({"offset": np.zeros((2, 2, 3, 2), np.float32)}, ValueError, r"offset must have shape"),
        ({"offset": np.zeros((2, 2, 2), np.float32)}, ValueError, r"offset must be 4-D"),
        ({"input": np.zeros((3, 5, 6), np.float32)}, ValueError, r"input must be 4-D"),
        ({"input": np.zeros((2, 3, 0, 6), np.float32)}, ValueError, r"H, W >= 1"),
        ({"output_size": 0, "offset": None}, ValueError, r"output_size must be >= 1"),
        ({"output_size": (2, 3, 1)}, TypeError, r"output_size must be an int or a pair"),
        ({"sampling_ratio": -1}, ValueError, r"sampling_ratio must be >= 0"),
        ({"sampling_ratio": 1.5}, TypeError, r"sampling_ratio must be an int"),
        ({"spatial_scale": 0.0}, ValueError, r"spatial_scale must be > 0"),
        ({"spatial_scale": np.nan}, ValueError, r"spatial_scale must be finite"),
        ({"gamma": np.inf}, ValueError, r"gamma must be finite"),
    ],
)
def test_bad_arguments(changes, error, match):
    with pytest.raises(error, match=match):
        call(**changes)


def test_bad_grad_out_shape():
    args = good_args()
    with pytest.raises(ValueError, match=r"grad_out must have shape \(2, 3, 2, 3\)"):
        deform_roi_pool_backward(np.zeros((2, 3, 3, 2), np.float32), **args)


def test_adaptive_grid_of_a_huge_roi_is_refused_not_run():
    """A RoI of a million pixels with sampling_ratio=0 would take ~2e10 samples per bin (a kernel
    that never ends on a GPU, a failed allocation on the CPU): a clear error instead."""
    x = np.zeros((1, 1, 8, 8), np.float32)
    huge = np.array([[0, 0, 0, 1e6, 1e6]], np.float32)
    with pytest.raises(ValueError, match=r"samples per bin with sampling_ratio=0"):
        roi_align(x, huge, 7, 1.0, 0)
    with pytest.raises(ValueError, match=r"pass sampling_ratio > 0"):
        deform_roi_pool(x, huge, None, 7, 1.0, 0)
    assert roi_align(x, huge, 7, 1.0, 2).shape == (1, 1, 7, 7)  # a fixed grid is fine
    assert roi_align(x, huge, 7, 1e-3, 0).shape == (1, 1, 7, 7)  # 1000 pixels after the scale
