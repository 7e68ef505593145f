"""``cudcn.deterministic()`` on a real GPU (``benchmarks/gpu_check.sh`` runs these; elsewhere they
skip with the reason). The CUDA backend's scattered gradients (the deform_conv2d input gradient, the
RoI and PS-RoI input, offset and trans gradients, the ms_deform_attn value gradient) are bitwise
identical over 5 calls in the mode, within the summation-order bound of the default (atomic) result,
and NaN in ``grad_out`` reaches the same gradients in both modes. The schedule control (without the
mode the bits do vary) is the emulated backend's, in tests/precision/test_deterministic.py: a GPU's
schedule cannot be forced."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import cudcn
from cudcn.testing import summation_order_tolerance

from . import test_deterministic as host
from .test_deterministic import OPS, TERMS, _backward, _identical, _inputs

pytestmark = pytest.mark.gpu
RUNS = 5


class _OnGpu:
    """The CUDA backend's functions taking and returning host arrays, so that the host tests'
    ``_backward`` dispatch runs unchanged on the GPU."""

    def __getattr__(self, name: str) -> Any:
        import cupy

        from cudcn.backends import cuda

        function = getattr(cuda, name)

        def call(*args: Any, **kwargs: Any) -> tuple:
            moved = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
            return tuple(None if g is None else cupy.asnumpy(g) for g in function(*moved, **kwargs))

        return call


@pytest.fixture
def on_gpu(monkeypatch) -> None:
    monkeypatch.setattr(host, "emulated", _OnGpu())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", OPS)
def test_cuda_deterministic_mode_is_bitwise_identical(on_gpu, op, dtype):
    args = _inputs(op, dtype)
    with cudcn.deterministic():
        runs = [_backward(op, args) for _ in range(RUNS)]
    assert all(_identical(runs[0], run) for run in runs[1:]), f"{op}: {RUNS} GPU runs differ"
    atomic = _backward(op, args)
    for got, other in zip(runs[0], atomic, strict=True):
        allowed = summation_order_tolerance(dtype, np.abs(other).max() + 1.0, TERMS[op])
        np.testing.assert_array_less(np.abs(got.astype(np.float64) - other), allowed + 1e-300)


@pytest.mark.parametrize("op", OPS)
def test_cuda_nan_in_grad_out_reaches_the_same_gradients_in_both_modes(on_gpu, op):
    host.test_nan_in_grad_out_reaches_the_same_gradients_in_both_modes(op)  # on the GPU
