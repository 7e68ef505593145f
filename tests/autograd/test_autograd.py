"""The tape autograd: every basic op's gradient by gradcheck, broadcasting, fan-out, graph lifetime,
grad mode, dtypes and the plain-array path of ``Function.apply``."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import scipy.special

import cudcn.autograd as ag
from cudcn.autograd import Function, Tensor, enable_grad, is_grad_enabled, no_grad
from cudcn.autograd.math import Add, Mul
from cudcn.testing import gradcheck

SEED = 1234


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


def positive(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.uniform(0.5, 2.0, shape)


def away_from_zero(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Values with |x| >= 0.2, so kinks at 0 (relu) are far from the finite-difference step."""
    return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def distinct(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Values pairwise at least 0.1 apart, so max has a unique, stable argmax."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.1 + rng.uniform(0, 0.01, n)).reshape(shape)


# (id, fn, input makers): every fn takes Tensors and returns a Tensor.
CASES = [
    ("add", lambda a, b: a + b, [(randn, 2, 3), (randn, 2, 3)]),
    ("add_bcast", lambda a, b: a + b, [(randn, 3, 1, 4), (randn, 2, 4)]),
    ("radd_scalar", lambda a: 1.5 + a, [(randn, 3)]),
    ("sub_bcast", lambda a, b: a - b, [(randn, 4), (randn, 2, 3, 4)]),
    ("rsub_scalar", lambda a: 1.0 - a, [(randn, 2, 2)]),
    ("mul_bcast", lambda a, b: a * b, [(randn, 2, 1), (randn, 1, 3)]),
    ("mul_scalar", lambda a: a * 2.5, [(randn, 3)]),
    ("div", lambda a, b: a / b, [(randn, 2, 3), (positive, 3)]),
    ("rdiv_scalar", lambda a: 2.0 / a, [(positive, 4)]),
    ("neg", lambda a: -a, [(randn, 2, 3)]),
    ("pow2", lambda a: a**2, [(randn, 3)]),
    ("pow_frac", lambda a: a**1.5, [(positive, 3)]),
    ("pow_neg", lambda a: a**-2, [(positive, 3)]),
    ("matmul_2d", lambda a, b: a @ b, [(randn, 2, 3), (randn, 3, 4)]),
    ("matmul_batched", lambda a, b: a @ b, [(randn, 2, 3, 4), (randn, 4, 2)]),
    ("matmul_bcast_batch", lambda a, b: a @ b, [(randn, 2, 1, 2, 3), (randn, 3, 3, 2)]),
    ("matmul_vec_mat", lambda a, b: a @ b, [(randn, 3), (randn, 2, 3, 4)]),
    ("matmul_mat_vec", lambda a, b: a @ b, [(randn, 2, 2, 3), (randn, 3)]),
    ("matmul_vec_vec", lambda a, b: a @ b, [(randn, 4), (randn, 4)]),
    ("sum_all", lambda a: a.sum(), [(randn, 2, 3)]),
    ("sum_axis", lambda a: a.sum(axis=1), [(randn, 2, 3, 2)]),
    ("sum_axes_keep", lambda a: a.sum(axis=(0, -1), keepdims=True), [(randn, 2, 3, 2)]),
    ("mean_all", lambda a: a.mean(), [(randn, 2, 3)]),
    ("mean_axis", lambda a: a.mean(axis=-1, keepdims=True), [(randn, 2, 3)]),
    ("max_all", lambda a: a.max(), [(distinct, 2, 3)]),
    ("max_axis", lambda a: a.max(axis=0), [(distinct, 3, 2)]),
    ("max_axes_keep", lambda a: a.max(axis=(1, 2), keepdims=True), [(distinct, 2, 2, 3)]),
    ("reshape", lambda a: a.reshape(3, -1) * a.reshape((3, 2)), [(randn, 2, 3)]),
    ("transpose", lambda a: a.transpose(2, 0, 1), [(randn, 2, 3, 4)]),
    ("transpose_T", lambda a: a.T @ a, [(randn, 3, 2)]),
    ("flatten", lambda a: a.flatten(1), [(randn, 2, 2, 3)]),
    ("getitem_basic", lambda a: a[1:, ..., None, ::2], [(randn, 3, 4)]),
    ("getitem_int", lambda a: a[1, -1], [(randn, 3, 4)]),
    ("getitem_repeat", lambda a: a[np.array([0, 2, 0, 0])], [(randn, 3, 2)]),
    ("getitem_mixed", lambda a: a[[1, 1], :, [0, 2]], [(randn, 2, 2, 3)]),
    ("getitem_mask", lambda a: a[np.array([True, False, True])], [(randn, 3, 2)]),
    ("exp", lambda a: a.exp(), [(randn, 3)]),
    ("log", lambda a: a.log(), [(positive, 3)]),
    ("relu", lambda a: a.relu(), [(away_from_zero, 2, 3)]),
    ("sigmoid", lambda a: a.sigmoid(), [(randn, 2, 3)]),
    ("tanh", lambda a: a.tanh(), [(randn, 2, 3)]),
    (
        "module_funcs",
        lambda a, b: ag.tanh(ag.matmul(a, b)).sum(axis=0),
        [(randn, 2, 3), (randn, 3)],
    ),
    (
        "composite",
        lambda a, b: ((a * b).sigmoid() - a / (1 + b * b)).mean(),
        [(randn, 3), (randn, 3)],
    ),
]


@pytest.mark.parametrize(("name", "fn", "makers"), CASES, ids=[f"{c[0]}-seed{SEED}" for c in CASES])
def test_gradcheck_op(name, fn, makers):
    rng = np.random.default_rng(SEED)
    inputs = [maker(rng, *shape) for maker, *shape in makers]
    assert gradcheck(fn, inputs, seed=SEED)


def test_broadcast_gradient_is_summed_to_input_shape():
    a = Tensor(np.ones((3, 1)), requires_grad=True)
    b = Tensor(np.arange(4.0), requires_grad=True)
    (a * b).sum().backward()
    np.testing.assert_array_equal(a.grad, np.full((3, 1), 6.0))
    np.testing.assert_array_equal(b.grad, np.full(4, 3.0))


def test_max_ties_share_gradient():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])


def test_getitem_repeated_indices_accumulate():
    x = Tensor(np.arange(3.0), requires_grad=True)
    x[np.array([2, 0, 2, 2])].sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 0.0, 3.0])


def test_getitem_tensor_index():
    x = Tensor(np.arange(4.0), requires_grad=True)
    x[Tensor(np.array([3, 3]))].sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0, 2.0])


def test_sigmoid_extremes_are_finite():
    x = np.array([-800.0, -40.0, 0.0, 40.0, 800.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = ag.sigmoid(x)
    np.testing.assert_allclose(y, scipy.special.expit(x), rtol=1e-12)
    assert y[1] > 0  # relative accuracy kept far out in the negative tail


def test_fan_out():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    (x * x + x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)


def test_shared_subexpression():
    x = Tensor(np.array([0.5, 2.0]), requires_grad=True)
    h = x.exp()
    (h * h + h.log()).sum().backward()  # exp(2x) + x
    np.testing.assert_allclose(x.grad, 2 * np.exp(2 * x.data) + 1)


def test_tensor_reused_across_two_graphs():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    a = (x * 2.0).sum()
    b = (x * x).sum()
    a.backward()
    b.backward()
    np.testing.assert_allclose(x.grad, 2.0 + 2 * x.data)


def test_grad_accumulates_across_backward_calls():
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    (x * 3.0).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [6.0, 6.0, 6.0])
    x.grad = None
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 3.0, 3.0])


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    assert is_grad_enabled()
    with no_grad():
        assert not is_grad_enabled()
        y = x * 2.0
        with enable_grad():
            z = x * 2.0
    assert is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad and z.grad_fn is not None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_decorator():
    @no_grad()
    def double(t):
        return t * 2.0

    y = double(Tensor(np.ones(2), requires_grad=True))
    assert not y.requires_grad
    assert is_grad_enabled()


def test_graph_freed_after_backward():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="freed graph"):
        y.backward()


def test_freed_graph_releases_saved_arrays():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x.exp()  # Exp saves its output
    saved = weakref.ref(h.grad_fn.saved[0])
    y = h.sum()
    del h
    y.backward()
    gc.collect()
    assert saved() is None


def test_retain_graph_allows_second_backward():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data)


def test_long_chain_has_no_recursion_limit():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(2, 1.0001**10_000), rtol=1e-9)


def test_backward_grad_argument():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x * 3.0
    with pytest.raises(ValueError, match="one-element"):
        y.backward()
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        y.backward(np.ones(3))
    g = np.array([1.0, -1.0])
    y.backward(g)
    g[:] = 100.0  # the leaf's grad must not alias the caller's array
    np.testing.assert_array_equal(x.grad, [3.0, -3.0])


def test_leaf_grads_do_not_alias():
    a = Tensor(np.ones(2), requires_grad=True)
    b = Tensor(np.ones(2), requires_grad=True)
    (a + b).backward(np.array([1.0, 2.0]))
    a.grad *= 10  # in-place update of one gradient leaves the other alone
    np.testing.assert_array_equal(b.grad, [1.0, 2.0])


def test_requires_grad_needs_float():
    with pytest.raises(TypeError, match="int64"):
        Tensor(np.arange(3), requires_grad=True)


def test_plain_arrays_in_plain_array_out():
    a, b = np.arange(3.0), np.ones(3)
    out = Mul.apply(a, b)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, a)
    assert type(ag.exp(a)) is np.ndarray
    assert type(Add.apply(Tensor(a), b)) is Tensor  # a Tensor among the inputs gives a Tensor


class ScaleOptional(Function):
    """x * w, plus bias when given: a Function with an optional (None) input."""

    def forward(self, x, w, bias, *, shift=0.0):
        self.save_for_backward(x, w)
        out = x * w + shift
        return out if bias is None else out + bias

    def backward(self, grad_out):
        x, w = self.saved
        need_x, need_w, need_b = self.needs_input_grad
        return (
            grad_out * w if need_x else None,
            grad_out * x if need_w else None,
            grad_out if need_b else None,
        )


def test_function_with_none_input_and_needs_input_grad():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    w = np.array([3.0, 4.0])  # a constant
    y = ScaleOptional.apply(x, w, None, shift=1.0)
    np.testing.assert_array_equal(y.data, [4.0, 9.0])
    assert y.grad_fn.needs_input_grad == (True, False, False)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, w)
    assert type(ScaleOptional.apply(x.data, w, None)) is np.ndarray


class WrongCount(Function):
    def forward(self, x):
        return x * 1.0

    def backward(self, grad_out):
        return grad_out, grad_out


class WrongShape(Function):
    def forward(self, x):
        return x.sum()

    def backward(self, grad_out):
        return (grad_out,)


@pytest.mark.parametrize(("fn", "match"), [(WrongCount, "2 gradients for 1"), (WrongShape, "shape")])
def test_bad_backward_is_reported(fn, match):
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=match):
        fn.apply(x).sum().backward()


def test_python_scalars_keep_float32():
    x = Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    y = ((2.0 * x - 1.0) / 3.0 + x**2 * 0.5 + (1.0 / x)).sum()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, 2.0 / 3.0 + x.data - 1.0 / x.data**2, rtol=1e-6)


def test_gradient_dtype_follows_tensor_with_float64_constant():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    y = x * np.full(3, 2.0)  # float64 constant promotes the result
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_tensor_basics():
    data = np.arange(6.0).reshape(2, 3)
    t = Tensor(data, requires_grad=True)
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and t.dtype == np.float64
    assert t.data is data and t.is_leaf and t.grad is None
    host = t.numpy()
    host[0, 0] = 99.0
    assert data[0, 0] == 0.0
    d = t.detach()
    assert d.data is data and not d.requires_grad
    assert t[1, 2].item() == 5.0
    assert "requires_grad=True" in repr(t)
    assert "grad_fn=<Mul>" in repr(t * 2.0)
    assert np.ndim(Tensor(3.0).data) == 0
    with pytest.raises(TypeError, match="Tensor"):
        Tensor(t)


def test_array_on_the_left_defers_to_tensor():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = np.array([3.0, 4.0]) * x
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])


def test_export_trace_records_without_grad_and_stamps_module_paths():
    """In export trace mode every call with a Tensor input is a tape node (inputs by identity,
    keyword parameters, the innermost module's path), even under no_grad with nothing requiring
    grad; outside it nothing is recorded, and the tape still works as before."""
    from cudcn import nn
    from cudcn.autograd.function import Trace

    net = nn.Sequential(nn.Linear(3, 2), nn.Sequential(nn.ReLU()))
    names = {id(m): n for n, m in net.named_modules()}
    x = Tensor(np.ones((4, 3), np.float32))
    with no_grad(), Trace(names) as trace:
        out = net(x).reshape(8)
    assert not out.requires_grad
    reshape = out.grad_fn
    relu = reshape._trace_inputs[0].grad_fn
    linear = relu._trace_inputs[0].grad_fn
    assert trace.recorded(reshape) and reshape._trace_params == {"shape": (8,)}
    assert reshape._trace_module == ("", "")  # called outside any module
    assert relu._trace_module == ("1.0", "ReLU")
    assert linear._trace_module == ("0", "Linear")
    assert linear._trace_inputs[0] is x and linear._trace_inputs[1] is net[0].weight
    assert linear._seq < relu._seq < reshape._seq
    with no_grad():
        assert net(x).grad_fn is None  # no trace: nothing recorded
    loss = net(x).sum()
    loss.backward()
    assert net[0].weight.grad.shape == (2, 3)
