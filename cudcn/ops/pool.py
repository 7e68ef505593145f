"""Pooling over (B, C, H, W): max_pool2d, avg_pool2d, adaptive_avg_pool2d, global_avg_pool2d.

Windowed pooling visits the kernel taps: tap (i, j) reads one strided slice of the (padded) input for
all outputs at once, so a pass costs kh * kw vectorised operations whatever the image size.

float16 and bfloat16: window sums and the gradients of overlapping windows accumulate in float32 and
are rounded once to the input dtype (max pooling picks values, so its forward stays in 16 bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cudcn.arrays import Array
from cudcn.autograd import Function, mean
from cudcn.backends import array_module
from cudcn.dtypes import narrow, widen
from cudcn.ops._checks import check_arrays, check_bool, check_ndim, int_pair


@dataclass(frozen=True)
class PoolGeometry:
    """Normalised parameters of one windowed pooling call."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    out_h: int
    out_w: int

    def tap_slices(self, i: int, j: int) -> tuple[slice, slice]:
        """Rows and columns of the padded input that tap (i, j) reads for every output."""
        (sh, sw), (oh, ow) = self.stride, (self.out_h, self.out_w)
        return slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw)

    def taps(self) -> list[tuple[slice, slice]]:
        kh, kw = self.kernel
        return [self.tap_slices(i, j) for i in range(kh) for j in range(kw)]


def check_pool2d(input: Array, kernel_size: Any, stride: Any, padding: Any) -> PoolGeometry:
    """Validate the arguments of a windowed pooling and return its geometry (``stride=None``:
    the kernel size; padding at most half the kernel, as in PyTorch)."""
    check_arrays({"input": input})
    check_ndim("input", input, 4, "(B, C, H, W)")
    kernel = int_pair("kernel_size", kernel_size, 1)
    stride = kernel if stride is None else int_pair("stride", stride, 1)
    padding = int_pair("padding", padding, 0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"padding must be at most half of kernel_size {kernel}, got {padding}")
    height, width = input.shape[2:]
    out_h = (height + 2 * padding[0] - kernel[0]) // stride[0] + 1
    out_w = (width + 2 * padding[1] - kernel[1]) // stride[1] + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"output size must be at least 1x1, got {out_h}x{out_w} for input {height}x{width}, "
            f"kernel {kernel}, stride {stride}, padding {padding}"
        )
    return PoolGeometry(kernel, stride, padding, out_h, out_w)


def _pad(input: Array, padding: tuple[int, int], value: float) -> Array:
    """``input`` padded on H and W with ``value`` (the input itself when there is no padding)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return input
    xp = array_module(input)
    b, c, h, w = input.shape
    out = xp.full((b, c, h + 2 * ph, w + 2 * pw), value, dtype=input.dtype)
    out[:, :, ph : ph + h, pw : pw + w] = input
    return out


def _unpad(padded: Array, padding: tuple[int, int], shape: tuple[int, ...]) -> Array:
    ph, pw = padding
    return padded[:, :, ph : ph + shape[2], pw : pw + shape[3]]


class MaxPool2dFunction(Function):
    """Tape node of max_pool2d; the gradient goes to the first maximum of each window (row-major
    tap order), as in PyTorch."""

    def forward(self, input, *, kernel_size, stride, padding):
        geo = self.geo = check_pool2d(input, kernel_size, stride, padding)
        xp = array_module(input)
        padded = _pad(input, geo.padding, -np.inf)
        taps = geo.taps()
        rows, cols = taps[0]
        out = padded[:, :, rows, cols].copy()
        argmax = xp.zeros(out.shape, dtype=np.int16)
        for k, (rows, cols) in enumerate(taps[1:], start=1):
            value = padded[:, :, rows, cols]
            xp.copyto(argmax, k, where=value > out)
            xp.maximum(out, value, out=out)
        self.shape = input.shape
        self.save_for_backward(argmax)
        return out

    def backward(self, grad_out):  # the tape rounds the gradient to the input's dtype
        (argmax,) = self.saved
        geo = self.geo
        grad_out = widen(grad_out)
        xp = array_module(grad_out)
        b, c, h, w = self.shape
        ph, pw = geo.padding
        g_padded = xp.zeros((b, c, h + 2 * ph, w + 2 * pw), dtype=grad_out.dtype)
        for k, (rows, cols) in enumerate(geo.taps()):
            g_padded[:, :, rows, cols] += grad_out * (argmax == k)
        return (xp.ascontiguousarray(_unpad(g_padded, geo.padding, self.shape)),)


class AvgPool2dFunction(Function):
    """Tape node of avg_pool2d."""

    def forward(self, input, *, kernel_size, stride, padding, count_include_pad):
        geo = self.geo = check_pool2d(input, kernel_size, stride, padding)
        dtype, input = input.dtype, widen(input)
        xp = array_module(input)
        padded = _pad(input, geo.padding, 0.0)
        total = None
        for rows, cols in geo.taps():
            window = padded[:, :, rows, cols]
            total = window.copy() if total is None else total + window
        kh, kw = geo.kernel
        if count_include_pad:
            self.divisor = kh * kw
        else:  # number of real (unpadded) pixels in each window, shape (H_out, W_out)
            ones = _pad(xp.ones((1, 1, *input.shape[2:]), input.dtype), geo.padding, 0.0)
            self.divisor = sum(ones[0, 0, rows, cols] for rows, cols in geo.taps())
        self.shape = input.shape
        assert total is not None  # kernel_size >= 1: at least one tap
        return narrow(total / self.divisor, dtype)

    def backward(self, grad_out):  # the tape rounds the gradient to the input's dtype
        geo = self.geo
        grad_out = widen(grad_out)
        xp = array_module(grad_out)
        b, c, h, w = self.shape
        ph, pw = geo.padding
        g_padded = xp.zeros((b, c, h + 2 * ph, w + 2 * pw), dtype=grad_out.dtype)
        share = grad_out / self.divisor
        for rows, cols in geo.taps():
            g_padded[:, :, rows, cols] += share
        return (xp.ascontiguousarray(_unpad(g_padded, geo.padding, self.shape)),)


def _adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive bins: ``[floor(i * size / out), ceil((i + 1) * size / out))``."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


class AdaptiveAvgPool2dFunction(Function):
    """Tape node of adaptive_avg_pool2d."""

    def forward(self, input, *, output_size):
        check_arrays({"input": input})
        check_ndim("input", input, 4, "(B, C, H, W)")
        oh, ow = int_pair("output_size", output_size, 1)
        h, w = input.shape[2:]
        self.bins = (_adaptive_bins(h, oh), _adaptive_bins(w, ow))
        self.shape = input.shape
        out = array_module(input).empty((*input.shape[:2], oh, ow), dtype=input.dtype)
        wide = widen(input)
        for i, (y0, y1) in enumerate(self.bins[0]):
            for j, (x0, x1) in enumerate(self.bins[1]):
                out[:, :, i, j] = wide[:, :, y0:y1, x0:x1].mean(axis=(2, 3))  # rounded once
        return out

    def backward(self, grad_out):  # the tape rounds the gradient to the input's dtype
        grad_out = widen(grad_out)
        g = array_module(grad_out).zeros(self.shape, dtype=grad_out.dtype)
        for i, (y0, y1) in enumerate(self.bins[0]):
            for j, (x0, x1) in enumerate(self.bins[1]):
                area = (y1 - y0) * (x1 - x0)
                g[:, :, y0:y1, x0:x1] += grad_out[:, :, i, j, None, None] / area
        return (g,)


def max_pool2d(
    input: Array,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
) -> Array:
    """Maximum over sliding windows, as ``torch.nn.functional.max_pool2d`` (no ceil mode).

    Args:
        input: (B, C, H, W).
        kernel_size, stride, padding: an int or an (h, w) pair; ``stride`` defaults to
            ``kernel_size``; padding (with -inf) is at most half the kernel.

    Returns:
        (B, C, H_out, W_out), ``H_out = (H + 2 * padding_h - kernel_h) // stride_h + 1``. The
        gradient of each output goes to the first maximal element of its window.

    Example:
        >>> import numpy as np, cudcn
        >>> cudcn.functional.max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0]
        array([[ 5.,  7.],
               [13., 15.]])
    """
    return MaxPool2dFunction.apply(input, kernel_size=kernel_size, stride=stride, padding=padding)


def avg_pool2d(
    input: Array,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    count_include_pad: bool = True,
) -> Array:
    """Mean over sliding windows, as ``torch.nn.functional.avg_pool2d`` (no ceil mode).

    Args:
        input: (B, C, H, W).
        kernel_size, stride, padding: as :func:`max_pool2d` (zero padding).
        count_include_pad: divide by the full window size (True, PyTorch's default) or by the
            number of unpadded pixels in the window.

    Returns:
        (B, C, H_out, W_out), sizes as :func:`max_pool2d`.
    """
    return AvgPool2dFunction.apply(
        input,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        count_include_pad=check_bool("count_include_pad", count_include_pad),
    )


def adaptive_avg_pool2d(input: Array, output_size: int | tuple[int, int]) -> Array:
    """Average over PyTorch's adaptive bins, as ``torch.nn.functional.adaptive_avg_pool2d``.

    Args:
        input: (B, C, H, W).
        output_size: an int or an (oh, ow) pair; output row i averages input rows
            ``floor(i * H / oh)`` to ``ceil((i + 1) * H / oh) - 1`` (same for columns).

    Returns:
        (B, C, oh, ow).
    """
    return AdaptiveAvgPool2dFunction.apply(input, output_size=output_size)


def global_avg_pool2d(input: Array) -> Array:
    """Mean over the spatial axes: (B, C, H, W) -> (B, C) (``adaptive_avg_pool2d(input, 1)``
    flattened).

    Example:
        >>> import numpy as np, cudcn
        >>> cudcn.functional.global_avg_pool2d(np.ones((2, 3, 4, 4))).shape
        (2, 3)
    """
    if not hasattr(input, "ndim") or input.ndim != 4:
        raise ValueError(f"input must be 4-D (B, C, H, W), got shape {getattr(input, 'shape', None)}")
    return mean(input, axis=(2, 3))
