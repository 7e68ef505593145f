"""ms_deform_attn on every backend, against the float64 reference, oracles and PyTorch's grid_sample.

The core (``aggregate_forward`` / ``aggregate_backward``) is run with outputs poisoned. Locations of
the dtype comparison are multiples of 1/128 on levels at most 8 wide: exact in every dtype, and so is
``loc·W − 0.5`` in float32, so a backend and the reference sample the same points and the allowed error
is summation rounding alone, derived from the dtype and the count of terms (``cudcn.testing``). Seeds
are part of each test id or printed, so a failure is replayed by running that id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import cudcn
from cudcn import reference
from cudcn.dtypes import FLOAT_DTYPES, compute_dtype
from cudcn.functional import ms_deform_attn
from cudcn.ops import ms_deform_attn_backward, ms_deform_attn_forward
from cudcn.ops.ms_deform_attn import MSDeformAttnParams, aggregate_backward, aggregate_forward
from cudcn.testing import assert_allclose_to_reference, gradcheck, poison_outputs

SEED = 20261207


@dataclass(frozen=True)
class Case:
    """One core configuration: value (batch, Σ H·W, heads, channels), ``queries`` queries with
    ``points`` points per level and head; ``borders`` puts points on the borders of each level."""

    id: str
    batch: int = 2
    queries: int = 3
    heads: int = 2
    channels: int = 3
    levels: tuple[tuple[int, int], ...] = ((3, 4), (2, 2), (1, 3))
    points: int = 2
    normalized: bool = True
    borders: bool = False

    def params(self) -> MSDeformAttnParams:
        sizes = [h * w for h, w in self.levels]
        return MSDeformAttnParams(
            self.levels, tuple(int(s) for s in np.cumsum([0, *sizes[:-1]])), self.normalized
        )


CASES = [
    Case("basic"),
    Case("one_level", levels=((4, 5),), points=3),
    Case("channel_tail", batch=1, heads=1, channels=37, queries=2, levels=((2, 3), (1, 1))),
    Case("two_channel_runs", batch=1, heads=1, channels=70, queries=2, levels=((2, 3),), points=1),
    Case("one_pixel_levels", levels=((1, 1), (1, 2)), points=3),
    Case("many_queries", batch=1, heads=1, channels=2, queries=70, levels=((2, 2),), points=1),
    Case("pixel_units", levels=((5, 6), (2, 3)), normalized=False),
    Case("borders", levels=((4, 8), (2, 2)), points=7, borders=True),
    Case("borders_pixel_units", levels=((4, 8),), points=7, borders=True, normalized=False),
]


def border_pixels(h: int, w: int) -> list[tuple[float, float]]:
    """(x, y) pixel positions on and around the border of an h x w level: the range's ends -1 and
    w - 1, h - 1 (a neighbour outside the level), just outside (w, h), a corner, and one point
    outside on the left."""
    return [(-1, -1), (-0.5, 0), (0, -1), (w - 1, h - 1), (w, 0.5), (1, h), (-1.5, 1)]


def border_locations(levels: tuple, points: int, normalized: bool) -> np.ndarray:
    """(L, P, 2) locations of the first P ``border_pixels`` of each level."""
    out = np.zeros((len(levels), points, 2))
    for l, (h, w) in enumerate(levels):
        for k, (x, y) in enumerate(border_pixels(h, w)[:points]):
            out[l, k] = ((x + 0.5) / w, (y + 0.5) / h) if normalized else (x, y)
    return out


def make_inputs(case: Case, dtype, seed: int, exact: bool = True) -> dict:
    """value, locations, weights and grad_out of ``case`` as ``dtype`` (locations: ``exact`` on
    multiples of 1/128, see the module docstring; else uniform), some points outside the levels."""
    rng = np.random.default_rng(seed)
    n, q, m, lv, p = case.batch, case.queries, case.heads, len(case.levels), case.points
    total = sum(h * w for h, w in case.levels)
    span = max(max(level) for level in case.levels) if not case.normalized else 1.0
    locations = rng.uniform(-0.2 * span, 1.2 * span, (n, q, m, lv, p, 2))
    if exact:
        locations = np.round(locations * 128) / 128
    if case.borders:  # the same border points for every (n, q, m); levels of 2^k pixels: exact
        locations = np.broadcast_to(border_locations(case.levels, p, case.normalized), locations.shape)
    arrays = {
        "value": rng.standard_normal((n, total, m, case.channels)),
        "locations": locations,
        "weights": rng.standard_normal((n, q, m, lv, p)),
        "grad_out": rng.standard_normal((n, q, m, case.channels)),
    }
    return {k: v.astype(dtype) for k, v in arrays.items()}


def run_core(backend, a: dict, p: MSDeformAttnParams) -> tuple[np.ndarray, list[np.ndarray]]:
    """The core's forward and backward on ``backend`` with outputs poisoned; results on the host."""
    dev = {k: backend.asarray(v) for k, v in a.items()}
    args = (dev["value"], dev["locations"], dev["weights"])
    with backend.context(), poison_outputs():
        out = aggregate_forward(*args, p)
        grads = aggregate_backward(dev["grad_out"], *args, p)
    return backend.to_numpy(out), [backend.to_numpy(g) for g in grads]


def error_scales(case: Case, a: dict) -> tuple[np.ndarray, ...]:
    """Σ |terms| per element of the output and of each gradient (the reference on absolute values;
    for the locations, a bound of |∂sample/∂x| by 2 max|value| per channel)."""
    p = case.params()
    v, loc, w, g = (np.abs(a[k].astype(np.float64)) for k in ("value", "locations", "weights", "grad_out"))
    loc = a["locations"].astype(np.float64)
    out = reference.ms_deform_attn_forward(v, loc, w, p)
    g_value, _, g_weights = reference.ms_deform_attn_backward(g, v, loc, w, p)
    sizes = np.array([(w_, h) for h, w_ in case.levels], float) if case.normalized else np.ones((1, 2))
    g_sum = g.sum(axis=3)[:, :, :, None, None, None]  # Σ_d |grad_out| per (n, q, m)
    g_loc = w[..., None] * g_sum * 2 * v.max(initial=0) * sizes[None, None, None, :, None, :]
    return out, g_value, g_loc, g_weights


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(backend, case, dtype):
    seed = SEED + CASES.index(case)
    a = make_inputs(case, dtype, seed)
    p = case.params()
    want_out = reference.ms_deform_attn_forward(a["value"], a["locations"], a["weights"], p)
    want = reference.ms_deform_attn_backward(a["grad_out"], a["value"], a["locations"], a["weights"], p)
    out, grads = run_core(backend, a, p)
    assert out.dtype == dtype and out.shape == want_out.shape
    scales = error_scales(case, a)
    terms = len(case.levels) * case.points
    factors = (4 * terms + 4, case.queries * terms + 4, case.channels + 8, case.channels + 8)
    names = ("output", "value", "locations", "weights")
    named = zip(names, (out, *grads), (want_out, *want), scales, factors, strict=True)
    for name, got, ref, scale, factor in named:
        # The location gradient stays in the compute dtype (float32 for 16-bit values), unrounded.
        wanted_dtype = compute_dtype(dtype) if name == "locations" else dtype
        assert got.dtype == wanted_dtype and got.shape == ref.shape, name
        assert_allclose_to_reference(
            got, ref, wanted_dtype, scale=scale, factor=factor, name=f"{name} (seed {seed})"
        )


def test_gradcheck_through_functional(backend):
    """Value, locations and weights gradients of the public op on Tensors, float64 finite
    differences (uniform locations: no point on a kink)."""
    case = Case("gradcheck", queries=2, channels=2, points=2)
    a = make_inputs(case, np.float64, SEED + 40, exact=False)
    shapes, starts = np.array(case.levels), case.params().starts

    def fn(value, locations, weights):
        return ms_deform_attn(value, shapes, starts, locations, weights)

    with backend.context():
        arrays = [backend.asarray(a[k]) for k in ("value", "locations", "weights")]
        assert gradcheck(fn, arrays, seed=SEED)


def test_array_level_pair_and_tape_agree_with_reference():
    case = Case("array_level")
    a = make_inputs(case, np.float64, SEED + 41, exact=False)
    p = case.params()
    n, q, m, d = a["grad_out"].shape
    args = (a["value"], np.array(case.levels), list(p.starts), a["locations"], a["weights"])
    out = ms_deform_attn_forward(*args)
    grads = ms_deform_attn_backward(a["grad_out"].reshape(n, q, m * d), *args)
    want = reference.ms_deform_attn_forward(a["value"], a["locations"], a["weights"], p)
    np.testing.assert_allclose(out, want.reshape(n, q, m * d), rtol=1e-12, atol=1e-12)
    ref_grads = reference.ms_deform_attn_backward(a["grad_out"], a["value"], a["locations"], a["weights"], p)
    for got, ref in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    leaves = [cudcn.Tensor(args[k], requires_grad=True) for k in (0, 3, 4)]
    taped = ms_deform_attn(leaves[0], args[1], args[2], leaves[1], leaves[2])
    assert isinstance(taped, cudcn.Tensor)
    taped.backward(a["grad_out"].reshape(n, q, m * d))
    for leaf, g in zip(leaves, grads, strict=True):
        np.testing.assert_array_equal(leaf.grad, g)


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=str)
def test_array_level_gradients_keep_the_locations_dtype(dtype):
    """The core returns 16-bit inputs' location gradient in float32; the array-level op rounds it to
    the locations' own dtype, as every gradient has its input's dtype."""
    case = Case("dtypes")
    a = make_inputs(case, dtype, SEED + 42)
    args = (a["value"], np.array(case.levels), case.params().starts, a["locations"], a["weights"])
    n, q, m, d = a["grad_out"].shape
    grads = ms_deform_attn_backward(a["grad_out"].reshape(n, q, m * d), *args)
    assert [g.dtype for g in grads] == [np.dtype(dtype)] * 3
    assert ms_deform_attn_forward(*args).dtype == dtype


def bilinear(img: np.ndarray, y: float, x: float) -> np.ndarray:
    """An independent zero-padded bilinear sample of img (H, W, D) at pixel (y, x)."""
    h, w, _ = img.shape
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    total = np.zeros(img.shape[2])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * img[yy, xx]
    return total


def test_pixel_centres_of_one_level_gather_the_value(backend):
    rng = np.random.default_rng(SEED + 43)
    h, w, d = 3, 5, 4
    value = rng.standard_normal((1, h * w, 2, d))
    ys, xs = rng.integers(0, h, (1, 6, 2, 1, 3)), rng.integers(0, w, (1, 6, 2, 1, 3))
    locations = np.stack([(xs + 0.5) / w, (ys + 0.5) / h], -1)
    weights = rng.standard_normal((1, 6, 2, 1, 3))
    with backend.context():
        got = ms_deform_attn_forward(
            *(backend.asarray(v) for v in (value, [[h, w]], [0], locations, weights))
        )
    pixels = value[0][(ys * w + xs)[0], np.arange(2)[None, :, None, None]]  # (6, 2, 1, 3, D)
    want = (pixels * weights[0][..., None]).sum(axis=(2, 3)).reshape(1, 6, 2 * d)
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-12, atol=1e-12)


def test_all_weight_on_one_point_is_its_bilinear_sample(backend):
    case = Case("one_point", batch=1, queries=4, heads=1, channels=3, points=3)
    a = make_inputs(case, np.float64, SEED + 44, exact=False)
    a["weights"][:] = 0
    a["weights"][0, :, 0, 1, 2] = 1  # level 1, point 2
    out, _ = run_core(backend, a, case.params())
    (h, w), start = case.levels[1], case.params().starts[1]
    img = a["value"][0, start : start + h * w, 0].reshape(h, w, -1)
    for q in range(4):
        x, y = a["locations"][0, q, 0, 1, 2]
        np.testing.assert_allclose(out[0, q, 0], bilinear(img, y * h - 0.5, x * w - 0.5), atol=1e-12)


def test_zero_weights_give_zero_output_and_location_gradients(backend):
    case = Case("zero_weights")
    a = make_inputs(case, np.float32, SEED + 45)
    a["weights"][:] = 0
    out, (g_value, g_locations, g_weights) = run_core(backend, a, case.params())
    assert not out.any() and not g_value.any() and not g_locations.any()
    want = reference.ms_deform_attn_backward(
        a["grad_out"], a["value"], a["locations"], a["weights"], case.params()
    )
    np.testing.assert_allclose(g_weights, want[2], rtol=1e-5, atol=1e-5)


def test_pixel_units_are_normalised_locations_scaled(backend):
    """normalized=False at ``loc·(W, H) − 0.5`` samples what normalized=True does at ``loc``, and its
    location gradient is the normalised one divided by (W, H)."""
    case = Case("units", levels=((3, 5),), points=3)
    a = make_inputs(case, np.float64, SEED + 46, exact=False)
    pixels = dict(a, locations=a["locations"] * np.array([5.0, 3.0]) - 0.5)
    out, grads = run_core(backend, a, case.params())
    out_px, grads_px = run_core(backend, pixels, MSDeformAttnParams(case.levels, (0,), normalized=False))
    np.testing.assert_allclose(out_px, out, atol=1e-12)
    np.testing.assert_allclose(grads_px[0], grads[0], atol=1e-12)
    np.testing.assert_allclose(grads_px[1] * np.array([5.0, 3.0]), grads[1], atol=1e-12)
    np.testing.assert_allclose(grads_px[2], grads[2], atol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30])
def test_non_finite_locations_read_nothing(backend, bad):
    case = Case("bad_locations", points=3)
    a = make_inputs(case, np.float64, SEED + 47)
    a["locations"][:, :, :, 1, 0, 0] = bad
    out, grads = run_core(backend, a, case.params())
    assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads)
    want = reference.ms_deform_attn_forward(a["value"], a["locations"], a["weights"], case.params())
    np.testing.assert_allclose(out, want, atol=1e-12)
    np.testing.assert_array_equal(grads[1][:, :, :, 1, 0], 0.0)  # nothing read, no gradient
    np.testing.assert_array_equal(grads[2][:, :, :, 1, 0], 0.0)


def test_non_contiguous_inputs(backend):
    case = Case("strided")
    a = make_inputs(case, np.float64, SEED + 48)
    shapes, starts = np.array(case.levels), case.params().starts
    value_view = backend.asarray(np.ascontiguousarray(a["value"].transpose(0, 2, 1, 3))).transpose(0, 2, 1, 3)
    weights_view = backend.asarray(np.repeat(a["weights"], 2, axis=4))[..., ::2]
    assert not value_view.flags.c_contiguous and not weights_view.flags.c_contiguous
    with backend.context():
        locations = backend.asarray(a["locations"])
        want = ms_deform_attn_forward(
            backend.asarray(a["value"]), shapes, starts, locations, backend.asarray(a["weights"])
        )
        got = ms_deform_attn_forward(value_view, shapes, starts, locations, weights_view)
    np.testing.assert_array_equal(backend.to_numpy(got), backend.to_numpy(want))


def test_cpu_is_deterministic_across_thread_counts(monkeypatch):
    numba = pytest.importorskip("numba")
    from cudcn.backends.cpu import threads

    monkeypatch.setattr(threads, "SERIAL_WORK", 0)  # the tiny shape on all of Numba's threads
    case = Case("determinism", batch=1, queries=40, heads=2, channels=19)
    a = make_inputs(case, np.float32, SEED + 49, exact=False)
    args, p = (a["value"], a["locations"], a["weights"]), case.params()
    results = []
    before = numba.get_num_threads()
    try:
        for n_threads in (1, before, before):
            numba.set_num_threads(n_threads)
            with cudcn.use_backend("cpu"):
                results.append((aggregate_forward(*args, p), *aggregate_backward(a["grad_out"], *args, p)))
    finally:
        numba.set_num_threads(before)
    for other in results[1:]:
        for got, first in zip(other, results[0], strict=True):
            np.testing.assert_array_equal(got, first)


@pytest.mark.torch
@pytest.mark.parametrize("seed", [SEED + 50, SEED + 51])
def test_matches_torch_grid_sample(seed):
    """Forward and the three gradients equal PyTorch's grid_sample composition (float64)."""
    torch = pytest.importorskip("torch", reason="torch not installed")
    from tests.ops.ms_deform_attn.torch_peer import grid_sample_ms_deform_attn

    case = Case("torch", queries=4, channels=3, points=3)
    a = make_inputs(case, np.float64, seed, exact=False)
    n, q, m, d = a["grad_out"].shape
    args = (a["value"], np.array(case.levels), case.params().starts, a["locations"], a["weights"])
    out = ms_deform_attn_forward(*args)
    grads = ms_deform_attn_backward(a["grad_out"].reshape(n, q, m * d), *args)
    leaves = [torch.tensor(a[k], requires_grad=True) for k in ("value", "locations", "weights")]
    theirs = grid_sample_ms_deform_attn(leaves[0], case.levels, leaves[1], leaves[2])
    theirs.backward(torch.tensor(a["grad_out"].reshape(n, q, m * d)))
    np.testing.assert_allclose(out, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)
    for got, leaf in zip(grads, leaves, strict=True):
        np.testing.assert_allclose(got, leaf.grad.numpy(), rtol=1e-10, atol=1e-12)
