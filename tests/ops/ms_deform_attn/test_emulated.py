"""ms_deform_attn's CUDA kernels (``cudcn/kernels/ms_deform_attn.cu``, one warp per (batch, query,
head) group, lanes over the channels) against the float64 reference: on the emulated backend
everywhere, on the cuda backend where a GPU is present (marked ``gpu``, skipped with the reason
otherwise). The shapes aim at the warp layout: D below, at and above 32 and not a multiple of it (lanes
without a channel, lanes with two), one to three levels, points outside every level, exact pixel
coordinates (centres, corners, the border at -1 and at W), pixel-unit locations, every dtype, both
index types, outputs poisoned, and the IEEE rule for non-finite data. The op-level tests (every
backend through ``cudcn.ops``, gradcheck, validation, oracles) are in test_forward_backward.py;
determinism over schedules in tests/precision/test_deterministic.py, the sanitizers and the
one-block launches in tests/backends.

Tolerances: ``factor * eps * scale`` (cudcn.testing) with ``factor`` the number of terms one result
accumulates (plus the products' roundings) and ``scale`` the reference on absolute values plus the
error the compute dtype's rounding of the sampling coordinates can cause (slope times position).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pytest

import cudcn
import cudcn.backends.emulated
from cudcn import reference
from cudcn.backends import get_backend
from cudcn.backends.launch import common as launch
from cudcn.dtypes import FLOAT_DTYPES, compute_dtype
from cudcn.ops.ms_deform_attn import MSDeformAttnParams
from cudcn.testing import assert_allclose_to_reference, poison_outputs
from tests.conftest import Backend
from tests.precision.test_nonfinite import kinds

SEED = 20260518
KERNEL_BACKENDS = [pytest.param("emulated"), pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=KERNEL_BACKENDS)
def kernels(request) -> Backend:
    """The backends that run the .cu kernels: emulated, and cuda on a GPU."""
    return Backend(request.param)


@dataclass(frozen=True)
class Case:
    """One configuration of the core: value (batch, S, heads, channels), levels (H_l, W_l)."""

    id: str
    levels: tuple[tuple[int, int], ...] = ((4, 5), (2, 3))
    batch: int = 2
    queries: int = 3
    heads: int = 2
    channels: int = 3
    points: int = 2
    normalized: bool = True

    def params(self) -> MSDeformAttnParams:
        sizes = [h * w for h, w in self.levels]
        starts = tuple(int(s) for s in np.cumsum([0, *sizes[:-1]]))
        return MSDeformAttnParams(self.levels, starts, self.normalized)


CASES = [
    Case("d3"),
    Case("d33", channels=33, queries=2),
    Case("d40_three_levels", channels=40, levels=((5, 4), (3, 3), (1, 2)), batch=1),
    Case("d64_one_head", channels=64, heads=1, points=3, batch=1),
    Case("d32_one_level", channels=32, levels=((6, 7),), points=4),
    Case("d1", channels=1, levels=((1, 1), (2, 2)), points=3),
    Case("pixel_units", channels=5, normalized=False),
]


def make_inputs(case: Case, dtype, seed: int) -> tuple[np.ndarray, ...]:
    """value, locations (compute dtype), weights, grad_out. About a third of the points sit on exact
    coordinates (multiples of 1/8 when normalised, so loc·W − 0.5 is exact in every compute dtype:
    pixel centres and corners, x = −1 and x = W among them; half pixels in pixel units); the others
    are uniform over a range reaching outside every level."""
    rng = np.random.default_rng(seed)
    spatial = sum(h * w for h, w in case.levels)
    levels = len(case.levels)
    value = rng.standard_normal((case.batch, spatial, case.heads, case.channels))
    shape = (case.batch, case.queries, case.heads, levels, case.points, 2)
    if case.normalized:
        loc = rng.uniform(-0.3, 1.3, shape)
        exact = rng.integers(-3, 12, shape) / 8
    else:
        size = max(max(h, w) for h, w in case.levels)
        loc = rng.uniform(-2.0, size + 1.0, shape)
        exact = rng.integers(-4, 2 * size + 3, shape) / 2
    snap = rng.random(shape[:-1]) < 0.35
    loc[snap] = exact[snap]
    weights = rng.standard_normal(shape[:-1])
    grad = rng.standard_normal((case.batch, case.queries, case.heads, case.channels))
    wide = compute_dtype(dtype)
    return value.astype(dtype), loc.astype(wide), weights.astype(dtype), grad.astype(dtype)


def run_kernels(backend: Backend, value, loc, weights, grad, p) -> list[np.ndarray]:
    """``[out, grad_value, grad_locations, grad_weights]`` from the backend's kernels (outputs
    poisoned), on the host."""
    dev = [backend.asarray(a) for a in (value, loc, weights, grad)]
    with backend.context(), poison_outputs():
        module = get_backend(dev[0])
        out = module.ms_deform_attn_forward(*dev[:3], p)
        grads = module.ms_deform_attn_backward(dev[3], *dev[:3], p)
    return [backend.to_numpy(a) for a in (out, *grads)]


def tolerance_scales(case: Case, value, loc, weights, grad, p) -> list[tuple[np.ndarray, int]]:
    """``(scale, factor)`` for out, grad_value, grad_locations, grad_weights (module docstring)."""
    av, aw, ag = (np.abs(a.astype(np.float64)) for a in (value, weights, grad))
    loc = loc.astype(np.float64)
    vmax = float(av.max())
    size = max(max(h, w) for h, w in case.levels) if case.normalized else 1
    reach = size * (float(np.abs(loc).max()) + 1) + 1  # bounds |x| + 1, |y| + 1
    levels_points = len(case.levels) * case.points
    g_sum = ag.sum(axis=3)[..., None, None]  # Σ_d |g| per group, against (N, Q, M, L, P)
    out = reference.ms_deform_attn_forward(av, loc, aw, p) + (
        2 * vmax * reach * aw.sum(axis=(3, 4))[..., None]
    )
    g_value, _, g_weights = reference.ms_deform_attn_backward(ag, av, loc, aw, p)
    g_value = g_value + reach * float(aw.max() * ag.max()) * case.queries * case.points
    g_weights = g_weights + 2 * vmax * reach * g_sum
    g_loc = (aw * g_sum * 4 * vmax * reach * size)[..., None]
    per_channel = 4 * case.channels + 8
    return [
        (out, 4 * levels_points + 8),
        (g_value, case.queries * case.points + 8),
        (g_loc, per_channel),
        (g_weights, per_channel),
    ]


NAMES = ("out", "grad_value", "grad_locations", "grad_weights")


def check_against_reference(backend: Backend, case: Case, dtype, seed: int) -> None:
    value, loc, weights, grad = make_inputs(case, dtype, seed)
    p = case.params()
    got = run_kernels(backend, value, loc, weights, grad, p)
    want = [
        reference.ms_deform_attn_forward(value, loc, weights, p),
        *reference.ms_deform_attn_backward(grad, value, loc, weights, p),
    ]
    wide = compute_dtype(dtype)
    dtypes = (dtype, dtype, wide, dtype)
    scales = tolerance_scales(case, value, loc, weights, grad, p)
    for name, g, w, kind, (scale, factor) in zip(NAMES, got, want, dtypes, scales, strict=True):
        assert g.dtype == kind and g.shape == w.shape, f"{name}: {g.dtype} {g.shape}"
        label = f"{case.id} {name} (seed {seed})"
        assert_allclose_to_reference(g, w, kind, scale=scale, factor=factor, name=label)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_kernels_match_the_reference(kernels, case, dtype):
    check_against_reference(kernels, case, dtype, SEED + CASES.index(case))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_deterministic_mode_matches_the_reference(kernels, dtype):
    with cudcn.deterministic():
        check_against_reference(kernels, CASES[1], dtype, SEED + 50)


def test_64_bit_index_instantiation(monkeypatch):
    """INDEX32_LIMIT 0: every launch takes the ``long long`` kernels, which must agree too."""
    monkeypatch.setattr(launch, "INDEX32_LIMIT", 0)
    names: list[str] = []
    from cudcn.backends.emulated.loader import host_kernels
    from cudcn.backends.launch import ms_deform_attn as msda_launch

    get = host_kernels("ms_deform_attn")

    def recorded(name: str):
        names.append(name)
        return get(name)

    case = CASES[2]
    value, loc, weights, grad = make_inputs(case, np.float64, SEED + 60)
    p = case.params()
    out = msda_launch.ms_deform_attn_forward(np, recorded, value, loc, weights, p)
    grads = msda_launch.ms_deform_attn_backward(np, recorded, grad, value, loc, weights, p)
    assert names == [f"ms_deform_attn_{k}<double, long long>" for k in ("forward", "backward")]
    want = [
        reference.ms_deform_attn_forward(value, loc, weights, p),
        *reference.ms_deform_attn_backward(grad, value, loc, weights, p),
    ]
    for name, g, w in zip(NAMES, (out, *grads), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, err_msg=name)


def test_block_size_must_hold_whole_warps(monkeypatch):
    monkeypatch.setattr(launch, "THREADS_PER_BLOCK", 48)
    value, loc, weights, _ = make_inputs(CASES[0], np.float64, SEED)
    with cudcn.use_backend("emulated"), pytest.raises(ValueError, match="multiple of 32"):
        cudcn.backends.emulated.ms_deform_attn_forward(value, loc, weights, CASES[0].params())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_non_finite_data_follow_the_reference(kernels, dtype):
    """NaN and inf land where the reference puts them (docs/spec.md): an inf weight on a point
    outside gives inf * 0 = NaN, NaN / inf pixels reach the samples that use them (with bilinear
    weight 0 too), an inf grad_out times a zero derivative is NaN, non-finite locations sample
    nothing (but w * 0 still counts)."""
    case = Case("non_finite", channels=33, queries=4)
    value, loc, weights, grad = make_inputs(case, dtype, SEED + 70)
    value[0, 3, 0, 5] = np.nan
    value[1, 7, 1, :] = np.inf
    value[0, 21, 1, 2] = -np.inf  # level 1
    loc[0, 0, 0, 0, 0] = (-2.0, 0.5)  # outside, with an inf weight: NaN output, NaN location grad
    weights[0, 0, 0, 0, 0] = np.inf
    loc[1, 1, 0, 1, 1] = (np.nan, 0.5)
    loc[1, 2, 1, 0, 0] = (0.5, np.inf)
    loc[0, 3, 1, 0, 1] = (0.5, 0.5)  # an integer point: neighbours with bilinear weight 0
    grad[1, 3, 0, 7] = np.inf
    grad[0, 1, 1, 32] = np.nan  # the one channel of lane 0's second pass
    p = case.params()
    got = run_kernels(kernels, value, loc, weights, grad, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = [
            reference.ms_deform_attn_forward(value, loc, weights, p),
            *reference.ms_deform_attn_backward(grad, value, loc, weights, p),
        ]
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for name, g, w in zip(NAMES, got, want, strict=True):
        bad = np.argwhere(kinds(g) != kinds(w))
        assert bad.size == 0, f"{name}: NaN/inf differ at {bad[:5].tolist()}"
        assert not np.isfinite(w).all(), f"{name}: the case plants no non-finite result"
        finite = np.isfinite(w)
        scale = float(np.abs(w[finite]).max())
        np.testing.assert_allclose(g[finite], w[finite], rtol=tol, atol=tol * scale, err_msg=name)


def test_the_emulator_runs_these_kernels_concurrent(monkeypatch):
    """The backward's warp shuffles need every CUDA thread of a block to be an OS thread: the loader
    finds the source cooperating, so the default ("auto") mode runs concurrent, and serial mode
    refuses rather than running it wrong."""
    from cudcn.backends.emulated.loader import host_library

    monkeypatch.delenv("CUDCN_EMULATED_MODE", raising=False)
    assert host_library("ms_deform_attn").get_kernel("ms_deform_attn_backward<float, int>").cooperates
    value, loc, weights, grad = make_inputs(CASES[0], np.float64, SEED)
    p = CASES[0].params()
    cudcn.backends.emulated.ms_deform_attn_backward(grad, value, loc, weights, p)
    monkeypatch.setenv("CUDCN_EMULATED_MODE", "serial")
    with pytest.raises(RuntimeError, match="CUDCN_EMULATED_MODE=concurrent"):
        cudcn.backends.emulated.ms_deform_attn_backward(grad, value, loc, weights, p)
