"""deform_conv2d: argument checks, backend dispatch, and the autograd Function.

Three layers (as in flash-attention): the backends' launchers (``cudcn.backends.*``), the array-level
pair :func:`deform_conv2d_forward` / :func:`deform_conv2d_backward` defined here, and the public
differentiable :func:`deform_conv2d` (re-exported by ``cudcn.functional``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cudcn.autograd import Function
from cudcn.backends import array_module, get_backend, new_output
from cudcn.ops._checks import check_arrays, check_ndim, check_shape, contiguous, int_pair

Array = Any


@dataclass(frozen=True)
class ConvGeometry:
    """Normalised parameters of one deform_conv2d call, derived from the argument shapes."""

    batch: int
    in_channels: int
    out_channels: int
    out_h: int
    out_w: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    offset_groups: int

    def params(self) -> dict[str, Any]:
        """The keyword arguments every backend's deform_conv2d functions take."""
        return {
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
            "offset_groups": self.offset_groups,
        }


def check_deform_conv2d(
    input: Array,
    offset: Array,
    weight: Array,
    bias: Array | None,
    stride: Any,
    padding: Any,
    dilation: Any,
    mask: Array | None,
) -> ConvGeometry:
    """Validate every argument of deform_conv2d (SPEC) and return the call's geometry."""
    check_arrays({"input": input, "offset": offset, "weight": weight, "bias": bias, "mask": mask})
    stride = int_pair("stride", stride, 1)
    padding = int_pair("padding", padding, 0)
    dilation = int_pair("dilation", dilation, 1)
    check_ndim("input", input, 4, "(B, C_in, H, W)")
    check_ndim("weight", weight, 4, "(C_out, C_in / groups, kh, kw)")
    check_ndim("offset", offset, 4, "(B, 2 * offset_groups * kh * kw, H_out, W_out)")
    batch, in_channels, height, width = (int(s) for s in input.shape)
    out_channels, group_channels, kh, kw = (int(s) for s in weight.shape)
    if min(out_channels, group_channels, kh, kw) < 1:
        raise ValueError(f"weight must have no empty dimension, got shape {tuple(weight.shape)}")
    if in_channels % group_channels:
        raise ValueError(
            f"weight.shape[1] must divide input channels {in_channels} "
            f"(groups = C_in // weight.shape[1]), got weight.shape[1] = {group_channels}"
        )
    groups = in_channels // group_channels
    if out_channels % groups:
        raise ValueError(
            f"weight.shape[0] (C_out) must be divisible by groups = {groups}, got {out_channels}"
        )
    taps = kh * kw
    offset_channels = int(offset.shape[1])
    if offset_channels == 0 or offset_channels % (2 * taps):
        raise ValueError(
            f"offset.shape[1] must be a positive multiple of 2 * kh * kw = {2 * taps}, "
            f"got {offset_channels}"
        )
    offset_groups = offset_channels // (2 * taps)
    if in_channels % offset_groups:
        raise ValueError(
            f"offset groups ({offset_groups} = offset.shape[1] // (2 * kh * kw)) must divide "
            f"input channels {in_channels}"
        )
    out_h = (height + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    out_w = (width + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"output size must be at least 1x1, got {out_h}x{out_w} for input {height}x{width}, "
            f"kernel {kh}x{kw}, stride {stride}, padding {padding}, dilation {dilation}"
        )
    check_shape(
        "offset",
        offset,
        (batch, 2 * offset_groups * taps, out_h, out_w),
        "(B, 2 * offset_groups * kh * kw, H_out, W_out)",
    )
    if mask is not None:
        check_ndim("mask", mask, 4, "(B, offset_groups * kh * kw, H_out, W_out)")
        check_shape(
            "mask",
            mask,
            (batch, offset_groups * taps, out_h, out_w),
            "(B, offset_groups * kh * kw, H_out, W_out)",
        )
    if bias is not None:
        check_shape("bias", bias, (out_channels,), "(C_out,)")
    return ConvGeometry(
        batch,
        in_channels,
        out_channels,
        out_h,
        out_w,
        (kh, kw),
        stride,
        padding,
        dilation,
        groups,
        offset_groups,
    )


def deform_conv2d_forward(
    input: Array,
    offset: Array,
    weight: Array,
    bias: Array | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Array | None = None,
) -> Array:
    """Array-level forward of :func:`deform_conv2d` (no tape). Same arguments; returns
    ``out`` (B, C_out, H_out, W_out) of the inputs' library and dtype."""
    geo = check_deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)
    if geo.batch == 0:
        shape = (0, geo.out_channels, geo.out_h, geo.out_w)
        return new_output(array_module(input), shape, input.dtype)
    args = [contiguous(a) for a in (input, offset, weight, bias, mask)]
    return get_backend(input).deform_conv2d_forward(*args, **geo.params())


def deform_conv2d_backward(
    grad_out: Array,
    input: Array,
    offset: Array,
    weight: Array,
    bias: Array | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Array | None = None,
) -> tuple[Array, Array, Array, Array | None, Array | None]:
    """Array-level backward of :func:`deform_conv2d`: gradients of the loss with respect to
    ``(input, offset, weight, bias, mask)`` given ``grad_out`` (B, C_out, H_out, W_out); ``None`` in
    the slots of ``bias`` and ``mask`` when they were ``None``. Recomputes what it needs."""
    geo = check_deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)
    check_arrays({"input": input, "grad_out": grad_out})
    check_shape(
        "grad_out",
        grad_out,
        (geo.batch, geo.out_channels, geo.out_h, geo.out_w),
        "(B, C_out, H_out, W_out)",
    )
    if geo.batch == 0:
        xp = array_module(input)
        return (
            xp.zeros_like(input),
            xp.zeros_like(offset),
            xp.zeros_like(weight),
            None if bias is None else xp.zeros_like(bias),
            None if mask is None else xp.zeros_like(mask),
        )
    args = [contiguous(a) for a in (grad_out, input, offset, weight, bias, mask)]
    return get_backend(input).deform_conv2d_backward(*args, **geo.params())


class DeformConv2dFunction(Function):
    """Tape node of deform_conv2d; inputs ``(input, offset, weight, bias, mask)``."""

    def forward(self, input, offset, weight, bias, mask, *, stride, padding, dilation):
        self.save_for_backward(input, offset, weight, bias, mask)
        self.conv_params = (stride, padding, dilation)
        return deform_conv2d_forward(input, offset, weight, bias, stride, padding, dilation, mask)

    def backward(self, grad_out):
        input, offset, weight, bias, mask = self.saved
        stride, padding, dilation = self.conv_params
        return deform_conv2d_backward(
            grad_out, input, offset, weight, bias, stride, padding, dilation, mask
        )
