"""layer_norm and gelu (the pieces of InternImage's DCNv3 block): values against direct NumPy /
SciPy computations, float64 gradchecks, the 16-bit path and torch where installed."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special

import cudcn.functional as F
from cudcn.dtypes import bfloat16
from cudcn.testing import gradcheck

SEED = 20261223


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4)])
def test_layer_norm_value_and_gradcheck(shape):
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((2, *shape)) * 3 + 1
    w, b = rng.standard_normal(shape), rng.standard_normal(shape)
    axes = tuple(range(1, x.ndim))
    want = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(F.layer_norm(x, shape, w, b), want, rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda x, w, b: F.layer_norm(x, shape, w, b), [x, w, b], seed=SEED)
    assert gradcheck(lambda x: F.layer_norm(x, shape[-1]), [x], seed=SEED)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_value_and_gradcheck(approximate):
    x = np.linspace(-5, 5, 23)
    if approximate == "none":
        want = x * 0.5 * (1 + scipy.special.erf(x / np.sqrt(2)))
    else:
        want = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(F.gelu(x, approximate), want, rtol=1e-14, atol=1e-15)
    assert gradcheck(lambda t: F.gelu(t, approximate), [x + 0.01], seed=SEED)


def test_16_bit_inputs_round_once():
    x = np.random.default_rng(SEED).standard_normal((4, 8)).astype(bfloat16)
    ln = F.layer_norm(x, 8)
    ref = F.layer_norm(x.astype(np.float32), 8).astype(bfloat16)
    assert ln.dtype == bfloat16
    np.testing.assert_array_equal(ln.astype(np.float32), ref.astype(np.float32))
    g = F.gelu(x.astype(np.float16))
    assert g.dtype == np.float16
    np.testing.assert_array_equal(g, F.gelu(x.astype(np.float16).astype(np.float32)).astype(np.float16))


def test_validation():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"input must end with normalized_shape \(4,\)"):
        F.layer_norm(x, 4)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        F.layer_norm(x, 3, np.zeros(4))
    with pytest.raises(ValueError, match=r"eps must be > 0"):
        F.layer_norm(x, 3, eps=0.0)
    with pytest.raises(TypeError, match=r"normalized_shape must be an int or a non-empty tuple"):
        F.layer_norm(x, ())
    with pytest.raises(ValueError, match=r"approximate must be 'none' or 'tanh'"):
        F.gelu(x, "erf")


@pytest.mark.torch
def test_match_torch():
    torch = pytest.importorskip("torch", reason="torch not installed")
    rng = np.random.default_rng(SEED)
    x, w, b = rng.standard_normal((3, 4, 6)), rng.standard_normal(6), rng.standard_normal(6)
    t = torch.tensor(x)
    want = torch.nn.functional.layer_norm(t, (6,), torch.tensor(w), torch.tensor(b), eps=1e-6)
    np.testing.assert_allclose(F.layer_norm(x, 6, w, b, eps=1e-6), want.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(F.gelu(x), torch.nn.functional.gelu(t).numpy(), rtol=1e-14, atol=1e-15)
