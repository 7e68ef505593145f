"""The Numba CPU backend of deform_conv2d against the float64 reference, called at array level.

Every output and gradient, float32 and float64, on the shared configuration table plus wide inputs
that make the backward kernel split channels and small column budgets that force batch chunks. Also:
non-finite offsets, and determinism (two runs, and one thread against all, are bit-identical).
Seeds are part of the test ids.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from cudcn import reference
from cudcn.backends import cpu, poisoning
from cudcn.backends.cpu import deform_conv2d as cpu_module
from cudcn.backends.cpu import threads
from cudcn.testing import assert_allclose_to_reference

from .cases import CASES, Case, make_inputs

NAMES = ("input", "offset", "weight", "bias", "mask")
SEED = 5100

TABLE = [
    *CASES,
    Case("batch_0", batch=0),
    # 128 channels in one run: the backward splits them into blocks summed in a fixed order.
    Case("wide_split", batch=1, in_channels=128, out_channels=5, height=5, width=6),
    Case(
        "wide_crossing",
        batch=1,
        in_channels=192,
        out_channels=6,
        groups=3,
        offset_groups=2,
        height=4,
        width=5,
        stride=(2, 1),
    ),
]
SEEDED = [pytest.param(c, SEED + i, id=f"{c.id}-seed{SEED + i}") for i, c in enumerate(TABLE)]


def run_cpu(case: Case, inputs: dict, grad_out: np.ndarray):
    """Forward and backward of the CPU backend, outputs NaN-poisoned before the kernels write them."""
    args = [inputs[n] for n in NAMES]
    with poisoning():
        out = cpu.deform_conv2d_forward(*args, case.params())
        grads = cpu.deform_conv2d_backward(grad_out, *args, case.params())
    return out, grads


def check_against_reference(case: Case, inputs: dict, grad_out: np.ndarray, dtype) -> None:
    x64 = {k: None if v is None else v.astype(np.float64) for k, v in inputs.items()}
    want = reference.deform_conv2d_forward(*(x64[n] for n in NAMES), case.params())
    want_grads = reference.deform_conv2d_backward(
        grad_out.astype(np.float64), *(x64[n] for n in NAMES), case.params()
    )
    # The size of the computation per output: the same sum over |terms| (bilinear weights >= 0).
    magnitude = {k: None if v is None or k == "offset" else np.abs(v) for k, v in x64.items()}
    magnitude["offset"] = x64["offset"]
    scale = reference.deform_conv2d_forward(*(magnitude[n] for n in NAMES), case.params())
    out, grads = run_cpu(case, inputs, grad_out)
    assert out.dtype == dtype and out.shape == want.shape
    assert_allclose_to_reference(out, want, dtype, scale=np.maximum(scale, 1e-30), name="output")
    for name, got, ref in zip(NAMES, grads, want_grads, strict=True):
        if ref is None:
            assert got is None, name
            continue
        assert got.dtype == dtype and got.shape == ref.shape, name
        assert_allclose_to_reference(got, ref, dtype, name=f"grad {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("case", "seed"), SEEDED)
def test_matches_reference(case, seed, dtype):
    inputs = make_inputs(case, dtype, seed)
    shape = (case.batch, case.out_channels, *case.out_size())
    grad_out = np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)
    check_against_reference(case, inputs, grad_out, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_batch_chunks(monkeypatch, dtype):
    """A column budget of about two batch items: the chunks together equal the reference."""
    case = Case("chunks", batch=5, in_channels=6, out_channels=4, groups=2, offset_groups=3)
    per_item = case.in_channels * 9 * np.prod(case.out_size()) * np.dtype(dtype).itemsize
    monkeypatch.setattr(cpu_module, "COLUMN_BYTES", int(2 * per_item))
    seed = SEED + 100
    inputs = make_inputs(case, dtype, seed)
    grad_out = np.random.default_rng(seed).standard_normal((5, 4, 6, 7)).astype(dtype)
    check_against_reference(case, inputs, grad_out, dtype)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e9, -1e30])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_non_finite_offsets(bad, dtype):
    """Such samples contribute 0 (and get zero gradients); everything stays finite."""
    case = Case("bad_offsets", offset_groups=2)
    inputs = make_inputs(case, dtype, SEED + 200)
    inputs["offset"][:, :, 1:3, 2:4] = bad  # every tap of outputs (1..2, 2..3)
    inputs["offset"][1, 7, 4, 5] = bad  # one dx
    grad_out = np.random.default_rng(SEED + 201).standard_normal((2, 6, 6, 7)).astype(dtype)
    out, grads = run_cpu(case, inputs, grad_out)
    assert np.isfinite(out).all()
    assert all(np.isfinite(g).all() for g in grads)
    np.testing.assert_array_equal(
        out[:, :, 1:3, 2:4], np.broadcast_to(inputs["bias"][None, :, None, None], (2, 6, 2, 2))
    )
    np.testing.assert_array_equal(grads[1][:, :, 1:3, 2:4], 0.0)
    np.testing.assert_array_equal(grads[4][:, :, 1:3, 2:4], 0.0)
    check_against_reference(case, inputs, grad_out, dtype)


def determinism_inputs(dtype):
    """Large enough for split GEMMs (144 positions, 576 columns), with crossing groups."""
    case = Case(
        "determinism",
        batch=3,
        in_channels=192,
        out_channels=6,
        groups=3,
        offset_groups=2,
        height=8,
        width=6,
    )
    inputs = make_inputs(case, dtype, SEED + 300)
    shape = (case.batch, case.out_channels, *case.out_size())
    grad_out = np.random.default_rng(SEED + 301).standard_normal(shape).astype(dtype)
    return case, inputs, grad_out


def assert_bit_identical(first, second) -> None:
    (out_a, grads_a), (out_b, grads_b) = first, second
    assert out_a.tobytes() == out_b.tobytes()
    for a, b in zip(grads_a, grads_b, strict=True):
        assert (a is None and b is None) or a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_two_runs_are_bit_identical(dtype):
    case, inputs, grad_out = determinism_inputs(dtype)
    assert_bit_identical(run_cpu(case, inputs, grad_out), run_cpu(case, inputs, grad_out))


def test_thread_count_does_not_change_bits(monkeypatch):
    """Writes are partitioned by a fixed task split, not by thread: kernels forced onto all of Numba's
    threads give the same bits as one thread."""
    monkeypatch.setattr(threads, "SERIAL_WORK", 0)
    case, inputs, grad_out = determinism_inputs(np.float32)
    everyone = run_cpu(case, inputs, grad_out)
    count = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        alone = run_cpu(case, inputs, grad_out)
    finally:
        numba.set_num_threads(count)
    assert_bit_identical(everyone, alone)
