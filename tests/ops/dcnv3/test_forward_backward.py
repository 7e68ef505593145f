"""dcnv3 on every backend, against the independent float64 reference (``cudcn.reference.dcnv3``),
for every dtype, with outputs poisoned; gradcheck through the functional; edge cases.

Seeds are part of each test id or printed, so a failure is replayed by running that id.
"""

from __future__ import annotations

import numpy as np
import pytest

import cudcn
from cudcn import reference
from cudcn.dtypes import FLOAT_DTYPES
from cudcn.functional import dcnv3
from cudcn.ops import dcnv3_backward, dcnv3_forward
from cudcn.testing import assert_allclose_to_reference, gradcheck, poison_outputs

from .cases import CASES, Case, make_inputs, scales

SEED = 20261219
NAMES = ("input", "offset", "mask")


def run_both(backend, case: Case, x, offset, mask, grad_out):
    """Forward and backward on ``backend`` with outputs poisoned; results on the host."""
    dev = [backend.asarray(a) for a in (x, offset, mask)]
    with backend.context(), poison_outputs():
        out = dcnv3_forward(*dev, *case.args())
        grads = dcnv3_backward(backend.asarray(grad_out), *dev, *case.args())
    return backend.to_numpy(out), [backend.to_numpy(g) for g in grads]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(backend, case, dtype):
    seed = SEED + CASES.index(case)
    x, offset, mask = make_inputs(case, dtype, seed)
    p = case.params()
    ref_out = reference.dcnv3_forward(x, offset, mask, p)
    grad_out = np.random.default_rng(seed + 1).standard_normal(ref_out.shape).astype(dtype)
    ref_grads = reference.dcnv3_backward(grad_out, x, offset, mask, p)
    out, grads = run_both(backend, case, x, offset, mask, grad_out)
    assert out.dtype == dtype and out.shape == ref_out.shape
    s_out, *s_grads = scales(x, offset, mask, grad_out, p)
    assert_allclose_to_reference(out, ref_out, dtype, scale=s_out, name=f"output (seed {seed})")
    for name, got, want, scale in zip(NAMES, grads, ref_grads, s_grads, strict=True):
        assert got.shape == want.shape and got.dtype == dtype, name
        assert_allclose_to_reference(got, want, dtype, scale=scale, name=f"grad {name} (seed {seed})")


def smooth_offsets(case: Case, seed: int) -> tuple[np.ndarray, ...]:
    """float64 inputs whose sampling positions have fractional parts in [0.1, 0.9] (the offsets'
    fractional parts, divided by offset_scale): away from the bilinear kinks."""
    x, offset, mask = make_inputs(case, np.float64, seed)
    offset = np.floor(offset) + np.random.default_rng(seed).uniform(0.1, 0.9, offset.shape)
    return x, offset / case.offset_scale, mask


# Tiny: every backend runs it, the emulated one launching the kernels twice per input element.
GRADCHECK_TINY = Case(
    "tiny",
    batch=1,
    height=3,
    width=3,
    depth=1,
    kernel=(1, 3),
    padding=(0, 1),
    offset_scale=0.7,
    remove_center=True,
)


def test_gradcheck(backend):
    case = GRADCHECK_TINY
    x, offset, mask = smooth_offsets(case, SEED + 40)

    def fn(x, offset, mask):
        return dcnv3(x, offset, mask, *case.args())

    with backend.context():
        assert gradcheck(fn, [backend.asarray(a) for a in (x, offset, mask)], seed=SEED)


def test_gradcheck_cpu_full_kernel():
    """A 3x3 kernel, strided and dilated, on the CPU backend (fast enough for more elements)."""
    case = Case("full", batch=1, height=5, width=4, stride=(2, 1), dilation=(1, 2), padding=(1, 2))
    x, offset, mask = smooth_offsets(case, SEED + 41)
    with cudcn.use_backend("cpu"):
        assert gradcheck(lambda x, o, m: dcnv3(x, o, m, *case.args()), [x, offset, mask], seed=SEED)


def test_gradcheck_fails_on_a_wrong_offset_gradient(monkeypatch):
    """The float64 check above can fail: a planted bug (the offset gradient without offset_scale)."""
    import cudcn.ops.dcnv3 as ops

    case = Case("planted", offset_scale=0.5, group=1, depth=1, batch=1, height=3, width=3)
    x, offset, mask = make_inputs(case, np.float64, SEED + 41)
    original = ops.run_backward

    def unscaled(*args):
        g_input, g_offset, g_mask = original(*args)
        return g_input, g_offset / args[-1].offset_scale, g_mask

    monkeypatch.setattr(ops, "run_backward", unscaled)
    with pytest.raises(cudcn.testing.GradcheckError, match="input 1"):
        gradcheck(lambda x, o, m: dcnv3(x, o, m, *case.args()), [x, offset, mask], seed=SEED)


def test_batch_zero_and_no_channels(backend):
    for case in (Case("batch_0", batch=0), Case("no_channels", depth=0)):
        x, offset, mask = make_inputs(case, np.float32, SEED)
        grad_out = np.zeros((case.batch, 5, 6, case.group * case.depth), np.float32)
        out, grads = run_both(backend, case, x, offset, mask, grad_out)
        assert out.shape == grad_out.shape
        for g, a in zip(grads, (x, offset, mask), strict=True):
            assert g.shape == a.shape
            np.testing.assert_array_equal(g, 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30])
def test_non_finite_offsets_read_nothing(backend, bad):
    case = Case("bad_offsets")
    x, offset, mask = make_inputs(case, np.float64, SEED + 42)
    offset[:, 1, 2, :] = bad  # every point of output pixel (1, 2), both coordinates
    out, grads = run_both(backend, case, x, offset, mask, np.ones((2, 5, 6, 6)))
    assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads)
    np.testing.assert_array_equal(out[:, 1, 2], 0.0)
    np.testing.assert_array_equal(grads[1][:, 1, 2], 0.0)


def test_non_contiguous_inputs(backend):
    case = Case("strided")
    x, offset, mask = make_inputs(case, np.float64, SEED + 43)
    x_view = backend.asarray(np.ascontiguousarray(x.transpose(0, 2, 1, 3))).transpose(0, 2, 1, 3)
    mask_view = backend.asarray(np.repeat(mask, 2, axis=3))[..., ::2]
    assert not x_view.flags.c_contiguous and not mask_view.flags.c_contiguous
    with backend.context():
        want = dcnv3_forward(*(backend.asarray(a) for a in (x, offset, mask)), *case.args())
        got = dcnv3_forward(x_view, backend.asarray(offset), mask_view, *case.args())
    np.testing.assert_array_equal(backend.to_numpy(got), backend.to_numpy(want))


def test_tensor_path_gives_tensor_and_array_level_grads():
    case = Case("tape")
    x, offset, mask = make_inputs(case, np.float64, SEED + 44)
    tensors = [cudcn.Tensor(a, requires_grad=True) for a in (x, offset, mask)]
    out = dcnv3(*tensors, *case.args())
    assert isinstance(out, cudcn.Tensor)
    grad = np.random.default_rng(3).standard_normal(out.shape)
    out.backward(grad)
    for t, g in zip(tensors, dcnv3_backward(grad, x, offset, mask, *case.args()), strict=True):
        np.testing.assert_array_equal(t.grad, g)
    plain = dcnv3(*(a.astype(np.float32) for a in (x, offset, mask)), *case.args())
    assert type(plain) is np.ndarray and plain.dtype == np.float32


def test_deterministic_for_any_thread_count_or_schedule(backend, monkeypatch):
    """Under cudcn.deterministic() the gradients are bitwise identical: on the CPU for 1 and all
    threads, on the emulated GPU for two block orders and worker counts, on a GPU run to run."""
    numba = pytest.importorskip("numba")
    case = Case("determinism", batch=1, height=6, width=6, group=2, depth=4)
    x, offset, mask = make_inputs(case, np.float32, SEED + 45)
    grad = np.random.default_rng(SEED).standard_normal((1, 6, 6, 8)).astype(np.float32)
    threads = numba.get_num_threads()
    runs = []
    try:
        for i, (workers, seed) in enumerate((("1", "1"), ("3", "2"))):
            monkeypatch.setenv("CUDCN_EMULATED_WORKERS", workers)
            monkeypatch.setenv("CUDCN_EMULATED_SEED", seed)
            numba.set_num_threads(1 if i == 0 else threads)
            with cudcn.deterministic():
                runs.append(run_both(backend, case, x, offset, mask, grad)[1])
    finally:
        numba.set_num_threads(threads)
    for got, want in zip(runs[1], runs[0], strict=True):
        assert got.tobytes() == want.tobytes()
