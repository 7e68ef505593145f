"""Parameter initialisation (PyTorch's ``torch.nn.init`` formulas) and the default random generator.

Layers draw their initial weights from :func:`default_rng` unless given a generator; it starts from a
fixed seed, so model construction is reproducible run to run, and :func:`manual_seed` restarts it::

    cudcn.nn.init.manual_seed(0)
    net = cudcn.nn.Conv2d(1, 16, 3)   # the same weights every time

Every function fills ``tensor.data`` in place (a NumPy or CuPy array) and returns the tensor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cudcn.autograd import Tensor
from cudcn.backends import array_module

__all__ = [
    "calculate_gain",
    "constant_",
    "default_rng",
    "fan_in_and_fan_out",
    "kaiming_normal_",
    "kaiming_uniform_",
    "manual_seed",
    "normal_",
    "ones_",
    "uniform_",
    "xavier_uniform_",
    "zeros_",
]

DEFAULT_SEED = 0
_generator = np.random.default_rng(DEFAULT_SEED)


def manual_seed(seed: int) -> None:
    """Restart the default generator from ``seed``."""
    global _generator
    _generator = np.random.default_rng(seed)


def default_rng() -> np.random.Generator:
    """The generator layers and :class:`~cudcn.nn.Dropout` use when given none."""
    return _generator


def fan_in_and_fan_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(shape[1] * receptive, shape[0] * receptive)`` with ``receptive = prod(shape[2:])``: for a
    conv weight (C_out, C_in / groups, kh, kw), fan_in = C_in / groups * kh * kw."""
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need at least 2 dimensions, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """PyTorch's recommended gains: 1 for linear/conv/sigmoid, 5/3 for tanh, sqrt(2) for relu,
    ``sqrt(2 / (1 + a²))`` for leaky_relu with slope ``a`` (default 0.01)."""
    if nonlinearity in ("linear", "conv2d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    raise ValueError(
        "nonlinearity must be one of 'linear', 'conv2d', 'sigmoid', 'tanh', 'relu', 'leaky_relu', "
        f"got {nonlinearity!r}"
    )


def _fill(tensor: Any, values: np.ndarray) -> Any:
    """Copy host ``values`` into ``tensor.data`` (any library), keeping its dtype."""
    data = tensor.data
    data[...] = array_module(data).asarray(values.astype(data.dtype, copy=False))
    return _modified(tensor)


def _modified(tensor: Any) -> Any:
    """``tensor``, its in-place change recorded when it is a Tensor (see ``Tensor.mark_modified``)."""
    if isinstance(tensor, Tensor):
        tensor.mark_modified()
    return tensor


def uniform_(tensor: Any, a: float = 0.0, b: float = 1.0, rng: np.random.Generator | None = None) -> Any:
    """Fill with U(a, b)."""
    rng = rng or default_rng()
    return _fill(tensor, rng.uniform(a, b, size=tensor.shape))


def normal_(tensor: Any, mean: float = 0.0, std: float = 1.0, rng: np.random.Generator | None = None) -> Any:
    """Fill with N(mean, std²)."""
    rng = rng or default_rng()
    return _fill(tensor, rng.normal(mean, std, size=tensor.shape))


def constant_(tensor: Any, value: float) -> Any:
    """Fill with ``value``."""
    tensor.data[...] = value
    return _modified(tensor)


def zeros_(tensor: Any) -> Any:
    """Fill with 0."""
    return constant_(tensor, 0.0)


def ones_(tensor: Any) -> Any:
    """Fill with 1."""
    return constant_(tensor, 1.0)


def _kaiming_std(shape: tuple[int, ...], a: float, mode: str, nonlinearity: str) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fan_in_and_fan_out(shape)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(
    tensor: Any,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    rng: np.random.Generator | None = None,
) -> Any:
    """He uniform: U(-bound, bound), ``bound = gain * sqrt(3 / fan)``. With ``a = sqrt(5)`` (PyTorch's
    default for Conv2d and Linear) the bound is ``1 / sqrt(fan_in)``."""
    bound = math.sqrt(3.0) * _kaiming_std(tensor.shape, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, rng)


def kaiming_normal_(
    tensor: Any,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    rng: np.random.Generator | None = None,
) -> Any:
    """He normal: N(0, std²), ``std = gain / sqrt(fan)``."""
    return normal_(tensor, 0.0, _kaiming_std(tensor.shape, a, mode, nonlinearity), rng)


def xavier_uniform_(tensor: Any, gain: float = 1.0, rng: np.random.Generator | None = None) -> Any:
    """Glorot uniform: U(-bound, bound), ``bound = gain * sqrt(6 / (fan_in + fan_out))`` (for a
    Linear weight (out, in): fan_in = in, fan_out = out)."""
    fan_in, fan_out = fan_in_and_fan_out(tensor.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, rng)
