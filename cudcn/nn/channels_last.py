"""Layers of channels-last blocks (InternImage's DCNv3, DCNv4), with PyTorch's names:
:class:`LayerNorm`, :class:`GELU`, :class:`SiLU`, and the permutations :class:`ToChannelsLast`
(N, C, H, W) -> (N, H, W, C) and :class:`ToChannelsFirst` (the inverse)."""

from __future__ import annotations

import numpy as np

from cudcn.arrays import Array
from cudcn.autograd import mul, sigmoid, transpose
from cudcn.nn.module import Module, Parameter
from cudcn.ops._checks import check_bool, finite_float, positive_int
from cudcn.ops.activation import gelu
from cudcn.ops.layer_norm import layer_norm

__all__ = ["GELU", "LayerNorm", "SiLU", "ToChannelsFirst", "ToChannelsLast"]


class LayerNorm(Module):
    """``torch.nn.LayerNorm`` over the trailing axes ``normalized_shape``: weight 1 and bias 0 of
    that shape (none without ``elementwise_affine``)."""

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape = tuple(positive_int("normalized_shape", v) for v in shape)
        self.eps = finite_float("eps", eps)
        self.elementwise_affine = check_bool("elementwise_affine", elementwise_affine)
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=np.float32))
            self.bias = Parameter(np.zeros(self.normalized_shape, dtype=np.float32))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, input: Array) -> Array:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GELU(Module):
    """``torch.nn.GELU``: ``x·Φ(x)`` (``approximate="tanh"``: the tanh formula)."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, input: Array) -> Array:
        return gelu(input, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    """``torch.nn.SiLU``: ``x·sigmoid(x)``."""

    def forward(self, input: Array) -> Array:
        return mul(input, sigmoid(input))


class ToChannelsLast(Module):
    """(N, C, H, W) -> (N, H, W, C)."""

    def forward(self, input: Array) -> Array:
        return transpose(input, (0, 2, 3, 1))


class ToChannelsFirst(Module):
    """(N, H, W, C) -> (N, C, H, W)."""

    def forward(self, input: Array) -> Array:
        return transpose(input, (0, 3, 1, 2))
