"""dcnv3: InternImage's DCNv3 core on the deformable-aggregation core (``cudcn.ops.ms_deform_attn``).

DCNv3 is the core with one level (the input itself, channels-last, so ``value`` is a free reshape),
one query per output pixel, the groups as heads and the mask as the weights; only the sampling
locations are computed here, in pixels, from InternImage's grid and the offsets (docs/spec.md):

    x = (c_w − pad_w + wo·stride_w − c_w·s) + (i·dil_w + offset_x)·s,   c_w = (dil_w·(kw − 1)) // 2
    y = (c_h − pad_h + ho·stride_h − c_h·s) + (j·dil_h + offset_y)·s,   c_h = (dil_h·(kh − 1)) // 2

for tap p = (i, j), i over the kernel's width (outer), j over its height (inner), the centre
(kw // 2, kh // 2) skipped when ``remove_center``; ``s = offset_scale``. InternImage pads the input
with zeros and samples it with ``grid_sample(align_corners=False, padding_mode="zeros")``: in the
unpadded frame used here that is the same values (a zero pad row is a row outside).

The pieces shared with dcnv4 (``cudcn.ops.dcnv4``) take the offsets as (N, Q, G, P, 2) (x, y) and
the mask as (N, Q, G, P), Q = H_out·W_out: :func:`sampling_locations`, :func:`run_forward`,
:func:`run_backward`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cudcn.arrays import Array
from cudcn.autograd import Function
from cudcn.backends import array_module
from cudcn.dtypes import compute_dtype
from cudcn.ops._checks import (
    check_arrays,
    check_bool,
    check_ndim,
    check_shape,
    finite_float,
    int_pair,
    positive_int,
)
from cudcn.ops.ms_deform_attn import MSDeformAttnParams, aggregate_backward, aggregate_forward

Pair = tuple[int, int]


@dataclass(frozen=True)
class DCNv3Params:
    """The parameters of one dcnv3 / dcnv4 call, validated by :meth:`build` (and :meth:`check` for
    dcnv3's offset and mask); passed unchanged, as the last argument, to the reference.

    Pairs are (h, w). ``input_size`` (H, W) and ``output_size`` (H_out, W_out) come from the input;
    ``H_out = (H + 2·pad_h − (dil_h·(kh − 1) + 1)) // stride_h + 1`` (same for W)."""

    kernel_size: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    group: int
    offset_scale: float
    remove_center: bool
    input_size: Pair
    output_size: Pair

    @property
    def points(self) -> int:
        """P, the sampling points per group and output pixel: kh·kw, less the centre if removed."""
        return self.kernel_size[0] * self.kernel_size[1] - int(self.remove_center)

    def taps(self) -> list[Pair]:
        """The kernel taps ``(i, j)`` in InternImage's order: i over the width (outer), j over the
        height (inner), the centre ``(kw // 2, kh // 2)`` left out when ``remove_center``."""
        kh, kw = self.kernel_size
        centre = (kw // 2, kh // 2)
        return [(i, j) for i in range(kw) for j in range(kh) if not (self.remove_center and (i, j) == centre)]

    def core(self) -> MSDeformAttnParams:
        """The core's parameters: one level, the input, in pixel units."""
        return MSDeformAttnParams(levels=(self.input_size,), starts=(0,), normalized=False)

    @classmethod
    def build(
        cls,
        input: Array,
        kernel_size: Any,
        stride: Any,
        padding: Any,
        dilation: Any,
        group: Any,
        offset_scale: Any,
        remove_center: Any,
    ) -> DCNv3Params:
        """Validate the input and every argument but the offsets and mask; return the parameters."""
        check_arrays({"input": input})
        check_ndim("input", input, 4, "(N, H, W, G·D), channels last")
        kernel = int_pair("kernel_size", kernel_size, 1)
        stride = int_pair("stride", stride, 1)
        padding = int_pair("padding", padding, 0)
        dilation = int_pair("dilation", dilation, 1)
        group = positive_int("group", group)
        scale = finite_float("offset_scale", offset_scale)
        remove_center = check_bool("remove_center", remove_center)
        if remove_center and (kernel[0] % 2 == 0 or kernel[1] % 2 == 0):
            raise ValueError(f"remove_center needs odd kernel sizes (a centre tap), got kernel_size {kernel}")
        _, height, width, channels = (int(v) for v in input.shape)
        if height < 1 or width < 1:
            raise ValueError(f"input must have H, W >= 1, got shape {tuple(input.shape)}")
        if channels % group:
            raise ValueError(f"input channels ({channels}) must be divisible by group, got group = {group}")
        out = tuple(
            (size + 2 * pad - (dil * (k - 1) + 1)) // st + 1
            for size, pad, dil, k, st in zip((height, width), padding, dilation, kernel, stride, strict=True)
        )
        if min(out) < 1:
            raise ValueError(
                f"output size must be at least 1x1, got {out[0]}x{out[1]} for input {height}x{width}, "
                f"kernel {kernel}, stride {stride}, padding {padding}, dilation {dilation}"
            )
        return cls(kernel, stride, padding, dilation, group, scale, remove_center, (height, width), out)

    @classmethod
    def check(
        cls,
        input: Array,
        offset: Array,
        mask: Array,
        kernel_size: Any,
        stride: Any,
        padding: Any,
        dilation: Any,
        group: Any,
        offset_scale: Any,
        remove_center: Any,
    ) -> DCNv3Params:
        """Validate every argument of dcnv3 (docs/spec.md) and return its parameters."""
        check_arrays({"input": input, "offset": offset, "mask": mask})
        p = cls.build(input, kernel_size, stride, padding, dilation, group, offset_scale, remove_center)
        n, (ho, wo), g, pts = int(input.shape[0]), p.output_size, p.group, p.points
        layout = "(N, H_out, W_out, G·P·2)"
        check_ndim("offset", offset, 4, layout)
        check_shape("offset", offset, (n, ho, wo, g * pts * 2), f"{layout}, P = {pts} points")
        layout = "(N, H_out, W_out, G·P)"
        check_ndim("mask", mask, 4, layout)
        check_shape("mask", mask, (n, ho, wo, g * pts), f"{layout}, P = {pts} points")
        return p


def sampling_locations(offset: Array, p: DCNv3Params) -> Array:
    """The core's locations (N, Q, G, 1, P, 2), pixel (x, y) in the compute dtype (float32 for a
    16-bit offset), for offsets (N, Q, G, P, 2) (x, y): the formula of the module docstring."""
    xp = array_module(offset)
    wide = compute_dtype(offset.dtype)
    (ho, wo), (sh, sw), (ph, pw), (dh, dw) = p.output_size, p.stride, p.padding, p.dilation
    ch, cw = (dh * (p.kernel_size[0] - 1)) // 2, (dw * (p.kernel_size[1] - 1)) // 2
    s = p.offset_scale
    # The anchor of each output pixel, rounded once from float64: (Q, 1, 1, 2).
    base = np.empty((ho, wo, 2))
    base[..., 0] = (cw - pw + np.arange(wo) * sw - cw * s)[None, :]
    base[..., 1] = (ch - ph + np.arange(ho) * sh - ch * s)[:, None]
    taps = np.array([(i * dw, j * dh) for i, j in p.taps()], dtype=np.float64)  # (P, 2), exact
    base_dev = xp.asarray(base.reshape(ho * wo, 1, 1, 2).astype(wide))
    taps_dev = xp.asarray(taps.astype(wide))
    locations = base_dev + (taps_dev + offset.astype(wide, copy=False)) * wide.type(s)
    return locations[:, :, :, None]


def run_forward(input: Array, offset: Array, mask: Array, p: DCNv3Params) -> Array:
    """Output (N, H_out, W_out, C) for offsets (N, Q, G, P, 2) and a mask (N, Q, G, P)."""
    n, h, w, c = (int(v) for v in input.shape)
    value = input.reshape(n, h * w, p.group, c // p.group)
    weights = mask.reshape(*mask.shape[:3], 1, mask.shape[3])
    out = aggregate_forward(value, sampling_locations(offset, p), weights, p.core())
    return out.reshape(n, *p.output_size, c)


def run_backward(
    grad_out: Array, input: Array, offset: Array, mask: Array, p: DCNv3Params
) -> tuple[Array, Array, Array]:
    """``(grad_input (N, H, W, C), grad_offset (N, Q, G, P, 2), grad_mask (N, Q, G, P))``, each in
    the input's dtype, for ``grad_out`` (N, H_out, W_out, C). The offset gradient is the core's
    location gradient times ``offset_scale``, in the compute dtype, rounded once."""
    n, h, w, c = (int(v) for v in input.shape)
    check_arrays({"input": input, "grad_out": grad_out})
    check_shape("grad_out", grad_out, (n, *p.output_size, c), "(N, H_out, W_out, C)")
    value = input.reshape(n, h * w, p.group, c // p.group)
    weights = mask.reshape(*mask.shape[:3], 1, mask.shape[3])
    q = p.output_size[0] * p.output_size[1]
    g_out = grad_out.reshape(n, q, p.group, c // p.group)
    g_value, g_locations, g_weights = aggregate_backward(
        g_out, value, sampling_locations(offset, p), weights, p.core()
    )
    wide = compute_dtype(input.dtype)
    g_offset = (g_locations.astype(wide, copy=False) * wide.type(p.offset_scale)).astype(input.dtype)
    return g_value.reshape(input.shape), g_offset.reshape(offset.shape), g_weights.reshape(mask.shape)


def _split(offset: Array, mask: Array, p: DCNv3Params) -> tuple[Array, Array]:
    """dcnv3's offset and mask as the shared pieces take them: (N, Q, G, P, 2) and (N, Q, G, P)."""
    n, q = int(offset.shape[0]), p.output_size[0] * p.output_size[1]
    return offset.reshape(n, q, p.group, p.points, 2), mask.reshape(n, q, p.group, p.points)


def dcnv3_forward(
    input: Array,
    offset: Array,
    mask: Array,
    kernel_size: int | Pair,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> Array:
    """Array-level forward of :func:`dcnv3` (no tape): ``out`` (N, H_out, W_out, C)."""
    args = (kernel_size, stride, padding, dilation, group, offset_scale, remove_center)
    p = DCNv3Params.check(input, offset, mask, *args)
    return run_forward(input, *_split(offset, mask, p), p)


def dcnv3_backward(
    grad_out: Array,
    input: Array,
    offset: Array,
    mask: Array,
    kernel_size: int | Pair,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> tuple[Array, Array, Array]:
    """Array-level backward of :func:`dcnv3`: the gradients ``(input, offset, mask)`` given
    ``grad_out`` (N, H_out, W_out, C)."""
    args = (kernel_size, stride, padding, dilation, group, offset_scale, remove_center)
    p = DCNv3Params.check(input, offset, mask, *args)
    g_input, g_offset, g_mask = run_backward(grad_out, input, *_split(offset, mask, p), p)
    return g_input, g_offset.reshape(offset.shape), g_mask.reshape(mask.shape)


class DCNv3Function(Function):
    """Tape node of dcnv3; inputs ``(input, offset, mask)``."""

    def forward(self, input, offset, mask, *, params):
        self.params = DCNv3Params.check(input, offset, mask, *params)
        self.save_for_backward(input, offset, mask)
        return run_forward(input, *_split(offset, mask, self.params), self.params)

    def backward(self, grad_out):
        input, offset, mask = self.saved
        g_input, g_offset, g_mask = run_backward(
            grad_out, input, *_split(offset, mask, self.params), self.params
        )
        return g_input, g_offset.reshape(offset.shape), g_mask.reshape(mask.shape)


def dcnv3(
    input: Array,
    offset: Array,
    mask: Array,
    kernel_size: int | Pair,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> Array:
    """InternImage's DCNv3 core (``DCNv3Function`` / ``dcnv3_core_pytorch``): per group, a
    mask-weighted sum of bilinear samples at offset kernel taps, channels last.

    Notation: N batch, H x W the input, G = ``group`` groups of D channels (C = G·D), kh x kw the
    kernel, P = kh·kw (kh·kw − 1 with ``remove_center``) points, Q = H_out·W_out.

    Args:
        input: (N, H, W, G·D), channels last; group g owns channels ``g·D .. g·D + D − 1``.
        offset: (N, H_out, W_out, G·P·2): for group g and point p, channel ``2·(g·P + p)`` is the
            **x** (column) offset and the next one the **y** (row) offset, in input pixels, both
            multiplied by ``offset_scale``.
        mask: (N, H_out, W_out, G·P), channel ``g·P + p``; used as given (InternImage's module
            applies a softmax over the P points of each group first).
        kernel_size, stride, padding, dilation: an int or an (h, w) pair; zero padding.
        group: G, which must divide C.
        offset_scale: s, scales the offsets *and* the kernel grid around its centre (InternImage's
            rule; the grid is the regular one for s = 1).
        remove_center: drop the centre tap (odd kernels only), P = kh·kw − 1.

    Returns:
        (N, H_out, W_out, G·D), ``H_out = (H + 2·pad_h − (dil_h·(kh − 1) + 1)) // stride_h + 1`` (same
        for W): ``out[n, ho, wo, g·D + d] = Σ_p mask[n, ho, wo, g·P + p] · v_g,d(y_p, x_p)``.

    Point p is tap (i, j) of the kernel in InternImage's **x-major** order (i over the width,
    outer; j over the height, inner; unlike torchvision's row-major order), sampled at
    ``x_p = c_w − pad_w + wo·stride_w + (i·dil_w − c_w + offset_x)·s`` and
    ``y_p = c_h − pad_h + ho·stride_h + (j·dil_h − c_h + offset_y)·s``, ``c = (dil·(k − 1)) // 2``
    (a centred grid), bilinearly with zeros outside the image (what InternImage's zero padding and
    ``grid_sample(align_corners=False)`` give). ``cudcn.ops.dcnv3_to_deform_conv2d`` converts
    the offsets and mask to ``deform_conv2d``'s layout.

    Gradients flow to input, offset and mask. Precision: float32 and float64 compute in their own
    dtype; float16 and bfloat16 are read as stored and computed in float32 (positions, bilinear
    weights, sums), each result rounded once. GPU input gradients are atomic scatters unless under
    ``cudcn.deterministic()``.

    Example:
        >>> import numpy as np, cudcn
        >>> x = np.arange(16.0).reshape(1, 4, 4, 1)             # one channel, one group
        >>> off = np.zeros((1, 4, 4, 18))
        >>> mask = np.full((1, 4, 4, 9), 1 / 9)                  # a 3x3 box filter
        >>> float(cudcn.functional.dcnv3(x, off, mask, 3, padding=1)[0, 1, 1, 0])
        5.0
    """
    args = (kernel_size, stride, padding, dilation, group, offset_scale, remove_center)
    return DCNv3Function.apply(input, offset, mask, params=args)
