"""The differentiable basics (conv2d, linear, relu, pooling, batch_norm, dropout, log_softmax, losses):
values against independent NumPy/SciPy computations and float64 gradchecks on tiny shapes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import scipy.special

import cudcn.functional as F
from cudcn.autograd import Tensor
from cudcn.ops.conv import conv2d_backward, conv2d_forward
from cudcn.testing import gradcheck

SEED = 20240501


@pytest.fixture
def rng() -> np.random.Generator:
    print(f"seed={SEED}")
    return np.random.default_rng(SEED)


def distinct(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Values at least 0.1 apart, so max pooling has a unique argmax far from the FD step."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.1 + rng.uniform(0, 0.01, n) - 0.05 * n).reshape(shape)


# ----------------------------------------------------------------------------------- conv2d
def conv2d_scipy(x, w, b, stride, padding, dilation, groups):
    """Reference: per (image, output channel) ``scipy.signal.correlate`` with a dilated kernel."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    out_c, cg, kh, kw = w.shape
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dilated = np.zeros((out_c, cg, dh * (kh - 1) + 1, dw * (kw - 1) + 1))
    dilated[:, :, ::dh, ::dw] = w
    og = out_c // groups
    out = np.array(
        [
            [
                scipy.signal.correlate(
                    padded[n, o // og * cg : (o // og + 1) * cg], dilated[o], mode="valid"
                )[0, ::sh, ::sw]
                for o in range(out_c)
            ]
            for n in range(x.shape[0])
        ]
    )
    return out if b is None else out + b[None, :, None, None]


# (N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups)
CONV_CASES = [
    (2, 3, 7, 6, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 4, 9, 8, 6, (3, 2), (2, 1), (1, 0), (1, 2), 2),
    (3, 3, 5, 5, 3, (1, 1), (1, 1), (0, 0), (1, 1), 3),
    (1, 2, 6, 7, 4, (3, 3), (2, 3), (2, 1), (2, 1), 1),
    (2, 2, 4, 4, 2, (1, 1), (1, 1), (1, 1), (1, 1), 1),  # padding wider than the kernel needs
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv2d_matches_scipy(rng, case, dtype):
    n, c, h, w, o, kernel, stride, padding, dilation, groups = case
    x = rng.standard_normal((n, c, h, w))
    weight = rng.standard_normal((o, c // groups, *kernel))
    bias = rng.standard_normal(o)
    expected = conv2d_scipy(x, weight, bias, stride, padding, dilation, groups)
    out = F.conv2d(
        x.astype(dtype),
        weight.astype(dtype),
        bias.astype(dtype),
        stride,
        padding,
        dilation,
        groups,
    )
    assert out.dtype == dtype and out.shape == expected.shape
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("case", CONV_CASES[:4], ids=lambda c: "x".join(map(str, c[:5])))
def test_conv2d_gradcheck(rng, case):
    n, c, h, w, o, kernel, stride, padding, dilation, groups = case
    x = rng.standard_normal((min(n, 2), c, min(h, 6), min(w, 6)))
    weight = rng.standard_normal((o, c // groups, *kernel))
    bias = rng.standard_normal(o)
    fn = lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups)  # noqa: E731
    assert gradcheck(fn, [x, weight, bias], seed=SEED)


def test_conv2d_array_level_backward_matches_tape(rng):
    x = rng.standard_normal((3, 4, 6, 5))
    weight = rng.standard_normal((6, 2, 3, 3))
    g = rng.standard_normal((3, 6, 3, 5))
    tx, tw = Tensor(x, requires_grad=True), Tensor(weight, requires_grad=True)
    F.conv2d(tx, tw, None, (2, 1), 1, 1, 2).backward(g)
    g_input, g_weight, g_bias = conv2d_backward(g, x, weight, None, (2, 1), 1, 1, 2)
    assert g_bias is None
    np.testing.assert_allclose(g_input, tx.grad, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(g_weight, tw.grad, rtol=1e-13, atol=1e-13)
    assert np.abs(g_input).max() > 0


def test_conv2d_batches_larger_than_a_chunk(rng, monkeypatch):
    """Chunking over images (here one image per chunk) gives the same result as one chunk."""
    import cudcn.ops.conv as conv

    x, weight = rng.standard_normal((5, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3))
    g = rng.standard_normal((5, 4, 6, 6))
    whole = conv2d_forward(x, weight, padding=1), conv2d_backward(g, x, weight, padding=1)
    monkeypatch.setattr(conv, "CHUNK_BYTES", 1)
    parts = conv2d_forward(x, weight, padding=1), conv2d_backward(g, x, weight, padding=1)
    np.testing.assert_allclose(parts[0], whole[0], rtol=1e-13)
    for a, b in zip(parts[1][:2], whole[1][:2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_conv2d_matches_torch(rng):
    torch = pytest.importorskip("torch", reason="torch not installed")
    x = rng.standard_normal((2, 4, 9, 8))
    weight, bias = rng.standard_normal((6, 2, 3, 2)), rng.standard_normal(6)
    args = ((2, 1), (1, 0), (1, 2), 2)
    out = conv2d_forward(x, weight, bias, *args)
    g = rng.standard_normal(out.shape)
    grads = conv2d_backward(g, x, weight, bias, *args)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    expected = torch.nn.functional.conv2d(*tensors, *args)
    expected.backward(torch.tensor(g))
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    for mine, t in zip(grads, tensors, strict=True):
        np.testing.assert_allclose(mine, t.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"weight": np.ones((4, 3, 3, 3))}, ValueError, r"weight.shape\[1\] must be C_in / groups"),
        ({"bias": np.ones(5)}, ValueError, r"bias must have shape \(4,\)"),
        ({"padding": -1}, ValueError, "padding must be >= 0"),
        ({"stride": 0}, ValueError, "stride must be >= 1"),
        ({"weight": np.ones((4, 2, 9, 9))}, ValueError, "output size must be at least 1x1"),
        ({"weight": np.ones((4, 2, 3, 3), np.float32)}, TypeError, "weight has dtype float32"),
        ({"groups": 2, "weight": np.ones((3, 1, 3, 3))}, ValueError, "C_out"),
    ],
)
def test_conv2d_validation(kwargs, error, match):
    args = {"input": np.ones((1, 2, 5, 5)), "weight": np.ones((4, 2, 3, 3)), "bias": None}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        F.conv2d(**args)


# ----------------------------------------------------------------------------------- linear, relu
def test_linear_value_and_gradcheck(rng):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    np.testing.assert_allclose(F.linear(x, w, b), np.einsum("abi,oi->abo", x, w) + b, rtol=1e-13)
    assert gradcheck(F.linear, [x, w, b], seed=SEED)
    assert gradcheck(lambda x, w: F.linear(x, w), [x[0], w], seed=SEED)
    with pytest.raises(ValueError, match="in_features = 4"):
        F.linear(np.ones((2, 3)), w)


def test_relu_value_and_gradcheck(rng):
    x = rng.uniform(0.2, 1.5, (3, 4)) * rng.choice([-1.0, 1.0], (3, 4))
    np.testing.assert_array_equal(F.relu(x), np.where(x > 0, x, 0))
    assert gradcheck(F.relu, [x], seed=SEED)


# ----------------------------------------------------------------------------------- pooling
def pool_naive(x, kernel, stride, padding, reduce, fill):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    oh = (x.shape[2] + 2 * ph - kh) // sh + 1
    ow = (x.shape[3] + 2 * pw - kw) // sw + 1
    out = np.empty((*x.shape[:2], oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = reduce(padded[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw])
    return out


POOL_CASES = [((2, 2), None, (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 2), (1, 0))]


@pytest.mark.parametrize(("kernel", "stride", "padding"), POOL_CASES)
def test_max_pool2d(rng, kernel, stride, padding):
    x = distinct(rng, 2, 2, 5, 6)
    expected = pool_naive(x, kernel, stride or kernel, padding, lambda v: v.max((2, 3)), -np.inf)
    np.testing.assert_array_equal(F.max_pool2d(x, kernel, stride, padding), expected)
    assert gradcheck(lambda t: F.max_pool2d(t, kernel, stride, padding), [x], seed=SEED)


def test_max_pool2d_gradient_goes_to_first_maximum():
    x = Tensor(np.ones((1, 1, 2, 2)), requires_grad=True)
    F.max_pool2d(x, 2).backward(np.array([[[[3.0]]]]))
    np.testing.assert_array_equal(x.grad[0, 0], [[3.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize(("kernel", "stride", "padding"), POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d(rng, kernel, stride, padding, count_include_pad):
    x = rng.standard_normal((2, 2, 5, 6))
    total = pool_naive(x, kernel, stride or kernel, padding, lambda v: v.sum((2, 3)), 0.0)
    ones = np.ones((1, 1, 5, 6))
    count = pool_naive(ones, kernel, stride or kernel, padding, lambda v: v.sum((2, 3)), 0.0)
    divisor = kernel[0] * kernel[1] if count_include_pad else count
    out = F.avg_pool2d(x, kernel, stride, padding, count_include_pad)
    np.testing.assert_allclose(out, total / divisor, rtol=1e-13)
    fn = lambda t: F.avg_pool2d(t, kernel, stride, padding, count_include_pad)  # noqa: E731
    assert gradcheck(fn, [x], seed=SEED)


def test_pool_validation():
    with pytest.raises(ValueError, match="padding must be at most half"):
        F.max_pool2d(np.ones((1, 1, 4, 4)), 2, padding=2)
    with pytest.raises(ValueError, match="input must be 4-D"):
        F.avg_pool2d(np.ones((4, 4)), 2)


def test_adaptive_and_global_avg_pool2d(rng):
    x = rng.standard_normal((2, 3, 5, 7))
    out = F.adaptive_avg_pool2d(x, (3, 2))
    # rows [0, 2), [1, 4), [3, 5); columns [0, 4), [3, 7) (PyTorch's floor / ceil bins)
    np.testing.assert_allclose(out[:, :, 1, 0], x[:, :, 1:4, 0:4].mean((2, 3)), rtol=1e-13)
    np.testing.assert_allclose(out[:, :, 2, 1], x[:, :, 3:5, 3:7].mean((2, 3)), rtol=1e-13)
    assert gradcheck(lambda t: F.adaptive_avg_pool2d(t, (3, 2)), [x], seed=SEED)
    np.testing.assert_allclose(F.global_avg_pool2d(x), x.mean((2, 3)), rtol=1e-13)
    np.testing.assert_allclose(F.adaptive_avg_pool2d(x, 1)[:, :, 0, 0], x.mean((2, 3)), rtol=1e-13)
    assert gradcheck(F.global_avg_pool2d, [x], seed=SEED)


def test_pooling_matches_torch(rng):
    torch = pytest.importorskip("torch", reason="torch not installed")
    x = distinct(rng, 2, 3, 7, 6)
    t = torch.tensor(x)
    tf = torch.nn.functional
    pairs = [
        (F.max_pool2d(x, 3, 2, 1), tf.max_pool2d(t, 3, 2, 1)),
        (F.avg_pool2d(x, 3, 2, 1, False), tf.avg_pool2d(t, 3, 2, 1, count_include_pad=False)),
        (F.adaptive_avg_pool2d(x, (4, 5)), tf.adaptive_avg_pool2d(t, (4, 5))),
    ]
    for mine, theirs in pairs:
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------------- batch_norm
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 3, 2)])
def test_batch_norm_training_value_and_running_stats(rng, shape):
    x = rng.standard_normal(shape) * 2 + 1
    w, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    mean0, var0 = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
    running_mean, running_var = mean0.copy(), var0.copy()
    out = F.batch_norm(x, running_mean, running_var, w, b, training=True, momentum=0.3, eps=1e-3)
    axes = (0, *range(2, x.ndim))
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = x.mean(axes), x.var(axes)
    expected = (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + 1e-3)
    expected = expected * w.reshape(bshape) + b.reshape(bshape)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    count = x.size // shape[1]
    np.testing.assert_allclose(running_mean, 0.7 * mean0 + 0.3 * mean, rtol=1e-13)
    np.testing.assert_allclose(running_var, 0.7 * var0 + 0.3 * var * count / (count - 1), rtol=1e-13)


def test_batch_norm_eval_uses_running_stats(rng):
    x = rng.standard_normal((3, 2, 2, 2))
    mean, var = np.array([0.5, -1.0]), np.array([2.0, 0.5])
    out = F.batch_norm(x, mean.copy(), var.copy(), None, None, training=False, eps=1e-5)
    expected = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-13)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 3, 2)])
def test_batch_norm_gradcheck(rng, training, shape):
    x = rng.standard_normal(shape)
    w, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    var = rng.uniform(0.5, 2, shape[1])

    def fn(x, w, b):  # fresh running stats each call: gradcheck evaluates fn many times
        mean_copy = np.linspace(-1, 1, shape[1])
        return F.batch_norm(x, mean_copy, var.copy(), w, b, training=training, momentum=0.1)

    assert gradcheck(fn, [x, w, b], seed=SEED)


def test_batch_norm_validation():
    with pytest.raises(ValueError, match="training=False needs running_mean"):
        F.batch_norm(np.ones((2, 3)), None, None)
    with pytest.raises(ValueError, match="more than one value per channel"):
        F.batch_norm(np.ones((1, 3)), None, None, training=True)
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\)"):
        F.batch_norm(np.ones((2, 3)), np.zeros(3), np.ones(2))


# ----------------------------------------------------------------------------------- dropout
def test_dropout_mask_scale_and_modes(rng):
    x = rng.uniform(1, 2, (200, 50))
    out = F.dropout(x, p=0.3, training=True, rng=7)
    kept = out != 0
    assert 0.65 < kept.mean() < 0.75
    np.testing.assert_allclose(out[kept], x[kept] / 0.7, rtol=1e-13)
    np.testing.assert_array_equal(F.dropout(x, 0.3, rng=7), out)  # the seed fixes the mask
    assert F.dropout(x, 0.3, training=False) is x
    assert F.dropout(x, 0.0) is x
    np.testing.assert_array_equal(F.dropout(x, 1.0, rng=1), 0)
    with pytest.raises(ValueError, match="p must be a probability"):
        F.dropout(x, 1.5)


def test_dropout_gradcheck(rng):
    x = rng.standard_normal((4, 5))
    assert gradcheck(lambda t: F.dropout(t, 0.4, rng=3), [x], seed=SEED)


# ----------------------------------------------------------------------------------- softmax, losses
def test_log_softmax_value_stability_and_gradcheck(rng):
    x = rng.standard_normal((3, 4, 2))
    for axis in (0, 1, -1):
        expected = scipy.special.log_softmax(x, axis=axis)
        np.testing.assert_allclose(F.log_softmax(x, axis), expected, rtol=1e-13, atol=1e-14)
        assert gradcheck(lambda t, a=axis: F.log_softmax(t, a), [x], seed=SEED)
    big = np.array([[1000.0, 0.0, -1000.0]])
    np.testing.assert_allclose(F.log_softmax(big), [[0.0, -1000.0, -2000.0]])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(rng, reduction):
    logits, target = rng.standard_normal((5, 4)), np.array([0, 3, 1, 3, 2])
    losses = -scipy.special.log_softmax(logits, axis=1)[np.arange(5), target]
    expected = {"mean": losses.mean(), "sum": losses.sum(), "none": losses}[reduction]
    np.testing.assert_allclose(F.cross_entropy(logits, target, reduction), expected, rtol=1e-13)
    assert gradcheck(lambda t: F.cross_entropy(t, target, reduction), [logits], seed=SEED)


def test_cross_entropy_validation():
    logits = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"target labels must lie in \[0, 3\)"):
        F.cross_entropy(logits, np.array([0, 3]))
    with pytest.raises(TypeError, match="target must be an integer array"):
        F.cross_entropy(logits, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.cross_entropy(logits, np.array([0, 1]), reduction="avg")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss(rng, reduction):
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    sq = (x - y) ** 2
    expected = {"mean": sq.mean(), "sum": sq.sum(), "none": sq}[reduction]
    np.testing.assert_allclose(F.mse_loss(x, y, reduction), expected, rtol=1e-13)
    assert gradcheck(lambda a, b: F.mse_loss(a, b, reduction), [x, y], seed=SEED)


@pytest.mark.parametrize("beta", [1.0, 0.3, 0.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_smooth_l1_loss(rng, reduction, beta):
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    d = x - y
    # keep every |d| at least 0.01 from the kink at beta, where finite differences straddle it
    d = np.where(np.abs(np.abs(d) - beta) < 0.01, d + 0.05, d)
    d = np.where(np.abs(d) < 0.01, 0.05, d)  # and from 0 (the kink of L1 when beta = 0)
    x = y + d
    a = np.abs(d)
    values = np.where(a < beta, 0.5 * d**2 / max(beta, 1e-300), a - 0.5 * beta)
    expected = {"mean": values.mean(), "sum": values.sum(), "none": values}[reduction]
    np.testing.assert_allclose(F.smooth_l1_loss(x, y, reduction, beta), expected, rtol=1e-13)
    assert gradcheck(lambda a, b: F.smooth_l1_loss(a, b, reduction, beta), [x, y], seed=SEED)


def test_smooth_l1_loss_hand_values_and_errors():
    x = Tensor(np.array([0.5, -3.0, 1.0], np.float32), requires_grad=True)
    loss = F.smooth_l1_loss(x, np.zeros(3, np.float32), "sum")
    assert loss.dtype == np.float32 and float(loss.data) == 0.125 + 2.5 + 0.5
    loss.backward()
    np.testing.assert_array_equal(x.grad, [0.5, -1.0, 1.0])  # d / beta inside, sign(d) outside
    with pytest.raises(ValueError, match="beta must be a number >= 0"):
        F.smooth_l1_loss(x, np.zeros(3, np.float32), beta=-1.0)
    with pytest.raises(ValueError, match="target"):
        F.smooth_l1_loss(x, np.zeros(2, np.float32))
