"""Optimisers and schedules: steps against hand-computed updates, parameter groups, state, errors;
and (when torch is installed) against torch.optim over several random steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cudcn.autograd import Tensor
from cudcn.nn import Parameter
from cudcn.optim import SGD, Adam, AdamW, CosineAnnealingLR, OneCycleLR, StepLR

SEED = 777


def run(opt_cls, grads, p0=1.0, **kwargs):
    """Values of a one-element parameter after each step with the given gradients."""
    p = Parameter(np.array([p0]))
    opt = opt_cls([p], **kwargs)
    values = []
    for g in grads:
        p.grad = np.array([g])
        opt.step()
        values.append(float(p.data[0]))
    return values


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # p = 1, g = 1 every step, lr = 0.1
        ({}, [0.9, 0.8, 0.7]),
        # buffer 1, 1.9, 2.71
        ({"momentum": 0.9}, [0.9, 0.71, 0.439]),
        # buffer 1 (the first step is not dampened), 0.9 + 0.5 = 1.4, 1.26 + 0.5 = 1.76
        ({"momentum": 0.9, "dampening": 0.5}, [0.9, 0.76, 0.584]),
        # step g + 0.9 * buffer: 1.9, 2.71, 3.439
        ({"momentum": 0.9, "nesterov": True}, [0.81, 0.539, 0.1951]),
        # g + 0.1 p: 1.1, 1.089, 1.07811
        ({"weight_decay": 0.1}, [0.89, 0.7811, 0.673289]),
    ],
    ids=["plain", "momentum", "dampening", "nesterov", "weight_decay"],
)
def test_sgd_hand_computed(kwargs, expected):
    np.testing.assert_allclose(run(SGD, [1.0, 1.0, 1.0], lr=0.1, **kwargs), expected, rtol=1e-12)


def test_sgd_momentum_weight_decay_varying_gradients():
    # lr 0.1, momentum 0.5, weight_decay 0.2, p0 = 2, gradients 1, -3
    # step 1: g = 1 + 0.4 = 1.4, b = 1.4, p = 2 - 0.14 = 1.86
    # step 2: g = -3 + 0.372 = -2.628, b = 0.7 - 2.628 = -1.928, p = 1.86 + 0.1928 = 2.0528
    values = run(SGD, [1.0, -3.0], p0=2.0, lr=0.1, momentum=0.5, weight_decay=0.2)
    np.testing.assert_allclose(values, [1.86, 2.0528], rtol=1e-12)


def adam_reference(grads, lr, beta1, beta2, eps, p, decay=0.0, decoupled=False):
    """Adam written out with scalars: the textbook bias-corrected form PyTorch uses."""
    m = v = 0.0
    values = []
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p *= 1 - lr * decay
        else:
            g += decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1**t) * m / (math.sqrt(v) / math.sqrt(1 - beta2**t) + eps)
        values.append(p)
    return values


def test_adam_first_two_steps_by_hand():
    # p0 = 1, g = 2 then -1, lr 0.1. Step 1: m = 0.2, v = 0.004; m / (1 - 0.9) = 2 and
    # sqrt(v / (1 - 0.999)) = 2, so p = 1 - 0.1 * 2 / (2 + 1e-8) = 0.9.
    # Step 2: m = 0.08, v = 0.004996; p = 0.9 - 0.1 * (0.08 / 0.19) / sqrt(0.004996 / 0.001999).
    values = run(Adam, [2.0, -1.0], lr=0.1)
    step2 = 0.9 - 0.1 * (0.08 / 0.19) / math.sqrt(0.004996 / 0.001999)
    np.testing.assert_allclose(values, [1 - 0.2 / (2 + 1e-8), step2], rtol=1e-7)
    np.testing.assert_allclose(values, adam_reference([2.0, -1.0], 0.1, 0.9, 0.999, 1e-8, 1.0))


def test_adam_l2_and_adamw_decoupled_decay():
    # AdamW: p is first multiplied by 1 - lr * wd = 0.95, then takes the Adam step of above.
    values = run(AdamW, [2.0, -1.0], lr=0.1, weight_decay=0.5)
    step2 = 0.1 * (0.08 / 0.19) / math.sqrt(0.004996 / 0.001999)
    np.testing.assert_allclose(values, [0.95 - 0.1, 0.85 * 0.95 - step2], rtol=1e-7)
    grads = [2.0, -1.0, 0.5]
    l2 = run(Adam, grads, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.3)
    np.testing.assert_allclose(l2, adam_reference(grads, 0.05, 0.8, 0.99, 1e-6, 1.0, 0.3), rtol=1e-12)


def test_param_groups_with_their_own_lr():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(3))
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.01}], lr=0.1, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert opt.param_groups[1]["momentum"] == 0.9  # taken from the defaults
    a.grad, b.grad = np.ones(2), np.ones(3)
    opt.step()
    np.testing.assert_allclose(a.data, 0.9)
    np.testing.assert_allclose(b.data, 0.99)


def test_zero_grad_and_skipping_parameters_without_grad():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
    opt = SGD([a, b], lr=0.5)
    a.grad = np.array([1.0, 2.0])
    opt.step()  # b has no gradient: untouched
    np.testing.assert_allclose(a.data, [0.5, 0.0])
    np.testing.assert_array_equal(b.data, 1.0)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad, 0.0)
    opt.zero_grad()
    assert a.grad is None


def test_float32_parameters_stay_float32():
    p = Parameter(np.ones(3, np.float32))
    p.grad = np.full(3, 0.5, np.float32)
    for opt in (SGD([p], lr=0.1, momentum=0.9), Adam([p]), AdamW([p])):
        opt.step()
        assert p.data.dtype == np.float32


def test_optimizer_state_dict_round_trip():
    rng = np.random.default_rng(SEED)
    grads = rng.standard_normal((4, 3))
    pa, pb = Parameter(np.ones(3)), Parameter(np.ones(3))
    a, b = Adam([pa], lr=0.1), Adam([pb], lr=0.3)
    for g in grads[:2]:
        pa.grad = g.copy()
        a.step()
    pb.data[...] = pa.data
    b.load_state_dict(a.state_dict())
    assert b.param_groups[0]["lr"] == 0.1
    for g in grads[2:]:
        pa.grad, pb.grad = g.copy(), g.copy()
        a.step()
        b.step()
    np.testing.assert_array_equal(pa.data, pb.data)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: SGD([p], lr=0.1, nesterov=True), "nesterov=True needs momentum > 0"),
        (lambda p: SGD([p], lr=-1.0), "lr must be >= 0"),
        (lambda p: SGD([], lr=0.1), "at least one parameter"),
        (lambda p: SGD([p, p], lr=0.1), "more than one parameter group"),
        (lambda p: Adam([p], betas=(1.0, 0.9)), r"betas must lie in \[0, 1\)"),
        (lambda p: SGD([{"params": [p], "lrr": 0.1}], lr=0.1), "unknown hyperparameters"),
    ],
)
def test_optimizer_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make(Parameter(np.ones(2)))
    with pytest.raises(TypeError, match=r"params\[0\] must be a cudcn.Tensor"):
        SGD([np.ones(2)], lr=0.1)


def test_step_lr_values():
    opt = SGD(
        [{"params": [Parameter(np.ones(1))]}, {"params": [Parameter(np.ones(1))], "lr": 0.1}],
        lr=1.0,
    )
    sched = StepLR(opt, step_size=2, gamma=0.5)
    seen = [sched.get_last_lr()]
    for _ in range(5):
        sched.step()
        seen.append(sched.get_last_lr())
    np.testing.assert_allclose(
        seen, [[1, 0.1], [1, 0.1], [0.5, 0.05], [0.5, 0.05], [0.25, 0.025], [0.25, 0.025]]
    )


def test_cosine_annealing_values():
    opt = SGD([Parameter(np.ones(1))], lr=1.0)
    sched = CosineAnnealingLR(opt, T_max=4, eta_min=0.1)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(4):
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    # 0.1 + 0.9 * (1 + cos(pi t / 4)) / 2 for t = 0..4
    np.testing.assert_allclose(
        seen, [1.0, 0.1 + 0.45 * (1 + 0.5**0.5), 0.55, 0.1 + 0.45 * (1 - 0.5**0.5), 0.1]
    )


def test_against_torch_optim():
    torch = pytest.importorskip("torch", reason="torch not installed")
    rng = np.random.default_rng(SEED)
    p0, grads = rng.standard_normal(5), rng.standard_normal((6, 5))
    configs = [
        (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)),
        (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.8, dampening=0.3)),
        (Adam, torch.optim.Adam, dict(lr=0.05, weight_decay=0.1)),
        (AdamW, torch.optim.AdamW, dict(lr=0.05, weight_decay=0.1, betas=(0.8, 0.95))),
    ]
    for mine_cls, torch_cls, kwargs in configs:
        p, tp = Parameter(p0.copy()), torch.tensor(p0.copy(), requires_grad=True)
        mine, theirs = mine_cls([p], **kwargs), torch_cls([tp], **kwargs)
        sched, tsched = (
            CosineAnnealingLR(mine, 4, 0.01),
            torch.optim.lr_scheduler.CosineAnnealingLR(theirs, 4, 0.01),
        )
        for g in grads:
            p.grad, tp.grad = g.copy(), torch.tensor(g)
            mine.step()
            theirs.step()
            sched.step()
            tsched.step()
            np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12)
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_plain_tensor_parameters_are_accepted():
    t = Tensor(np.ones(2), requires_grad=True)
    t.grad = np.ones(2)
    SGD([t], lr=1.0).step()
    np.testing.assert_array_equal(t.data, 0.0)


def one_cycle_rates(steps, **kwargs):
    """(lr, beta1) after construction and after each of ``steps`` steps of OneCycleLR on Adam."""
    opt = Adam([Parameter(np.ones(1))], lr=123.0)  # OneCycleLR replaces the rate
    sched = OneCycleLR(opt, **kwargs)
    seen = [(opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0])]
    for _ in range(steps):
        sched.step()
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))
    return np.array(seen)


def test_one_cycle_hand_computed():
    # total 10, pct_start 0.3: the rise ends at step 0.3 * 10 - 1 = 2, the fall at step 9.
    # initial 1 / 25 = 0.04, minimum 0.04 / 1e4 = 4e-6.
    seen = one_cycle_rates(9, max_lr=1.0, total_steps=10)
    half = (1 + math.cos(math.pi / 2)) / 2  # 0.5
    np.testing.assert_allclose(seen[:3, 0], [0.04, 1 - 0.96 * half, 1.0], rtol=1e-12)
    # step 5 of the fall (steps 2..9): pct = 3 / 7
    fall = 4e-6 + (1 - 4e-6) * (1 + math.cos(math.pi * 3 / 7)) / 2
    assert seen[5, 0] == pytest.approx(fall, rel=1e-12)
    assert seen[9, 0] == pytest.approx(4e-6, rel=1e-12)
    assert np.all(np.diff(seen[2:, 0]) < 0)
    # beta1 runs the other way: 0.95 -> 0.85 at the peak -> 0.95
    np.testing.assert_allclose(seen[[0, 1, 2, 9], 1], [0.95, 0.9, 0.85, 0.95], rtol=1e-12)


def test_one_cycle_linear_three_phase_and_sgd_momentum():
    opt = SGD([Parameter(np.ones(1))], lr=0.0, momentum=0.9)
    sched = OneCycleLR(
        opt,
        max_lr=2.0,
        epochs=2,
        steps_per_epoch=5,
        pct_start=0.3,
        anneal_strategy="linear",
        three_phase=True,
        div_factor=4.0,
        final_div_factor=5.0,
    )
    seen = [(opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"])]
    for _ in range(9):
        sched.step()
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
    seen = np.array(seen)
    # phases end at steps 2, 4, 9: 0.5 -> 2 -> 0.5 -> 0.1, linearly
    np.testing.assert_allclose(seen[:, 0], [0.5, 1.25, 2, 1.25, 0.5, 0.42, 0.34, 0.26, 0.18, 0.1])
    np.testing.assert_allclose(seen[[0, 2, 4, 9], 1], [0.95, 0.85, 0.95, 0.95])


def test_one_cycle_errors_and_overrun():
    opt = Adam([Parameter(np.ones(1))])
    sched = OneCycleLR(opt, max_lr=1.0, total_steps=3)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match="total_steps = 3"):
        sched.step()
    with pytest.raises(ValueError, match="pct_start"):
        OneCycleLR(opt, max_lr=1.0, total_steps=3, pct_start=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        OneCycleLR(opt, max_lr=1.0)
    with pytest.raises(ValueError, match="max_lr has 2 values for 1 groups"):
        OneCycleLR(opt, max_lr=[1.0, 2.0], total_steps=3)
    with pytest.raises(ValueError, match="anneal_strategy"):
        OneCycleLR(opt, max_lr=1.0, total_steps=3, anneal_strategy="exp")


def test_one_cycle_against_torch():
    torch = pytest.importorskip("torch", reason="torch not installed")
    for kwargs in (dict(pct_start=0.25), dict(three_phase=True, anneal_strategy="linear")):
        mine = AdamW([Parameter(np.ones(1))])
        theirs = torch.optim.AdamW([torch.ones(1, requires_grad=True)])
        a = OneCycleLR(mine, max_lr=0.1, total_steps=20, **kwargs)
        b = torch.optim.lr_scheduler.OneCycleLR(theirs, max_lr=0.1, total_steps=20, **kwargs)
        for _ in range(19):
            theirs.step()  # torch warns when the schedule steps before the optimiser
            a.step()
            b.step()
            assert a.get_last_lr() == pytest.approx(b.get_last_lr(), rel=1e-12)
            assert mine.param_groups[0]["betas"] == pytest.approx(theirs.param_groups[0]["betas"])
