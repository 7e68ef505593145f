"""``load_state_dict`` of optimisers, GradScaler and the schedules is all or nothing: a state it
cannot load raises and leaves every hyperparameter and buffer as it was (issue 22, item 4)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from cudcn.nn import Parameter
from cudcn.optim import SGD, Adam, GradScaler, OneCycleLR, StepLR


def trained_adam() -> tuple[Adam, list[Parameter]]:
    params = [Parameter(np.ones(3)), Parameter(np.ones((2, 2)))]
    opt = Adam([{"params": params[:1]}, {"params": params[1:], "lr": 0.01}], lr=0.1)
    for p in params:
        p.grad = np.full(p.shape, 0.5)
    opt.step()
    return opt, params


def snapshot(opt: Adam) -> tuple[list[dict], dict]:
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return groups, copy.deepcopy(opt.state)


def assert_unchanged(opt: Adam, before: tuple[list[dict], dict]) -> None:
    groups, state = snapshot(opt)
    assert groups == before[0]
    assert state.keys() == before[1].keys()
    for key, entry in state.items():
        assert entry.keys() == before[1][key].keys()
        for name, value in entry.items():
            np.testing.assert_array_equal(value, before[1][key][name], err_msg=name)


def bad_index(sd: dict) -> None:
    """The issue's probe: lr = 123, then state for a parameter index that does not exist."""
    sd["param_groups"][0]["lr"] = 123.0
    sd["state"][99] = sd["state"][0]


def wrong_shape(sd: dict) -> None:
    sd["param_groups"][1]["lr"] = 5.0
    sd["state"][1]["exp_avg"] = np.zeros(7)


def bad_hyperparameter(sd: dict) -> None:
    sd["param_groups"][0]["lr"] = 0.5
    sd["param_groups"][1]["betas"] = (0.9, 2.0)


def string_buffer(sd: dict) -> None:
    sd["param_groups"][0]["lr"] = 0.5
    sd["state"][1]["exp_avg_sq"] = np.full((2, 2), "x")


def missing_params(sd: dict) -> None:
    sd["param_groups"][0]["lr"] = 0.5
    del sd["param_groups"][1]["params"]


def repeated_index(sd: dict) -> None:
    sd["param_groups"][0]["lr"] = 0.5
    sd["param_groups"][1]["params"] = [0]


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (bad_index, "parameter index 99"),
        (wrong_shape, r"'state'\]\[1\]\['exp_avg'\] has shape \(7,\), the parameter \(2, 2\)"),
        (bad_hyperparameter, "betas must lie in"),
        (string_buffer, r"'state'\]\[1\]\['exp_avg_sq'\].*str"),
        (missing_params, "'params'"),
        (repeated_index, "more than once"),
    ],
)
def test_optimizer_load_state_dict_is_all_or_nothing(damage, match):
    source, _ = trained_adam()
    source.step()
    sd = copy.deepcopy(source.state_dict())
    damage(sd)
    opt, _ = trained_adam()
    before = snapshot(opt)
    with pytest.raises(Exception) as info:  # which error: checked below
        opt.load_state_dict(sd)
    assert_unchanged(opt, before)  # the issue: lr was 123 after the KeyError
    assert info.type in (ValueError, TypeError) and info.match(match)


def test_optimizer_load_state_dict_still_loads_a_good_state():
    source, _ = trained_adam()
    source.step()
    opt, params = trained_adam()
    opt.load_state_dict(source.state_dict())
    assert opt.state[id(params[1])]["step"] == 2
    assert opt.param_groups[1]["lr"] == 0.01
    assert opt.state[id(params[1])]["exp_avg"] is not source.state_dict()["state"][1]["exp_avg"]


def test_grad_scaler_load_state_dict_is_all_or_nothing():
    scaler = GradScaler(init_scale=8.0)
    state = {**scaler.state_dict(), "growth_factor": 4.0, "backoff_factor": 0.25, "_growth_tracker": "x"}
    with pytest.raises((ValueError, TypeError)):
        scaler.load_state_dict(state)
    assert scaler.state_dict() == GradScaler(init_scale=8.0).state_dict()  # growth_factor was 4.0


@pytest.mark.parametrize(
    "state",
    [{"last_epoch": 5, "base_lrs": None}, {"last_epoch": 5, "base_lrs": [0.5]}, {"last_epoch": "x"}],
)
def test_step_lr_load_state_dict_is_all_or_nothing(state):
    p, q = Parameter(np.ones(1)), Parameter(np.ones(1))
    opt = SGD([{"params": [p]}, {"params": [q]}], lr=0.1)
    schedule = StepLR(opt, step_size=2)
    schedule.step()
    with pytest.raises((ValueError, TypeError, KeyError)):
        schedule.load_state_dict(state)
    assert schedule.state_dict() == {"last_epoch": 1, "base_lrs": [0.1, 0.1]}  # last_epoch was 5
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]  # the first group's lr was 0.5


def test_one_cycle_load_state_dict_is_all_or_nothing():
    opt = SGD([Parameter(np.ones(1))], lr=0.1, momentum=0.9)
    schedule = OneCycleLR(opt, max_lr=1.0, total_steps=10)
    schedule.step()
    lr = opt.param_groups[0]["lr"]
    with pytest.raises(ValueError, match="total_steps"):
        schedule.load_state_dict({"last_epoch": 11})
    assert schedule.last_epoch == 1 and opt.param_groups[0]["lr"] == lr
    schedule.load_state_dict({"last_epoch": 10})
    assert schedule.last_epoch == 10
