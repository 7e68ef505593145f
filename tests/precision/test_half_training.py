"""Training in float16 and bfloat16: the tape and layers in 16 bits, float32 master copies,
BatchNorm's float32 statistics, GradScaler, and a small deformable net whose loss falls like
float32's.

Two properties carry most tests. (1) "Computed in float32, rounded once": a 16-bit call must equal,
bit for bit, the float32 call on the exactly widened inputs, rounded to the 16-bit dtype. (2) The
controls: NumPy/ml_dtypes on their own (16-bit accumulation, 16-bit parameter updates) fail the same
checks, so the checks can fail.
"""

from __future__ import annotations

import sys
import types

import ml_dtypes
import numpy as np
import pytest

import cudcn
from cudcn import Tensor, check, functional, nn, optim
from cudcn.dtypes import check_library_dtype, eps

HALVES = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]
SEED = 20261201


@pytest.fixture
def rng(request):
    seed = SEED + sum(map(ord, request.node.name))
    print(f"seed {seed}")
    return np.random.default_rng(seed)


def same_bits(a, b) -> bool:
    """Equal dtype and equal values (compared in float32, exact for 16-bit values)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and np.array_equal(a.astype(np.float32), b.astype(np.float32))


# --------------------------------------------------------------------------- ops: float32, rounded once

OPS = {
    "matmul": lambda x, w: x @ w,
    "sum": lambda x, w: x.sum(axis=0),
    "mean": lambda x, w: x.mean(),
    "sigmoid": lambda x, w: x.sigmoid(),
    "linear": lambda x, w: functional.linear(x, w.T),
    "mse_loss": lambda x, w: functional.mse_loss(x, Tensor(x.data * 0.5)),
    "log_softmax": lambda x, w: functional.log_softmax(x, axis=1),
    "cross_entropy": lambda x, w: functional.cross_entropy(x, np.arange(len(x.data)) % 3),
    "smooth_l1_loss": lambda x, w: functional.smooth_l1_loss(x, Tensor(x.data * 0.25), beta=0.5),
    "getitem_repeated": lambda x, w: x[np.zeros(50, np.int64)],
}
CONV_OPS = {
    "conv2d": lambda x, w: functional.conv2d(x, w, padding=1),
    "avg_pool2d": lambda x, w: functional.avg_pool2d(x, 3, stride=1, padding=1),
    "max_pool2d": lambda x, w: functional.max_pool2d(x, 3, stride=1, padding=1),
    "adaptive_avg_pool2d": lambda x, w: functional.adaptive_avg_pool2d(x, 2),
    "global_avg_pool2d": lambda x, w: functional.global_avg_pool2d(x),
    "batch_norm": lambda x, w: functional.batch_norm(x, None, None, training=True),
}


def run(op, x, w, half):
    """op's output and the gradients of x and w for the upstream gradient ``linspace(-1, 1)``
    (rounded to ``half``, so the 16-bit and the float32 runs get the same values)."""
    xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    out = op(xt, wt)
    upstream = np.linspace(-1, 1, out.data.size).reshape(out.shape).astype(half)
    upstream = upstream.astype(out.dtype)
    out.backward(upstream)
    return out.data, xt.grad, wt.grad


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("name", [*OPS, *CONV_OPS])
def test_16_bit_op_is_the_float32_op_rounded_once(name, dtype, rng):
    if name in OPS:
        x, w = rng.standard_normal((60, 3)), rng.standard_normal((3, 3))
    else:
        x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((2, 3, 3, 3))
    x, w = x.astype(dtype), w.astype(dtype)
    op = {**OPS, **CONV_OPS}[name]
    got = run(op, x, w, dtype)
    want = run(op, x.astype(np.float32), w.astype(np.float32), dtype)
    for g, f in zip(got, want, strict=True):
        if f is None:  # w unused by this op: no gradient, or zeros
            continue
        assert same_bits(g, f.astype(dtype)), name


def test_controls_16_bit_numpy_sums_lose_what_cudcn_keeps():
    ones = np.ones(1000, ml_dtypes.bfloat16)
    assert float(ones.sum()) == 256.0  # ml_dtypes accumulates in bfloat16: 256 + 1 == 256
    assert float(cudcn.autograd.sum(Tensor(ones)).item()) == 1000.0
    halves = np.ones((5000, 2), np.float16)
    assert float(halves.sum(axis=0)[0]) == 2048.0  # float16: 2048 + 1 == 2048
    assert float(cudcn.autograd.sum(Tensor(halves), axis=0).data[0]) == 5000.0
    a = np.ones((2, 3), ml_dtypes.bfloat16)
    assert (a @ a.T).dtype == np.float32  # ml_dtypes' promotion; cudcn keeps bfloat16
    assert cudcn.autograd.matmul(Tensor(a), Tensor(a.T)).dtype == a.dtype


def test_tape_sums_a_16_bit_leafs_gradients_in_float32():
    t = Tensor(np.ones(1, ml_dtypes.bfloat16), requires_grad=True)
    out = t
    for _ in range(299):  # t receives 300 gradients of 1
        out = out + t
    out.sum().backward()
    assert t.grad.dtype == ml_dtypes.bfloat16 and float(t.grad[0]) == 300.0
    control = np.zeros(1, ml_dtypes.bfloat16)
    for _ in range(300):
        control += np.ones(1, ml_dtypes.bfloat16)
    assert float(control[0]) == 256.0  # summed in bfloat16: stuck at 256


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_tensor_and_cast_accept_16_bit(dtype):
    t = Tensor(np.array([1.0, 3.0], dtype), requires_grad=True)
    wide = t.astype(np.float32)
    assert wide.dtype == np.float32
    (wide * wide).sum().backward()
    assert t.grad.dtype == dtype and t.grad.astype(np.float32).tolist() == [2.0, 6.0]
    with pytest.raises(TypeError, match=r"floating dtype.*bfloat16.*got data of dtype int32"):
        Tensor(np.array([1], np.int32), requires_grad=True)


def test_gradcheck_explains_why_16_bit_is_refused():
    with pytest.raises(TypeError, match=r"inputs\[0\].*float16.*finite differences need float64"):
        cudcn.gradcheck(lambda x: x.sum(), [np.ones(3, np.float16)])


# --------------------------------------------------------------------------- Module.to, BatchNorm


def small_net(rng: np.random.Generator) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.ModulatedDeformConv2dPack(4, 4, 3, padding=1, rng=rng),
        nn.ReLU(),
        nn.GlobalAvgPool2d(),
        nn.Linear(4, 2, rng=rng),
    )


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_module_to_16_bit_keeps_buffers_in_float32(dtype, rng):
    net = small_net(rng)
    wide = {k: v.copy() for k, v in net.state_dict().items()}
    net.to(dtype)
    for name, p in net.named_parameters():
        assert p.dtype == dtype, name
        assert same_bits(p.data, wide[name].astype(dtype)), name
    buffers = dict(net.named_buffers())
    assert buffers["1.running_mean"].dtype == buffers["1.running_var"].dtype == np.float32
    assert buffers["1.num_batches_tracked"].dtype == np.int64
    x = Tensor(rng.standard_normal((2, 1, 6, 6)).astype(dtype))
    out = net(x)
    assert out.dtype == dtype
    functional.cross_entropy(out, np.array([0, 1])).backward()
    assert all(p.grad.dtype == dtype for p in net.parameters())
    assert buffers["1.running_mean"].dtype == np.float32  # updated in place, still float32
    net.to(np.float32)
    assert all(p.dtype == np.float32 and p.grad.dtype == np.float32 for p in net.parameters())
    named = {"float16": net.half, "bfloat16": net.bfloat16}[str(dtype)]
    assert named() is net and all(p.dtype == dtype for p in net.parameters())
    assert net.float() is net and all(p.dtype == np.float32 for p in net.parameters())
    with pytest.raises(TypeError, match=r"dtype must be float16, bfloat16.*got <class 'numpy.int8'>"):
        net.to(np.int8)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_16_bit_checkpoint_round_trip(dtype, rng, tmp_path):
    net, back = small_net(rng).to(dtype), small_net(rng).to(dtype)
    nn.save_checkpoint(net, tmp_path / "net.npz")  # bfloat16 is stored as float32 (exact)
    back.load_state_dict(nn.load_checkpoint(tmp_path / "net.npz"))
    for (name, a), b in zip(net.state_dict().items(), back.state_dict().values(), strict=True):
        assert same_bits(a, b), name


def test_module_to_bfloat16_on_a_cupy_without_it_names_the_library():
    def no_bfloat16(shape, dtype):
        raise TypeError(f"Unsupported dtype {dtype}")

    stand_in = types.SimpleNamespace(__name__="cupy", __version__="13.6.0", empty=no_bfloat16)
    with pytest.raises(TypeError, match=r"casting 0.weight: the installed cupy 13.6.0 has no bfl"):
        check_library_dtype(stand_in, ml_dtypes.bfloat16, "casting 0.weight")
    check_library_dtype(np, ml_dtypes.bfloat16, "numpy has it")  # no error


def test_cudcn_info_says_when_cupy_has_no_bfloat16(monkeypatch):
    def no_bfloat16(shape, dtype):
        raise TypeError(f"Unsupported dtype {dtype}")

    stand_in = types.SimpleNamespace(__name__="cupy", __version__="13.6.0", empty=no_bfloat16)
    monkeypatch.setitem(sys.modules, "cupy", stand_in)
    assert check.cupy_dtypes().startswith("float16, float32, float64 (CuPy arrays: the installed")
    monkeypatch.setattr(stand_in, "empty", lambda shape, dtype: None)
    assert check.cupy_dtypes() == "float16, bfloat16, float32, float64"


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("layer", ["BatchNorm2d", "SyncBatchNorm"])
def test_batchnorm_statistics_are_float32(layer, dtype, rng):
    half, wide = getattr(nn, layer)(3), getattr(nn, layer)(3)
    half.to(dtype)
    x = (rng.standard_normal((4, 3, 5, 5)) * 3 + 200).astype(dtype)  # |mean| >> std
    for _ in range(2):
        out_half = half(Tensor(x, requires_grad=True))
        out_wide = wide(Tensor(x.astype(np.float32), requires_grad=True))
    assert half.running_mean.dtype == half.running_var.dtype == np.float32
    assert np.array_equal(half.running_mean, wide.running_mean)
    assert np.array_equal(half.running_var, wide.running_var)
    assert same_bits(out_half.data, out_wide.data.astype(dtype))
    with pytest.raises(TypeError, match=f"running_mean must have dtype float32.*{dtype} input"):
        functional.batch_norm(x, x[0, :, 0, 0].copy(), None, training=True)


# --------------------------------------------------------------------------- optimisers


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize(
    "make",
    [lambda p: optim.SGD(p, lr=1.0, momentum=0.5), lambda p: optim.AdamW(p, lr=1e-3, weight_decay=0.0)],
    ids=["SGD", "AdamW"],
)
def test_master_copy_keeps_steps_below_16_bit_spacing(make, dtype):
    # steps of about 1e-4 on a parameter of 1: below half the spacing at 1 (eps / 2 >= 4.9e-4)
    p = Tensor(np.ones(4, dtype), requires_grad=True)
    opt = make([p])
    steps = 100
    for _ in range(steps):
        p.grad = np.full(4, 1e-4 if isinstance(opt, optim.SGD) else 1.0, dtype)
        opt.step()
    state = opt.state[id(p)]
    assert p.dtype == dtype and state["master"].dtype == np.float32
    assert all(v.dtype == np.float32 for v in state.values() if hasattr(v, "dtype"))
    moved = 1.0 - float(state["master"][0])
    assert moved > 100 * 0.5e-4  # about steps * 1e-4 (SGD: momentum makes it larger)
    assert same_bits(p.data, state["master"].astype(dtype))
    assert float(p.data[0]) < 1.0
    control = np.ones(4, dtype)  # the same updates applied in 16 bits are all lost
    for _ in range(steps):
        control -= np.asarray(1e-4, dtype)
    assert float(control[0]) == 1.0


def test_master_copy_state_dict_round_trip_and_resync():
    p, q = (Tensor(np.full(3, 0.5, np.float16), requires_grad=True) for _ in range(2))
    a, b = optim.Adam([p], lr=1e-3), optim.Adam([q], lr=1e-3)
    for _ in range(3):
        p.grad = np.array([1.0, -2.0, 0.5], np.float16)
        a.step()
    saved = a.state_dict()
    assert saved["state"][0]["master"].dtype == np.float32
    q.data[...] = p.data
    b.load_state_dict(saved)
    for t, opt in ((p, a), (q, b)):
        t.grad = np.array([1.0, -2.0, 0.5], np.float16)
        opt.step()
    assert np.array_equal(a.state[id(p)]["master"], b.state[id(q)]["master"])
    assert same_bits(p.data, q.data)
    p.data[...] = np.float16(2.0)  # changed from outside: the master follows the parameter
    p.grad = np.zeros(3, np.float16)
    a.step()
    assert np.all(np.abs(a.state[id(p)]["master"] - 2.0) < 1e-2)


# --------------------------------------------------------------------------- GradScaler


def param_with_grad(grad, dtype=np.float32):
    p = Tensor(np.zeros(len(grad), dtype), requires_grad=True)
    p.grad = np.array(grad, dtype)
    return p


def test_grad_scaler_defaults_are_pytorchs():
    scaler = optim.GradScaler()
    state = scaler.state_dict()
    assert state == {
        "scale": 2.0**16,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": 0,
    }
    assert scaler.get_scale() == 65536.0 and scaler.is_enabled()


@pytest.mark.parametrize("bad", [np.inf, np.nan, -np.inf])
def test_grad_scaler_skips_the_step_on_inf_or_nan_and_backs_off(bad):
    p = param_with_grad([2.0, bad])
    opt = optim.SGD([p], lr=1.0)
    scaler = optim.GradScaler(init_scale=8.0)
    assert scaler.step(opt) is None
    assert p.data.tolist() == [0.0, 0.0]  # not stepped
    scaler.update()
    assert scaler.get_scale() == 4.0
    p.grad = np.array([8.0, 4.0], np.float32)  # scaled by 4
    scaler.step(opt)
    scaler.update()
    assert p.data.tolist() == [-2.0, -1.0] and scaler.get_scale() == 4.0


def test_grad_scaler_grows_after_growth_interval_and_an_overflow_resets_the_count():
    p = param_with_grad([1.0])
    opt = optim.SGD([p], lr=0.0)
    scaler = optim.GradScaler(init_scale=4.0, growth_interval=3)
    scales = []
    for grad in [1, 1, 1, 1, 1, np.inf, 1, 1, 1]:
        p.grad = np.array([grad], np.float32)
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    assert scales == [4.0, 4.0, 8.0, 8.0, 8.0, 4.0, 4.0, 4.0, 8.0]


def test_grad_scaler_state_dict_round_trip():
    p = param_with_grad([1.0])
    opt = optim.SGD([p], lr=0.0)
    first = optim.GradScaler(init_scale=32.0, growth_factor=4.0, backoff_factor=0.25, growth_interval=2)
    for grad in (np.inf, 1.0):
        p.grad = np.array([grad], np.float32)
        first.step(opt)
        first.update()
    second = optim.GradScaler()
    second.load_state_dict(first.state_dict())
    assert (
        second.state_dict()
        == first.state_dict()
        == {
            "scale": 8.0,
            "growth_factor": 4.0,
            "backoff_factor": 0.25,
            "growth_interval": 2,
            "_growth_tracker": 1,
        }
    )
    for scaler in (first, second):  # the next good step completes the interval on both
        p.grad = np.array([1.0], np.float32)
        scaler.step(opt)
        scaler.update()
    assert first.get_scale() == second.get_scale() == 32.0
    with pytest.raises(RuntimeError, match=r"empty.*disabled"):
        second.load_state_dict(optim.GradScaler(enabled=False).state_dict())


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_grad_scaler_scales_in_float32_and_unscales_16_bit_gradients_to_float32(dtype):
    w = Tensor(np.full(2, 3.0, dtype), requires_grad=True)
    opt = optim.SGD([w], lr=1.0)
    scaler = optim.GradScaler(init_scale=2.0**12)
    loss = (w * w).sum()  # 18 * 2**12 would overflow float16 (max 65504), not float32
    scaled = scaler.scale(loss)
    assert scaled.dtype == np.float32 and float(scaled.item()) == 18.0 * 2**12
    scaled.backward()
    assert w.grad.dtype == dtype and float(w.grad[0]) == 6.0 * 2**12
    scaler.unscale_(opt)
    assert w.grad.dtype == np.float32 and w.grad.tolist() == [6.0, 6.0]
    with pytest.raises(RuntimeError, match="unscale_\\(\\) has already been called"):
        scaler.unscale_(opt)
    scaler.step(opt)  # no second unscale
    assert w.data.astype(np.float32).tolist() == [-3.0, -3.0]
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        scaler.step(opt)
    scaler.update()
    with pytest.raises(RuntimeError, match="no inf checks"):
        scaler.update()


def test_grad_scaler_disabled_is_a_pass_through_and_checks_its_arguments():
    p = param_with_grad([1.0])
    opt = optim.SGD([p], lr=1.0)
    scaler = optim.GradScaler(enabled=False)
    loss = Tensor(np.array(2.0))
    assert scaler.scale(loss) is loss and scaler.get_scale() == 1.0
    scaler.step(opt)
    scaler.update()
    assert p.data.tolist() == [-1.0] and scaler.state_dict() == {}
    for kwargs, match in [
        ({"init_scale": 0.0}, "init_scale must be a finite number > 0"),
        ({"growth_factor": 1.0}, "growth_factor must be > 1"),
        ({"backoff_factor": 1.5}, "backoff_factor must lie in"),
        ({"growth_interval": 0}, "growth_interval must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            optim.GradScaler(**kwargs)
    with pytest.raises(TypeError, match=r"outputs must be a cudcn.Tensor"):
        optim.GradScaler().scale(np.ones(1))


# --------------------------------------------------------------------------- training

STEPS, LR = 25, 0.5


def bars(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """16 noisy 8x8 images: a horizontal bar of height 1 (class 0) or a vertical one of height 2
    (class 1), so the loss falls from the first step on (no plateau whose escape time would
    amplify rounding differences)."""
    rng = np.random.default_rng(seed)
    y = np.arange(16) % 2
    x = rng.standard_normal((16, 1, 8, 8)) * 0.5
    x[y == 0, :, 3:5, :] += 1.0
    x[y == 1, :, :, 3:5] += 2.0
    return x, y


def train(dtype, backend: str) -> tuple[np.ndarray, np.ndarray]:
    """Loss before each of STEPS SGD steps, and whether the scaler skipped each step."""
    print(f"training seed {SEED}")
    x, y = bars(SEED)
    net = small_net(np.random.default_rng(SEED)).to(dtype)
    opt = optim.SGD(net.parameters(), lr=LR)
    scaler = optim.GradScaler(enabled=np.dtype(dtype).itemsize == 2)
    losses, skipped = [], []
    images = Tensor(x.astype(dtype))
    # float16's first step overflows on purpose (see below): no RuntimeWarnings for it
    with cudcn.use_backend(backend), np.errstate(over="ignore", invalid="ignore"):
        for _ in range(STEPS):
            loss = functional.cross_entropy(net(images), y)
            scaler.scale(loss).backward()
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            skipped.append(scaler.get_scale() < scale)  # backed off: this step was skipped
            opt.zero_grad()
            losses.append(float(loss.item()))
    return np.array(losses), np.array(skipped)


_float32_runs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

# Rounding points on the forward path of small_net in 16 bits, each a relative error of at most
# u = eps / 2: the images, conv, batch norm, conv_offset, sigmoid mask, deformable conv, pooling,
# linear and the loss (ReLU is exact).
ROUNDINGS = 9


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("backend", ["cpu", "emulated"])
def test_16_bit_training_loss_falls_like_float32(backend, dtype):
    if backend not in _float32_runs:
        _float32_runs[backend] = train(np.float32, backend)
    want, _ = _float32_runs[backend]
    got, skipped = train(dtype, backend)
    # float16: 2**16 (the default init_scale) is above float16's max 65504, so the first step
    # overflows and is skipped (scale -> 2**15); bfloat16 has float32's range and skips none.
    assert skipped.tolist() == [dtype == np.float16] + [False] * (STEPS - 1)
    # A skipped step leaves the parameters as they were: compare iteration i with float32's
    # iteration i - (steps skipped before i).
    lag = np.concatenate([[0], np.cumsum(skipped)[:-1]])
    aligned = want[np.arange(STEPS) - lag]
    # Criterion: master weights keep the trajectory on float32's, so the gap stays at the level of
    # one 16-bit evaluation of the loss: ROUNDINGS relative errors of u each, on a loss of about
    # want[0]. The float32 run's own gap to float64 is ~1e-6, negligible against it.
    u = eps(dtype) / 2
    bound = ROUNDINGS * u * want[0]
    gap = np.abs(got - aligned)
    print(
        f"{backend} {dtype}: loss {got[0]:.4f} -> {got[-1]:.4f} (float32 {want[0]:.4f} -> "
        f"{want[-1]:.4f}); max gap {gap.max():.2e}, bound {bound:.2e}"
    )
    assert gap.max() <= bound
    assert want[-1] < 0.5 * want[0] and got[-1] < 0.5 * got[0]  # it is learning
