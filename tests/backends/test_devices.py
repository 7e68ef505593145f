"""Devices: every CuPy argument of an op must live on the input's device, and ``Module.to`` moves to
the device it names. Without a GPU these run on stand-ins that look like CuPy to cudcn (their type's
module is ``cupy...``); the ``gpu`` tests repeat them on real devices where two are present."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from cudcn import nn
from cudcn.arrays import parse_device
from cudcn.ops import deform_conv2d_forward
from cudcn.ops._checks import check_arrays


class _Device:
    current = 0

    def __init__(self, index=None):
        self.id = _Device.current if index is None else index

    def __enter__(self):
        self._saved, _Device.current = _Device.current, self.id
        return self

    def __exit__(self, *exc):
        _Device.current = self._saved


class FakeCupyArray:
    """Enough of a cupy.ndarray for cudcn's checks and for ``Module.to``."""

    def __init__(self, data: np.ndarray, device: int):
        self._data, self.device = np.asarray(data), _Device(device)
        self.dtype, self.shape, self.ndim = self._data.dtype, self._data.shape, self._data.ndim

    def get(self) -> np.ndarray:
        return self._data.copy()

    def astype(self, dtype):
        return FakeCupyArray(self._data.astype(dtype), self.device.id)


FakeCupyArray.__module__ = "cupy._core.fake"


@pytest.fixture
def fake_cupy(monkeypatch):
    module = types.ModuleType("cupy")
    module.cuda = types.SimpleNamespace(Device=_Device)
    module.asarray = lambda a: FakeCupyArray(a, _Device.current)
    monkeypatch.setitem(sys.modules, "cupy", module)
    _Device.current = 0
    return module


def test_arguments_on_another_device_are_refused_with_both_devices() -> None:
    x = FakeCupyArray(np.zeros((1, 2, 4, 4), np.float32), 0)
    offset = FakeCupyArray(np.zeros((1, 18, 4, 4), np.float32), 1)
    weight = FakeCupyArray(np.zeros((3, 2, 3, 3), np.float32), 0)
    with pytest.raises(ValueError, match=r"offset is on CUDA device 1 but input is on CUDA device 0"):
        deform_conv2d_forward(x, offset, weight, padding=1)
    with pytest.raises(ValueError, match=r"weight is on CUDA device 1"):
        check_arrays({"input": x, "weight": FakeCupyArray(np.zeros(3, np.float32), 1)})
    assert check_arrays({"input": x, "weight": weight}) == np.float32  # one device: fine


def test_parse_device() -> None:
    assert parse_device("cpu") == ("cpu", None)
    assert parse_device("cuda") == ("cuda", None)
    assert parse_device("cuda:3") == ("cuda", 3)
    for bad in ("cuda:", "cuda:x", "gpu", "cpu:0", "cuda:-1"):
        with pytest.raises(ValueError, match="'cpu', 'cuda' or 'cuda:N'"):
            parse_device(bad)


def test_module_to_moves_to_the_named_device(fake_cupy) -> None:
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    net.to("cuda:1")
    arrays = [p.data for p in net.parameters()] + [net[1].running_mean]
    assert all(a.device.id == 1 for a in arrays)
    net.cuda(2)
    assert all(p.data.device.id == 2 for p in net.parameters())
    net.to("cuda")  # the current device, 0
    assert all(p.data.device.id == 0 for p in net.parameters())
    net.to("cpu")
    assert all(isinstance(p.data, np.ndarray) for p in net.parameters())


@pytest.mark.gpu
def test_module_to_and_device_check_on_real_devices() -> None:
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    net = nn.Conv2d(2, 3, 3).to("cuda:1")
    assert net.weight.data.device.id == 1
    x = cupy.zeros((1, 2, 4, 4), np.float32)  # on device 0
    with pytest.raises(ValueError, match="weight is on CUDA device 1 but input is on CUDA device 0"):
        net(x)
