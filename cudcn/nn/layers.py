"""Standard layers with PyTorch's constructors, attribute names and initialisations.

Weights are created as float32 NumPy arrays drawn from ``rng`` (default: :func:`cudcn.nn.init.
default_rng`); use ``Module.to("cuda")`` / ``Module.to(np.float64)`` to move or cast them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cudcn.arrays import Array
from cudcn.autograd import flatten, relu, sigmoid
from cudcn.nn import init
from cudcn.nn.module import Module, Parameter
from cudcn.ops._checks import int_pair, positive_int
from cudcn.ops.activation import dropout
from cudcn.ops.conv import conv2d
from cudcn.ops.linear import linear
from cudcn.ops.norm import batch_norm
from cudcn.ops.pool import adaptive_avg_pool2d, avg_pool2d, global_avg_pool2d, max_pool2d

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "Dropout",
    "Flatten",
    "GlobalAvgPool2d",
    "Linear",
    "MaxPool2d",
    "ReLU",
    "Sigmoid",
]


def empty_parameter(*shape: int) -> Parameter:
    """A float32 Parameter of ``shape`` (zeros until initialised)."""
    return Parameter(np.zeros(shape, dtype=np.float32))


def check_channels(in_channels: Any, out_channels: Any, groups: Any) -> tuple[int, int, int]:
    """Positive channel counts divisible by ``groups``."""
    in_channels = positive_int("in_channels", in_channels)
    out_channels = positive_int("out_channels", out_channels)
    groups = positive_int("groups", groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by "
            f"groups, got groups = {groups}"
        )
    return in_channels, out_channels, groups


def init_conv_parameters(
    module: Module,
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    dilation: int | tuple[int, int],
    groups: int,
    bias: bool,
) -> None:
    """Check a convolution's hyper-parameters, store them on ``module`` as ints and (h, w) pairs, and
    register its uninitialised ``weight`` (out_channels, in_channels / groups, kh, kw) and ``bias``
    (out_channels,) or None. Shared by ``Conv2d`` and the deformable layers."""
    module.in_channels, module.out_channels, module.groups = check_channels(in_channels, out_channels, groups)
    module.kernel_size = int_pair("kernel_size", kernel_size, 1)
    module.stride = int_pair("stride", stride, 1)
    module.padding = int_pair("padding", padding, 0)
    module.dilation = int_pair("dilation", dilation, 1)
    module.weight = empty_parameter(out_channels, in_channels // groups, *module.kernel_size)
    module.register_parameter("bias", empty_parameter(out_channels) if bias else None)


class Conv2d(Module):
    """2-D convolution, ``torch.nn.Conv2d``: weight (out_channels, in_channels / groups, kh, kw) and
    bias (out_channels,), both U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in_channels / groups
    * kh * kw (PyTorch's ``kaiming_uniform_(a=sqrt(5))`` and bias rule). Zero padding only."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        init_conv_parameters(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        self.reset_parameters(rng)

    def reset_parameters(self, rng: np.random.Generator | None = None) -> None:
        """PyTorch's initialisation (see the class docstring)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), rng=rng)
        if self.bias is not None:
            bound = 1 / math.sqrt(init.fan_in_and_fan_out(self.weight.shape)[0])
            init.uniform_(self.bias, -bound, bound, rng)

    def forward(self, input: Array) -> Array:
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}"
        )


class Linear(Module):
    """``torch.nn.Linear``: weight (out_features, in_features) and bias (out_features,), both
    U(-1/sqrt(in_features), 1/sqrt(in_features))."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.weight = empty_parameter(out_features, in_features)
        self.register_parameter("bias", empty_parameter(out_features) if bias else None)
        self.reset_parameters(rng)

    def reset_parameters(self, rng: np.random.Generator | None = None) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), rng=rng)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound, rng)

    def forward(self, input: Array) -> Array:
        return linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"


class _BatchNorm(Module):
    """Shared by BatchNorm1d/2d: weight 1, bias 0; buffers running_mean 0, running_var 1 and
    num_batches_tracked (int64, counts training batches; ``momentum=None`` averages cumulatively)."""

    input_dims: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = positive_int("num_features", num_features)
        self.eps, self.momentum = eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=np.float32))
            self.bias = Parameter(np.zeros(num_features, dtype=np.float32))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=np.float32))
            self.register_buffer("running_var", np.ones(num_features, dtype=np.float32))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))

    def forward(self, input: Array) -> Array:
        if input.ndim not in self.input_dims:
            raise ValueError(
                f"{type(self).__name__} expects a {' or '.join(map(str, self.input_dims))}-D input, "
                f"got shape {tuple(input.shape)}"
            )
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        batch_stats = self.training or not self.track_running_stats
        use_running = self.track_running_stats  # without the buffers: batch statistics always
        return self.normalize(
            input,
            self.running_mean if use_running else None,
            self.running_var if use_running else None,
            batch_stats,
            momentum,
        )

    def normalize(
        self,
        input: Array,
        running_mean: Array | None,
        running_var: Array | None,
        batch_stats: bool,
        momentum: float,
    ) -> Array:
        """The functional call behind ``forward`` (``SyncBatchNorm`` overrides it)."""
        return batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            training=batch_stats,
            momentum=momentum,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )


class BatchNorm2d(_BatchNorm):
    """``torch.nn.BatchNorm2d`` over (B, C, H, W)."""

    input_dims = (4,)


class BatchNorm1d(_BatchNorm):
    """``torch.nn.BatchNorm1d`` over (B, C) or (B, C, L)."""

    input_dims = (2, 3)


class ReLU(Module):
    """Elementwise ``max(x, 0)``."""

    def forward(self, input: Array) -> Array:
        return relu(input)


class Sigmoid(Module):
    """Elementwise ``1 / (1 + exp(-x))``."""

    def forward(self, input: Array) -> Array:
        return sigmoid(input)


class MaxPool2d(Module):
    """``torch.nn.MaxPool2d`` (stride defaults to the kernel size)."""

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, input: Array) -> Array:
        return max_pool2d(input, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(MaxPool2d):
    """``torch.nn.AvgPool2d`` (stride defaults to the kernel size)."""

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = count_include_pad

    def forward(self, input: Array) -> Array:
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.count_include_pad)


class AdaptiveAvgPool2d(Module):
    """``torch.nn.AdaptiveAvgPool2d``: (B, C, H, W) -> (B, C, oh, ow)."""

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, input: Array) -> Array:
        return adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class GlobalAvgPool2d(Module):
    """Mean over the spatial axes: (B, C, H, W) -> (B, C) (``AdaptiveAvgPool2d(1)`` then
    ``Flatten()``)."""

    def forward(self, input: Array) -> Array:
        return global_avg_pool2d(input)


class Flatten(Module):
    """Merge the axes from ``start_dim`` on: (B, C, H, W) -> (B, C * H * W)."""

    def __init__(self, start_dim: int = 1) -> None:
        super().__init__()
        self.start_dim = start_dim

    def forward(self, input: Array) -> Array:
        return flatten(input, self.start_dim)


class Dropout(Module):
    """``torch.nn.Dropout``: zero elements with probability ``p`` while training (scaling the rest by
    ``1 / (1 - p)``), the identity in eval mode. Masks are drawn from ``rng`` (default: the
    generator of :func:`cudcn.nn.init.default_rng` at call time)."""

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = rng

    def forward(self, input: Array) -> Array:
        return dropout(input, self.p, self.training, self.rng or init.default_rng())

    def extra_repr(self) -> str:
        return f"p={self.p}"
