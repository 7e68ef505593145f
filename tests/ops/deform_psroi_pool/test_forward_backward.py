"""deform_psroi_pool on every backend, against the float64 reference and an independent oracle.

Seeds are part of each test id or printed, so a failure is replayed by running that id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

import cudcn
from cudcn import reference
from cudcn.backends import get_backend
from cudcn.dtypes import FLOAT_DTYPES
from cudcn.functional import deform_psroi_pool
from cudcn.ops import deform_psroi_pool_backward, deform_psroi_pool_forward
from cudcn.ops.deform_psroi_pool import DeformPSRoIPoolParams
from cudcn.testing import assert_allclose_to_reference, gradcheck, poison_outputs
from tests.ops.deform_roi_pool.test_forward_backward import make_rois

SEED = 20261125


@dataclass(frozen=True)
class Case:
    """One deform_psroi_pool configuration; input channels = output_dim * group_size**2."""

    id: str
    batch: int = 2
    height: int = 7
    width: int = 6
    n_rois: int = 5
    output_dim: int = 4
    group_size: int = 2
    pooled_size: int = 3
    part_size: int = 3
    sample_per_part: int = 2
    num_classes: int = 2  # 0: no trans
    spatial_scale: float = 0.5
    trans_std: float = 0.2

    def params(self) -> dict:
        return {
            "spatial_scale": self.spatial_scale,
            "output_dim": self.output_dim,
            "group_size": self.group_size,
            "pooled_size": self.pooled_size,
            "part_size": self.part_size,
            "sample_per_part": self.sample_per_part,
            "trans_std": self.trans_std,
        }

    def op_params(self) -> DeformPSRoIPoolParams:
        """The parameters object the reference and the backends take."""
        return DeformPSRoIPoolParams(**self.params())


CASES = [
    Case("basic"),
    Case("group_1_one_class", group_size=1, output_dim=3, num_classes=1, sample_per_part=3),
    Case("group_3_parts_2", group_size=3, output_dim=2, pooled_size=4, part_size=2),
    Case("part_larger", pooled_size=2, part_size=5, sample_per_part=4, num_classes=4),
    Case("one_sample", sample_per_part=1, trans_std=0.5),
    Case("no_trans", num_classes=0, pooled_size=5, group_size=3, output_dim=1),
    Case("one_pixel_map", height=1, width=1, n_rois=4),
]


def make_inputs(case: Case, dtype, seed: int):
    """Random input, rois and (maybe) trans of ``case``, as ``dtype``. Half-integer corners test the
    rounding (half away from zero)."""
    rng = np.random.default_rng(seed)
    channels = case.output_dim * case.group_size**2
    x = rng.standard_normal((case.batch, channels, case.height, case.width))
    rois = make_rois(
        rng, case.n_rois, case.batch, case.height / case.spatial_scale, case.width / case.spatial_scale
    )
    rois[0, 1:] = [0.5, -1.5, 2.5, 2.5]
    trans = None
    if case.num_classes:
        shape = (case.n_rois, 2 * case.num_classes, case.part_size, case.part_size)
        trans = rng.uniform(-1.0, 1.0, shape)
    return tuple(None if a is None else a.astype(dtype) for a in (x, rois, trans))


def run_both(backend, case: Case, x, rois, trans, grad_out):
    """The backend's forward and backward with outputs poisoned; results on the host."""
    dev = [None if a is None else backend.asarray(a) for a in (x, rois, trans)]
    with backend.context(), poison_outputs():
        module = get_backend(dev[0])
        out = module.deform_psroi_pool_forward(*dev, case.op_params())
        grads = module.deform_psroi_pool_backward(backend.asarray(grad_out), *dev, case.op_params())
    return backend.to_numpy(out), [backend.to_numpy(g) for g in grads]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(backend, case, dtype):
    seed = SEED + CASES.index(case)
    x, rois, trans = make_inputs(case, dtype, seed)
    ref_out = reference.deform_psroi_pool_forward(x, rois, trans, case.op_params())
    grad_out = np.random.default_rng(seed + 1).standard_normal(ref_out.shape).astype(dtype)
    ref_grads = reference.deform_psroi_pool_backward(grad_out, x, rois, trans, case.op_params())
    out, grads = run_both(backend, case, x, rois, trans, grad_out)
    assert out.dtype == dtype and out.shape == ref_out.shape
    # float32 backends round sample coordinates (< 2 * the largest coordinate, in pixels): their
    # error is bounded by that times the largest bilinear slope, 2 max|x|.
    reach = 2 * (float(np.abs(rois[:, 1:]).max()) + 1) * case.spatial_scale * (1 + case.trans_std) + 1
    coords = 2 * float(np.abs(x).max()) * reach
    scale = reference.deform_psroi_pool_forward(np.abs(x), rois, trans, case.op_params()) + coords
    assert_allclose_to_reference(out, ref_out, dtype, scale=scale, name=f"output (seed {seed})")
    g_scale = float(np.abs(grad_out).max()) * (1 + coords)
    for name, got, want in zip(("input", "trans"), grads, ref_grads, strict=True):
        if want is None:
            assert got is None, name
            continue
        assert got.shape == want.shape and got.dtype == dtype, name
        s = g_scale * (1 + case.trans_std * coords) if name == "trans" else g_scale
        assert_allclose_to_reference(got, want, dtype, scale=s, name=f"grad {name} (seed {seed})")


def psroi_oracle(x, rois, scale, pooled, sample_per_part):
    """group_size = 1, no trans: every bin of channel c averages its valid corner-aligned samples of
    input channel c; NumPy grids, and scipy's linear interpolation as the sampler."""
    out = np.zeros((len(rois), x.shape[1], pooled, pooled))
    height, width = x.shape[2:]
    for r, (b, *corners) in enumerate(rois):
        x1, y1, x2, y2 = (np.sign(v) * np.floor(abs(v) + 0.5) for v in corners)  # C's round
        start = np.array([y1, x1]) * scale - 0.5
        size = np.maximum((np.array([y2, x2]) + 1) * scale - 0.5 - start, 0.1)
        for i in range(pooled):
            for j in range(pooled):
                k = np.arange(sample_per_part)
                h0 = i * (size[0] / pooled) + start[0]
                w0 = j * (size[1] / pooled) + start[1]
                hh, ww = np.meshgrid(
                    h0 + k * (size[0] / pooled / sample_per_part),
                    w0 + k * (size[1] / pooled / sample_per_part),
                    indexing="ij",
                )
                valid = (hh >= -0.5) & (hh <= height - 0.5) & (ww >= -0.5) & (ww <= width - 0.5)
                if not valid.any():
                    continue
                pts = [np.clip(hh[valid], 0, height - 1), np.clip(ww[valid], 0, width - 1)]
                for c in range(x.shape[1]):
                    samples = map_coordinates(x[int(b), c], pts, order=1, mode="nearest")
                    out[r, c, i, j] = samples.mean()
    return out


@pytest.mark.parametrize("sample_per_part", [1, 3])
def test_group_1_without_trans_matches_numpy_oracle(backend, sample_per_part):
    rng = np.random.default_rng(SEED + 30 + sample_per_part)
    x = rng.standard_normal((2, 3, 8, 7))
    rois = make_rois(rng, 6, 2, 8 / 0.5, 7 / 0.5)
    rois[0, 1:] = [2.5, -0.5, 9.5, 11.5]  # halves round away from zero
    with backend.context(), poison_outputs():
        got = deform_psroi_pool(
            backend.asarray(x),
            backend.asarray(rois),
            spatial_scale=0.5,
            output_dim=3,
            group_size=1,
            pooled_size=3,
            sample_per_part=sample_per_part,
        )
    want = psroi_oracle(x, rois, 0.5, 3, sample_per_part)
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-12, atol=1e-12)


def test_zero_trans_is_no_trans(backend):
    case = Case("zero_trans")
    x, rois, trans = make_inputs(case, np.float64, SEED + 40)
    dev = [backend.asarray(a) for a in (x, rois, np.zeros_like(trans))]
    with backend.context():
        with_zero = deform_psroi_pool_forward(*dev, **case.params())
        without = deform_psroi_pool_forward(*dev[:2], **case.params())
    np.testing.assert_array_equal(backend.to_numpy(with_zero), backend.to_numpy(without))


def test_gradcheck_input_and_trans(backend):
    """Random trans puts the samples at random, non-integer points (away from the kinks)."""
    case = Case(
        "gradcheck",
        batch=1,
        height=5,
        width=5,
        n_rois=2,
        output_dim=2,
        pooled_size=2,
        part_size=2,
        num_classes=2,
    )
    x, rois, trans = make_inputs(case, np.float64, SEED + 41)
    dev_rois = backend.asarray(rois)

    def fn(x, trans):
        return deform_psroi_pool(x, dev_rois, trans, **case.params())

    with backend.context():
        assert gradcheck(fn, [backend.asarray(x), backend.asarray(trans)], seed=SEED)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30])
def test_non_finite_trans_reads_nothing(backend, bad):
    case = Case("bad_trans", num_classes=1, part_size=3)
    x, rois, trans = make_inputs(case, np.float64, SEED + 42)
    trans[:, :, 0, 0] = bad
    out, grads = run_both(backend, case, x, rois, trans, np.ones((5, 4, 3, 3)))
    assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads)
    np.testing.assert_array_equal(out[:, :, 0, 0], 0.0)  # every sample of that bin is skipped


def test_empty_rois(backend):
    x = backend.asarray(np.ones((1, 8, 4, 4)))
    rois = backend.asarray(np.zeros((0, 5)))
    params = {"spatial_scale": 1.0, "output_dim": 2, "group_size": 2, "pooled_size": 3}
    with backend.context():
        out = deform_psroi_pool_forward(x, rois, **params)
        g_input, g_trans = deform_psroi_pool_backward(
            backend.asarray(np.zeros((0, 2, 3, 3))), x, rois, **params
        )
    assert out.shape == (0, 2, 3, 3) and g_trans is None
    np.testing.assert_array_equal(backend.to_numpy(g_input), 0.0)


def test_cpu_backward_is_deterministic_across_thread_counts():
    numba = pytest.importorskip("numba")
    case = Case("determinism", n_rois=9)
    x, rois, trans = make_inputs(case, np.float32, SEED + 43)
    grad = np.random.default_rng(SEED).standard_normal((9, 4, 3, 3)).astype(np.float32)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, before, before):
            numba.set_num_threads(threads)
            with cudcn.use_backend("cpu"):
                results.append(deform_psroi_pool_backward(grad, x, rois, trans, **case.params()))
    finally:
        numba.set_num_threads(before)
    for g in results[1:]:
        np.testing.assert_array_equal(g[0], results[0][0])
        np.testing.assert_array_equal(g[1], results[0][1])


def test_tensor_path_gives_tensor_and_array_level_grads():
    case = Case("tape", n_rois=3)
    x, rois, trans = make_inputs(case, np.float64, SEED + 44)
    xt, tt = cudcn.Tensor(x, requires_grad=True), cudcn.Tensor(trans, requires_grad=True)
    out = deform_psroi_pool(xt, rois, tt, **case.params())
    assert isinstance(out, cudcn.Tensor)
    grad = np.random.default_rng(3).standard_normal(out.shape)
    out.backward(grad)
    g_input, g_trans = deform_psroi_pool_backward(grad, x, rois, trans, **case.params())
    np.testing.assert_array_equal(xt.grad, g_input)
    np.testing.assert_array_equal(tt.grad, g_trans)


def good_args(dtype=np.float32) -> dict:
    rng = np.random.default_rng(0)
    return {
        "input": rng.standard_normal((2, 12, 5, 6)).astype(dtype),  # 3 * 2**2 channels
        "rois": np.array([[0, 1, 1, 4, 4], [1, 0, 2, 3, 5]], dtype),
        "trans": rng.standard_normal((2, 6, 2, 2)).astype(dtype),  # 3 classes, part 2
        "spatial_scale": 1.0,
        "output_dim": 3,
        "group_size": 2,
        "pooled_size": 3,
        "part_size": 2,
    }


def call(**changes):
    return deform_psroi_pool_forward(**{**good_args(), **changes})


def test_good_arguments_pass():
    assert call().shape == (2, 3, 3, 3)
    assert call(trans=None, part_size=None).shape == (2, 3, 3, 3)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"output_dim": 2}, ValueError, r"channels must equal output_dim \* group_size\*\*2"),
        ({"group_size": 1}, ValueError, r"= 3 \* 1\*\*2 = 3, got 12"),
        ({"trans": np.zeros((2, 5, 2, 2), np.float32)}, ValueError, r"positive even number"),
        ({"trans": np.zeros((2, 4, 2, 2), np.float32)}, ValueError, r"divisible by num_classes"),
        ({"trans": np.zeros((2, 6, 3, 3), np.float32)}, ValueError, r"trans must have shape"),
        ({"trans": np.zeros((1, 6, 2, 2), np.float32)}, ValueError, r"trans must have shape"),
        ({"trans": np.zeros((2, 6, 2), np.float32)}, ValueError, r"trans must be 4-D"),
        ({"trans": np.zeros((2, 6, 2, 2))}, TypeError, r"trans has dtype float64"),
        ({"rois": np.array([[5, 0, 0, 1, 1]], np.float32)}, ValueError, r"rois\[0\]"),
        ({"rois": np.array([[0, 0, 0, 1, np.nan]], np.float32)}, ValueError, r"finite"),
        ({"rois": np.zeros((2, 6), np.float32)}, ValueError, r"rois must have shape \(2, 5\)"),
        ({"group_size": 0}, ValueError, r"group_size must be >= 1"),
        ({"pooled_size": 0}, ValueError, r"pooled_size must be >= 1"),
        ({"part_size": 0}, ValueError, r"part_size must be >= 1"),
        ({"sample_per_part": 0}, ValueError, r"sample_per_part must be >= 1"),
        ({"output_dim": 0}, ValueError, r"output_dim must be >= 1"),
        ({"spatial_scale": -1.0}, ValueError, r"spatial_scale must be > 0"),
        ({"trans_std": np.nan}, ValueError, r"trans_std must be finite"),
        ({"input": np.zeros((2, 12, 5, 0), np.float32)}, ValueError, r"H, W >= 1"),
    ],
)
def test_bad_arguments(changes, error, match):
    with pytest.raises(error, match=match):
        call(**changes)


def test_bad_grad_out_shape():
    args = good_args()
    with pytest.raises(ValueError, match=r"grad_out must have shape \(2, 3, 3, 3\)"):
        deform_psroi_pool_backward(np.zeros((2, 3, 2, 2), np.float32), **args)
