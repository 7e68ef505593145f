"""ms_deform_attn's argument checks (each error names the argument) and its empty cases."""

from __future__ import annotations

import numpy as np
import pytest

from cudcn.functional import ms_deform_attn
from cudcn.ops import ms_deform_attn_backward, ms_deform_attn_forward

LEVELS = [[3, 4], [2, 2]]  # S = 16


def good(dtype=np.float32, n=2, lq=3, m=2, d=4, points=2) -> dict:
    rng = np.random.default_rng(0)
    return {
        "value": rng.standard_normal((n, 16, m, d)).astype(dtype),
        "spatial_shapes": np.array(LEVELS, np.int64),
        "level_start_index": np.array([0, 12], np.int64),
        "sampling_locations": rng.uniform(0, 1, (n, lq, m, 2, points, 2)).astype(dtype),
        "attention_weights": rng.uniform(0, 1, (n, lq, m, 2, points)).astype(dtype),
    }


def call(**changes):
    return ms_deform_attn_forward(**{**good(), **changes})


def test_good_arguments_pass():
    assert call().shape == (2, 3, 8)
    assert call(spatial_shapes=LEVELS, level_start_index=(0, 12)).shape == (2, 3, 8)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"value": np.zeros((2, 17, 2, 4), np.float32)}, ValueError, r"value must have S = Σ H_l·W_l = 16"),
        ({"level_start_index": np.array([0, 11])}, ValueError, r"level_start_index must be \[0, 12\]"),
        ({"level_start_index": np.array([0])}, ValueError, r"level_start_index must be \[0, 12\]"),
        ({"level_start_index": [0.0, 12.0]}, TypeError, r"level_start_index must be an integer"),
        ({"spatial_shapes": np.array(LEVELS, np.float32)}, TypeError, r"spatial_shapes must have an integer"),
        ({"spatial_shapes": [[3.0, 4], [2, 2]]}, TypeError, r"spatial_shapes must be an integer array"),
        ({"spatial_shapes": [[3, 4, 1], [2, 2, 1]]}, ValueError, r"spatial_shapes must be \(L, 2\)"),
        ({"spatial_shapes": [[3, 4], [2, 0]]}, ValueError, r"spatial_shapes must hold sizes >= 1"),
        ({"value": np.zeros((2, 16, 2), np.float32)}, ValueError, r"value must be 4-D \(N, S, M, D\)"),
        (
            {"sampling_locations": np.zeros((2, 3, 2, 2, 2), np.float32)},
            ValueError,
            r"sampling_locations must be 6-D",
        ),
        (
            {"sampling_locations": np.zeros((1, 3, 2, 2, 2, 2), np.float32)},
            ValueError,
            r"sampling_locations must have shape \(2, 3, 2, 2, 2, 2\)",
        ),
        (
            {"sampling_locations": np.zeros((2, 3, 3, 2, 2, 2), np.float32)},
            ValueError,
            r"sampling_locations must have shape",
        ),
        (
            {"sampling_locations": np.zeros((2, 3, 2, 1, 2, 2), np.float32)},
            ValueError,
            r"L from spatial_shapes",
        ),
        ({"sampling_locations": np.zeros((2, 3, 2, 2, 2, 3), np.float32)}, ValueError, r"\(x, y\) last"),
        (
            {"attention_weights": np.zeros((2, 3, 2, 2, 3), np.float32)},
            ValueError,
            r"attention_weights must have shape \(2, 3, 2, 2, 2\)",
        ),
        (
            {"attention_weights": np.zeros((2, 3, 2, 2), np.float32)},
            ValueError,
            r"attention_weights must have shape",
        ),
        (
            {"sampling_locations": np.zeros((2, 3, 2, 2, 2, 2))},
            TypeError,
            r"sampling_locations has dtype float64 but value",
        ),
        (
            {"attention_weights": np.zeros((2, 3, 2, 2, 2), np.float16)},
            TypeError,
            r"attention_weights has dtype float16",
        ),
        ({"value": np.zeros((2, 16, 2, 4), np.int32)}, TypeError, r"value must have dtype float16, bfloat16"),
        (
            {"attention_weights": [[0.5]]},
            TypeError,
            r"attention_weights must be a numpy.ndarray or cupy.ndarray",
        ),
    ],
)
def test_bad_arguments(changes, error, match):
    with pytest.raises(error, match=match):
        call(**changes)


def test_bad_grad_out_shape():
    with pytest.raises(ValueError, match=r"grad_out must have shape \(2, 3, 8\)"):
        ms_deform_attn_backward(np.zeros((2, 3, 2, 4), np.float32), **good())
    with pytest.raises(TypeError, match=r"grad_out has dtype float64 but value"):
        ms_deform_attn_backward(np.zeros((2, 3, 8)), **good())


@pytest.mark.parametrize(
    "sizes",
    [{"n": 0}, {"lq": 0}, {"points": 0}, {"d": 0}, {"n": 0, "lq": 0}],
    ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()),
)
def test_empty_cases(backend, sizes):
    """No batch, no query, no point or no channel: zeros of the right shapes, every gradient too."""
    a = {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in good(**sizes).items()}
    n, _, m, d = a["value"].shape
    lq = a["sampling_locations"].shape[1]
    with backend.context():
        out = ms_deform_attn_forward(**a)
        grads = ms_deform_attn_backward(backend.asarray(np.ones((n, lq, m * d), np.float32)), **a)
    assert out.shape == (n, lq, m * d) and out.dtype == np.float32
    names = ("value", "sampling_locations", "attention_weights")
    for name, g in zip(names, grads, strict=True):
        assert g.shape == a[name].shape and g.dtype == np.float32, name
    for result in (out, *grads):
        assert not backend.to_numpy(result).any()


def test_functional_takes_plain_arrays():
    out = ms_deform_attn(*good(np.float64).values())
    assert type(out) is np.ndarray and out.dtype == np.float64 and out.shape == (2, 3, 8)
