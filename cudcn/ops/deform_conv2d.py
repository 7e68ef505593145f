"""deform_conv2d: its parameters object, backend dispatch, and the autograd Function.

Three layers (as in flash-attention): the backends' launchers (``cudcn.backends.*``), the array-level
pair :func:`deform_conv2d_forward` / :func:`deform_conv2d_backward` defined here, and the public
differentiable :func:`cudcn.functional.deform_conv2d`. The arguments are validated once, into a
:class:`DeformConv2dParams`, which every backend receives unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cudcn.arrays import Array
from cudcn.autograd import Function
from cudcn.backends import array_module, get_backend, new_output
from cudcn.ops._checks import check_arrays, check_ndim, check_shape, contiguous, int_pair

Pair = tuple[int, int]


@dataclass(frozen=True)
class DeformConv2dParams:
    """The parameters of one deform_conv2d call, validated against its arrays by :meth:`check`;
    passed unchanged, as the last argument, to the reference, the CPU backend and the launch code.

    ``groups = C_in // weight.shape[1]`` and ``offset_groups = offset.shape[1] // (2 * kh * kw)``
    come from the arrays' shapes."""

    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int
    offset_groups: int

    @classmethod
    def check(
        cls,
        input: Array,
        offset: Array,
        weight: Array,
        bias: Array | None,
        stride: Any,
        padding: Any,
        dilation: Any,
        mask: Array | None,
    ) -> DeformConv2dParams:
        """Validate every argument of deform_conv2d (docs/spec.md) and return its parameters."""
        check_arrays(
            {"input": input, "offset": offset, "weight": weight, "bias": bias, "mask": mask},
            optional=("bias", "mask"),
        )
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
        params = cls(stride, padding, dilation, groups, offset_groups)
        out_h, out_w = params.output_size(height, width, kh, kw)
        if out_h < 1 or out_w < 1:
            raise ValueError(
                f"output size must be at least 1x1, got {out_h}x{out_w} for input "
                f"{height}x{width}, kernel {kh}x{kw}, stride {stride}, padding {padding}, "
                f"dilation {dilation}"
            )
        layout = "(B, 2 * offset_groups * kh * kw, H_out, W_out)"
        check_shape("offset", offset, (batch, 2 * offset_groups * taps, out_h, out_w), layout)
        if mask is not None:
            layout = "(B, offset_groups * kh * kw, H_out, W_out)"
            check_ndim("mask", mask, 4, layout)
            check_shape("mask", mask, (batch, offset_groups * taps, out_h, out_w), layout)
        if bias is not None:
            check_shape("bias", bias, (out_channels,), "(C_out,)")
        return params

    def output_size(self, height: int, width: int, kh: int, kw: int) -> Pair:
        """``(H_out, W_out)`` for an input of ``height`` x ``width`` and a kh x kw kernel."""
        return (
            (height + 2 * self.padding[0] - (self.dilation[0] * (kh - 1) + 1)) // self.stride[0] + 1,
            (width + 2 * self.padding[1] - (self.dilation[1] * (kw - 1) + 1)) // self.stride[1] + 1,
        )


def run_forward(
    input: Array,
    offset: Array,
    weight: Array,
    bias: Array | None,
    mask: Array | None,
    p: DeformConv2dParams,
) -> Array:
    if input.shape[0] == 0:
        shape = (0, weight.shape[0], *offset.shape[2:])
        return new_output(array_module(input), shape, input.dtype)
    args = [contiguous(a) for a in (input, offset, weight, bias, mask)]
    return get_backend(input).deform_conv2d_forward(*args, p)


def run_backward(
    grad_out: Array,
    input: Array,
    offset: Array,
    weight: Array,
    bias: Array | None,
    mask: Array | None,
    p: DeformConv2dParams,
) -> tuple[Array, Array, Array, Array | None, Array | None]:
    check_arrays({"input": input, "grad_out": grad_out})
    expected = (input.shape[0], weight.shape[0], *offset.shape[2:])
    check_shape("grad_out", grad_out, expected, "(B, C_out, H_out, W_out)")
    if input.shape[0] == 0:
        xp = array_module(input)
        return (
            xp.zeros_like(input),
            xp.zeros_like(offset),
            xp.zeros_like(weight),
            None if bias is None else xp.zeros_like(bias),
            None if mask is None else xp.zeros_like(mask),
        )
    args = [contiguous(a) for a in (grad_out, input, offset, weight, bias, mask)]
    return get_backend(input).deform_conv2d_backward(*args, p)


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
    p = DeformConv2dParams.check(input, offset, weight, bias, stride, padding, dilation, mask)
    return run_forward(input, offset, weight, bias, mask, p)


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
    p = DeformConv2dParams.check(input, offset, weight, bias, stride, padding, dilation, mask)
    return run_backward(grad_out, input, offset, weight, bias, mask, p)


class DeformConv2dFunction(Function):
    """Tape node of deform_conv2d; inputs ``(input, offset, weight, bias, mask)``."""

    def forward(self, input, offset, weight, bias, mask, *, stride, padding, dilation):
        self.params = DeformConv2dParams.check(input, offset, weight, bias, stride, padding, dilation, mask)
        self.save_for_backward(input, offset, weight, bias, mask)
        return run_forward(input, offset, weight, bias, mask, self.params)

    def backward(self, grad_out):
        input, offset, weight, bias, mask = self.saved
        return run_backward(grad_out, input, offset, weight, bias, mask, self.params)
