"""Loading and saving state: ``Module.load_state_dict`` is all or nothing, checkpoints are written
atomically (mode and symbolic links kept, no temporary file left) and a file that is not a checkpoint
is a clear ValueError (issue 22, items 4, 5 and 11)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from cudcn import nn
from cudcn.files import TEMPORARY_MARK


def small_net() -> nn.Sequential:
    rng = np.random.default_rng(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4), nn.Linear(4, 3, rng=rng))


def snapshot(net: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in net.state_dict().items()}


def assert_unchanged(net: nn.Module, before: dict[str, np.ndarray]) -> None:
    after = net.state_dict()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


@pytest.mark.parametrize(
    "bad",
    [
        lambda shape: np.full(shape, "x"),  # a string array: the example
        lambda shape: np.full(shape, b"x"),
        lambda shape: np.full(shape, 1 + 2j),  # complex into float would drop the imaginary part
        lambda shape: np.full(shape, None, dtype=object),
    ],
    ids=["str", "bytes", "complex", "object"],
)
def test_load_state_dict_with_a_bad_last_entry_changes_nothing(bad):
    net, source = small_net(), small_net()
    for p in source.parameters():
        p.data[...] = 7
    state = source.state_dict()
    last = list(state)[-1]
    state[last] = bad(state[last].shape)
    before = snapshot(net)
    with pytest.raises(ValueError) as info:
        net.load_state_dict(state)
    assert_unchanged(net, before)  # the issue: 0.weight, 0.bias, ... were overwritten before the error
    assert "nothing loaded" in str(info.value) and last in str(info.value)


def test_load_state_dict_from_an_npz_with_a_string_array_changes_nothing(tmp_path):
    """The issue's probe: the ``.npz`` read back by ``numpy.load``, its last entry a string array."""
    net = small_net()
    state = {k: np.full_like(v, 3) for k, v in net.state_dict().items()}
    last = list(state)[-1]
    state[last] = np.full(state[last].shape, "oops")
    np.savez(tmp_path / "bad.npz", **state)
    before = snapshot(net)
    for state in (np.load(tmp_path / "bad.npz"), nn.load_checkpoint(tmp_path / "bad.npz")):
        with pytest.raises(ValueError) as info:
            net.load_state_dict(state)
        assert_unchanged(net, before)
        assert f"{last}: an array of str" in str(info.value)


def test_load_state_dict_still_casts_numbers_and_loads_tensors():
    net = small_net()
    state = {
        k: np.ones(v.shape, np.int64 if v.dtype.kind == "f" else v.dtype) for k, v in net.state_dict().items()
    }
    net.load_state_dict(state)
    assert all(np.all(v == 1) for v in net.state_dict().values())
    assert net[0].weight.dtype == np.float32


def test_checkpoint_keeps_mode_and_symlink(tmp_path):
    real = tmp_path / "real.npz"
    nn.save_checkpoint({"w": np.zeros(2)}, real)
    os.chmod(real, 0o600)
    nn.save_checkpoint({"w": np.ones(2)}, real)
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o600  # was 0644 after a re-save
    link = tmp_path / "link.npz"
    link.symlink_to(real.name)
    nn.save_checkpoint({"w": np.full(2, 5.0)}, link)
    assert link.is_symlink() and os.readlink(link) == real.name  # the link was replaced by a file
    np.testing.assert_array_equal(nn.load_checkpoint(real)["w"], 5.0)
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["link.npz", "real.npz"]


def test_checkpoint_removes_a_killed_writers_temporary_file(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now
    path = tmp_path / "net.npz"
    stale = tmp_path / f".net.npz{TEMPORARY_MARK}{dead.pid}-0123abcd"
    stale.write_bytes(b"PK half a checkpoint")
    alive = tmp_path / f".net.npz{TEMPORARY_MARK}{os.getppid()}-0123abcd"  # a live process's: kept
    alive.write_bytes(b"PK")
    nn.save_checkpoint({"w": np.zeros(2)}, path)
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, "net.npz"])


@pytest.mark.parametrize(
    "content, expected",
    [
        ("npy", "holds a .npy array, not an .npz checkpoint"),
        ("text", "not an .npz"),
        ("empty", "not an .npz"),
        ("truncated", "truncated or corrupt"),
        ("corrupt", "truncated or corrupt"),
    ],
)
def test_load_checkpoint_of_a_non_checkpoint_is_a_clear_error(tmp_path, content, expected):
    path = tmp_path / "net.npz"
    if content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.arange(3.0))
    elif content == "text":
        path.write_text("hello, not a checkpoint\n")
    elif content == "truncated":
        nn.save_checkpoint({"a": np.arange(1000.0), "b": np.arange(1000.0)}, path)
        path.write_bytes(path.read_bytes()[:5000])
    elif content == "corrupt":  # the zip directory intact, an array's bytes damaged
        nn.save_checkpoint({"a": np.arange(1000.0), "b": np.arange(1000.0)}, path)
        data = bytearray(path.read_bytes())
        data[3000:3100] = bytes(100)
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"")
    with pytest.raises(ValueError, match=expected) as info:
        nn.load_checkpoint(path)
    assert str(path) in str(info.value)
