"""One IEEE rule for non-finite data on every host backend (issue 22, item 6): the CPU and emulated
backends put NaN and inf exactly where the float64 reference does (0 * inf = NaN, inf - inf = NaN),
for masks, inputs and output gradients, forward and backward, in deform_conv2d, roi_align,
deform_roi_pool, deform_psroi_pool and ms_deform_attn. Finite elements agree to a tolerance.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pytest

import cudcn
from cudcn import reference
from cudcn.ops import (
    deform_conv2d_backward,
    deform_conv2d_forward,
    deform_psroi_pool_backward,
    deform_psroi_pool_forward,
    deform_roi_pool_backward,
    deform_roi_pool_forward,
    ms_deform_attn_backward,
    ms_deform_attn_forward,
    roi_align_backward,
    roi_align_forward,
)
from cudcn.ops.deform_conv2d import DeformConv2dParams
from cudcn.ops.deform_psroi_pool import DeformPSRoIPoolParams
from cudcn.ops.deform_roi_pool import DeformRoIPoolParams
from cudcn.ops.ms_deform_attn import MSDeformAttnParams

BACKENDS = ("cpu", "emulated")


def kinds(a: np.ndarray) -> np.ndarray:
    """0 finite, 1 NaN, +-2 +-inf: the classes that must match exactly."""
    a = np.asarray(a, np.float64)
    return np.where(np.isnan(a), 1, np.where(np.isinf(a), 2 * np.sign(a), 0))


def assert_same(got: Sequence[np.ndarray | None], want: Sequence[np.ndarray | None]) -> None:
    """Every array of ``got`` has NaN/inf exactly where ``want`` has them, finite values close."""
    assert len(got) == len(want)
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        if w is None:
            assert g is None
            continue
        assert g is not None
        bad = np.argwhere(kinds(g) != kinds(w))
        assert bad.size == 0, f"result {index}: NaN/inf differ at {bad[:5].tolist()}"
        finite = np.isfinite(w)
        np.testing.assert_allclose(np.asarray(g)[finite], np.asarray(w)[finite], rtol=1e-9, atol=1e-9)


def run(backend: str, fn: Callable[[], tuple]) -> tuple:
    with cudcn.use_backend(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn()


def quiet(fn: Callable[[], tuple]) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn()


def conv_case(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2, 5, 5))
    off = rng.standard_normal((1, 18, 5, 5))
    off[0, 0, 0, 0] = -10.0  # tap 0 at output (0, 0) leaves the image
    off[0, 2, 2, 2] = 0.0  # tap 1 at (2, 2): an integer point, zero weights on inside neighbours
    off[0, 3, 2, 2] = 0.0
    return {
        "x": x,
        "off": off,
        "w": rng.standard_normal((3, 2, 3, 3)),
        "b": rng.standard_normal(3),
        "m": rng.random((1, 9, 5, 5)),
        "go": rng.standard_normal((1, 3, 5, 5)),
    }


def poison(a: np.ndarray, where: tuple, value: float) -> np.ndarray:
    a = a.copy()
    a[where] = value
    return a


CONV_POISONS = {
    "mask inf, tap outside": ("m", (0, 0, 0, 0), np.inf),
    "mask -inf, tap inside": ("m", (0, 4, 1, 1), -np.inf),
    "mask inf, integer point": ("m", (0, 1, 2, 2), np.inf),
    "mask nan": ("m", (0, 3, 3, 3), np.nan),
    "input inf": ("x", (0, 1, 2, 2), np.inf),
    "input nan": ("x", (0, 0, 4, 4), np.nan),
    "input inf at integer point": ("x", (0, 0, 1, 3), np.inf),
    "grad_out inf": ("go", (0, 1, 0, 0), np.inf),
    "grad_out -inf inside": ("go", (0, 2, 2, 2), -np.inf),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV_POISONS)
def test_deform_conv2d_nonfinite_as_reference(backend: str, case: str) -> None:
    a = conv_case(7)
    name, where, value = CONV_POISONS[case]
    a[name] = poison(a[name], where, value)
    args = (a["x"], a["off"], a["w"], a["b"])
    p = DeformConv2dParams.check(*args, 1, 1, 1, a["m"])
    want_out = quiet(lambda: (reference.deform_conv2d_forward(*args, a["m"], p),))
    want_grads = quiet(lambda: reference.deform_conv2d_backward(a["go"], *args, a["m"], p))
    assert_same(run(backend, lambda: (deform_conv2d_forward(*args, 1, 1, 1, a["m"]),)), want_out)
    assert_same(run(backend, lambda: deform_conv2d_backward(a["go"], *args, 1, 1, 1, a["m"])), want_grads)


def roi_case(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    rois = np.array([[0, 2.0, 2.0, 4.0, 4.0], [0, 0.5, 0.5, 3.0, 2.5], [0, 1.0, 0.0, 4.5, 3.5]])
    return {
        "x": rng.standard_normal((1, 3, 4, 4)),
        "rois": rois,
        "off": 0.3 * rng.standard_normal((3, 2, 2, 2)),
        "go": rng.standard_normal((3, 3, 2, 2)),
    }


ROI_POISONS = {
    "input inf at the snapped corner": ("x", (0, 0, 3, 3), np.inf),
    "input -inf inside": ("x", (0, 1, 1, 2), -np.inf),
    "input nan": ("x", (0, 2, 0, 0), np.nan),
    "grad_out inf": ("go", (0, 0, 1, 1), np.inf),
    "grad_out -inf": ("go", (1, 2, 0, 1), -np.inf),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ROI_POISONS)
@pytest.mark.parametrize("ratio", [1, 2, 0])
def test_roi_align_nonfinite_as_reference(backend: str, case: str, ratio: int) -> None:
    a = roi_case(3)
    name, where, value = ROI_POISONS[case]
    a[name] = poison(a[name], where, value)
    p = DeformRoIPoolParams.check(a["x"], a["rois"], None, 2, 1.0, ratio, 0.0, False)
    want_out = quiet(lambda: (reference.deform_roi_pool_forward(a["x"], a["rois"], None, p),))
    want_grad = quiet(lambda: reference.deform_roi_pool_backward(a["go"], a["x"], a["rois"], None, p)[:1])
    got_out = run(backend, lambda: (roi_align_forward(a["x"], a["rois"], 2, 1.0, ratio, False),))
    assert_same(got_out, want_out)
    got_grad = run(backend, lambda: roi_align_backward(a["go"], a["x"], a["rois"], 2, 1.0, ratio, False))
    assert_same(got_grad, want_grad)


def test_roi_align_one_inf_pixel_issue_example() -> None:
    """The issue's probe: one inf pixel; bins whose samples give it weight 0 are NaN, not inf."""
    x = np.ones((1, 1, 4, 4))
    x[0, 0, 3, 3] = np.inf
    rois = np.array([[0, 2.0, 2.0, 4.0, 4.0]])
    p = DeformRoIPoolParams.check(x, rois, None, 2, 1.0, 1, 0.0, False)
    want = quiet(lambda: reference.deform_roi_pool_forward(x, rois, None, p))
    assert np.isnan(want).sum() == 3
    for backend in BACKENDS:
        assert_same(run(backend, lambda: (roi_align_forward(x, rois, 2, 1.0, 1, False),)), (want,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ROI_POISONS)
def test_deform_roi_pool_nonfinite_as_reference(backend: str, case: str) -> None:
    a = roi_case(5)
    name, where, value = ROI_POISONS[case]
    a[name] = poison(a[name], where, value)
    args = (a["x"], a["rois"], a["off"])
    p = DeformRoIPoolParams.check(*args, 2, 1.0, 2, 0.1)
    want_out = quiet(lambda: (reference.deform_roi_pool_forward(*args, p),))
    want_grads = quiet(lambda: reference.deform_roi_pool_backward(a["go"], *args, p))
    assert_same(run(backend, lambda: (deform_roi_pool_forward(*args, 2, 1.0, 2, 0.1),)), want_out)
    assert_same(run(backend, lambda: deform_roi_pool_backward(a["go"], *args, 2, 1.0, 2, 0.1)), want_grads)


PS_POISONS = {
    "input inf": ("x", (0, 1, 3, 3), np.inf),
    "input -inf": ("x", (0, 5, 1, 1), -np.inf),
    "input nan": ("x", (0, 2, 0, 2), np.nan),
    "grad_out inf": ("go", (0, 1, 1, 1), np.inf),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", PS_POISONS)
@pytest.mark.parametrize("per_part", [2, 5])
def test_deform_psroi_pool_nonfinite_as_reference(backend: str, case: str, per_part: int) -> None:
    rng = np.random.default_rng(11)
    a = {
        "x": rng.standard_normal((1, 8, 4, 4)),
        "rois": np.array([[0, 0.0, 0.0, 3.0, 3.0], [0, 1.0, 2.0, 3.0, 3.0]]),
        "trans": 0.5 * rng.standard_normal((2, 2, 2, 2)),
        "go": rng.standard_normal((2, 2, 2, 2)),
    }
    name, where, value = PS_POISONS[case]
    a[name] = poison(a[name], where, value)
    kw = {"spatial_scale": 1.0, "output_dim": 2, "group_size": 2, "pooled_size": 2}
    kw |= {"sample_per_part": per_part, "trans_std": 0.1}
    args = (a["x"], a["rois"], a["trans"])
    p = DeformPSRoIPoolParams.check(*args, 1.0, 2, 2, 2, None, per_part, 0.1)
    want_out = quiet(lambda: (reference.deform_psroi_pool_forward(*args, p),))
    want_grads = quiet(lambda: reference.deform_psroi_pool_backward(a["go"], *args, p))
    assert_same(run(backend, lambda: (deform_psroi_pool_forward(*args, **kw),)), want_out)
    assert_same(run(backend, lambda: deform_psroi_pool_backward(a["go"], *args, **kw)), want_grads)


def msda_case(seed: int) -> dict:
    """Levels 4 x 8 and 2 x 2 (locations on pixel centres are exact), 3 queries, 2 heads, 2 points:
    query 0 head 0 point 0 of level 0 on the centre of pixel (1, 2) (its right and lower neighbours
    have weight 0), point 1 outside the level."""
    rng = np.random.default_rng(seed)
    loc = rng.uniform(0.05, 0.95, (1, 3, 2, 2, 2, 2))
    loc[0, 0, 0, 0, 0] = [(2 + 0.5) / 8, (1 + 0.5) / 4]
    loc[0, 0, 0, 0, 1] = [1.5, 0.5]
    return {
        "v": rng.standard_normal((1, 36, 2, 3)),
        "loc": loc,
        "w": rng.standard_normal((1, 3, 2, 2, 2)),
        "go": rng.standard_normal((1, 3, 6)),
    }


MSDA_POISONS = {
    "value inf at a zero-weight neighbour": ("v", (0, 1 * 8 + 3, 0, 1), np.inf),
    "value -inf at the sampled pixel": ("v", (0, 1 * 8 + 2, 0, 0), -np.inf),
    "value nan": ("v", (0, 33, 1, 2), np.nan),
    "weight inf, point outside": ("w", (0, 0, 0, 0, 1), np.inf),
    "weight -inf inside": ("w", (0, 1, 1, 1, 0), -np.inf),
    "weight nan": ("w", (0, 2, 0, 0, 1), np.nan),
    "grad_out inf": ("go", (0, 0, 1), np.inf),
    "grad_out -inf": ("go", (0, 2, 4), -np.inf),
    "location nan": ("loc", (0, 1, 1, 0, 0, 0), np.nan),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", MSDA_POISONS)
def test_ms_deform_attn_nonfinite_as_reference(backend: str, case: str) -> None:
    a = msda_case(13)
    name, where, value = MSDA_POISONS[case]
    a[name] = poison(a[name], where, value)
    args = (a["v"], [[4, 8], [2, 2]], [0, 32], a["loc"], a["w"])
    p = MSDeformAttnParams.check(*args)
    go = a["go"].reshape(1, 3, 2, 3)
    want_out = quiet(
        lambda: (reference.ms_deform_attn_forward(a["v"], a["loc"], a["w"], p).reshape(1, 3, 6),)
    )
    want_grads = quiet(lambda: reference.ms_deform_attn_backward(go, a["v"], a["loc"], a["w"], p))
    assert_same(run(backend, lambda: (ms_deform_attn_forward(*args),)), want_out)
    assert_same(run(backend, lambda: ms_deform_attn_backward(a["go"], *args)), want_grads)
