"""Deformable convolution layers with torchvision's and mmcv's names, so their checkpoints load.

* :class:`DeformConv2d` — ``torchvision.ops.DeformConv2d``: the caller supplies the offsets (and an
  optional mask) to ``forward(input, offset, mask=None)``.
* :class:`DeformConv2dPack` — mmcv's ``DeformConv2dPack`` (DCNv1): a regular convolution
  ``conv_offset`` predicts the offsets from the input.
* :class:`ModulatedDeformConv2dPack` — mmcv's ``ModulatedDeformConv2dPack`` (DCNv2): ``conv_offset``
  predicts offsets and a sigmoid mask.

Offset layout (all three): for offset group g and kernel tap k = i * kw + j, channel
``2 * (g * kh * kw + k)`` is dy (rows) and the next one dx (columns); see
:func:`cudcn.functional.deform_conv2d`.
"""

from __future__ import annotations

import math

import numpy as np

from cudcn.arrays import Array
from cudcn.autograd import sigmoid
from cudcn.functional import deform_conv2d
from cudcn.nn import init
from cudcn.nn.layers import Conv2d, init_conv_parameters
from cudcn.nn.module import Module
from cudcn.ops._checks import positive_int

__all__ = ["DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack"]


class _DeformConvBase(Module):
    """Attributes and parameters shared by the three layers: ``weight`` (out_channels,
    in_channels / groups, kh, kw) and ``bias`` (out_channels,) or None."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int],
        padding: int | tuple[int, int],
        dilation: int | tuple[int, int],
        groups: int,
        bias: bool,
    ) -> None:
        super().__init__()
        init_conv_parameters(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )

    def _deform(self, input: Array, offset: Array, mask: Array | None) -> Array:
        return deform_conv2d(
            input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask
        )

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}"
        )
        if hasattr(self, "deform_groups"):
            text += f", deform_groups={self.deform_groups}"
        return text + f", bias={self.bias is not None}"


class DeformConv2d(_DeformConvBase):
    """torchvision's ``DeformConv2d``: ``forward(input, offset, mask=None)``.

    The number of offset groups follows from the offset's channels (``2 * og * kh * kw``); the mask,
    if given, is (B, og * kh * kw, H_out, W_out) and used as is.

    Initialisation (torchvision's): weight ``kaiming_uniform_(a=sqrt(5))``, i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in_channels / groups * kh * kw; bias
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """

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
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.reset_parameters(rng)

    def reset_parameters(self, rng: np.random.Generator | None = None) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), rng=rng)
        if self.bias is not None:
            bound = 1 / math.sqrt(init.fan_in_and_fan_out(self.weight.shape)[0])
            init.uniform_(self.bias, -bound, bound, rng)

    def forward(self, input: Array, offset: Array, mask: Array | None = None) -> Array:
        """input (B, C_in, H, W), offset (B, 2 og kh kw, H_out, W_out), mask (B, og kh kw, H_out,
        W_out) or None -> (B, C_out, H_out, W_out)."""
        return self._deform(input, offset, mask)


class _PackBase(_DeformConvBase):
    """A deformable layer whose offsets come from ``conv_offset``, a regular Conv2d over the input
    with the same kernel size, stride, padding and dilation (groups 1, with bias), whose weight and
    bias start at zero — so the layer starts as a plain convolution."""

    offset_factor = 2  # conv_offset channels per offset group and tap

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int],
        padding: int | tuple[int, int],
        dilation: int | tuple[int, int],
        groups: int,
        deform_groups: int,
        bias: bool,
        rng: np.random.Generator | None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.deform_groups = positive_int("deform_groups", deform_groups)
        if self.in_channels % self.deform_groups:
            raise ValueError(
                f"in_channels ({self.in_channels}) must be divisible by deform_groups, "
                f"got deform_groups = {self.deform_groups}"
            )
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = Conv2d(
            self.in_channels,
            self.offset_factor * self.deform_groups * taps,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=True,
            rng=rng,
        )
        self.init_weights(rng)

    def init_weights(self, rng: np.random.Generator | None = None) -> None:
        init.zeros_(self.conv_offset.weight)
        init.zeros_(self.conv_offset.bias)

    def _offsets(self, input: Array) -> Array:
        """``conv_offset(input)``, after checking the input against this layer (not against the
        hidden offset convolution, whose weight shape would mean nothing to the caller)."""
        shape = tuple(getattr(input, "shape", ()))
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}({self.extra_repr()}) takes input of shape "
                f"(B, {self.in_channels}, H, W), got {shape}"
            )
        return self.conv_offset(input)


class DeformConv2dPack(_PackBase):
    """mmcv's ``DeformConv2dPack`` (DCNv1 as a drop-in for a convolution): ``forward(input)``.

    Parameters: ``weight``, ``bias`` (only with ``bias=True``; mmcv's layer has none, hence the
    default False), and ``conv_offset.weight`` / ``conv_offset.bias`` producing the
    2 * deform_groups * kh * kw offset channels.

    Initialisation (mmcv's): weight ``kaiming_uniform_(nonlinearity="relu")``, i.e.
    U(-sqrt(6 / fan_in), sqrt(6 / fan_in)) with fan_in = in_channels / groups * kh * kw; bias (an
    extension) 0; ``conv_offset`` weight and bias 0.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        deform_groups: int = 1,
        bias: bool = False,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            deform_groups,
            bias,
            rng,
        )

    def init_weights(self, rng: np.random.Generator | None = None) -> None:
        init.kaiming_uniform_(self.weight, nonlinearity="relu", rng=rng)
        if self.bias is not None:
            init.zeros_(self.bias)
        super().init_weights(rng)

    def forward(self, input: Array) -> Array:
        """(B, C_in, H, W) -> (B, C_out, H_out, W_out)."""
        return self._deform(input, self._offsets(input), None)


class ModulatedDeformConv2dPack(_PackBase):
    """mmcv's ``ModulatedDeformConv2dPack`` (DCNv2 as a drop-in for a convolution):
    ``forward(input)``.

    ``conv_offset`` produces 3 * deform_groups * kh * kw channels, split as mmcv does: the first
    2 * deform_groups * kh * kw are the offsets, the rest go through a sigmoid and are the mask.
    Parameters: ``weight``, ``bias`` (default True, as mmcv), ``conv_offset.weight``,
    ``conv_offset.bias``.

    Initialisation (mmcv's): weight U(-1/sqrt(n), 1/sqrt(n)) with n = in_channels * kh * kw (mmcv
    does not divide by groups); bias 0; ``conv_offset`` weight and bias 0 (offsets 0, mask 0.5).
    """

    offset_factor = 3

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        deform_groups: int = 1,
        bias: bool = True,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            deform_groups,
            bias,
            rng,
        )

    def init_weights(self, rng: np.random.Generator | None = None) -> None:
        bound = 1 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        init.uniform_(self.weight, -bound, bound, rng)
        if self.bias is not None:
            init.zeros_(self.bias)
        super().init_weights(rng)

    def forward(self, input: Array) -> Array:
        """(B, C_in, H, W) -> (B, C_out, H_out, W_out)."""
        out = self._offsets(input)
        split = 2 * self.deform_groups * self.kernel_size[0] * self.kernel_size[1]
        return self._deform(input, out[:, :split], sigmoid(out[:, split:]))
