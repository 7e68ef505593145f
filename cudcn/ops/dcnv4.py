"""dcnv4: DCNv4's core, which is dcnv3's aggregation (``cudcn.ops.dcnv3``) with the offsets and the
mask packed in one tensor.

DCNv4's packing (its ``DCNv4Function``, as its module's ``offset_mask`` Linear produces it):
``offset_mask`` (N, H_out, W_out, L) holds, for group g, the P (x, y) offset pairs at channels
``g·3P + 2p`` and ``g·3P + 2p + 1`` and the P mask values at ``g·3P + 2P + p``; channels from G·3P
on are padding, never read (DCNv4's module rounds L up to a multiple of 8:
``L = ceil(G·P·3 / 8)·8``, :func:`packed_width`). Their gradient is 0. No softmax is applied, and
none of DCNv4's restrictions (3x3 kernels, D % 16 == 0) hold here.
"""

from __future__ import annotations

from typing import Any

from cudcn.arrays import Array
from cudcn.autograd import Function
from cudcn.backends import array_module
from cudcn.ops._checks import check_arrays, check_ndim
from cudcn.ops.dcnv3 import DCNv3Params, Pair, run_backward, run_forward


def packed_width(group: int, points: int) -> int:
    """DCNv4's padded last axis for G groups of P points: ``ceil(G·P·3 / 8)·8``."""
    return -(-group * points * 3 // 8) * 8


def check_dcnv4(input: Array, offset_mask: Array, *args: Any) -> DCNv3Params:
    """Validate every argument of dcnv4 (docs/spec.md) and return its parameters; ``args`` are
    kernel_size, stride, padding, dilation, group, offset_scale, remove_center."""
    check_arrays({"input": input, "offset_mask": offset_mask})
    p = DCNv3Params.build(input, *args)
    layout = "(N, H_out, W_out, L)"
    check_ndim("offset_mask", offset_mask, 4, layout)
    n, (ho, wo) = int(input.shape[0]), p.output_size
    used = p.group * p.points * 3
    widths = sorted({used, packed_width(p.group, p.points)})
    if tuple(offset_mask.shape[:3]) != (n, ho, wo) or int(offset_mask.shape[3]) not in widths:
        raise ValueError(
            f"offset_mask must have shape (N, H_out, W_out, L) = ({n}, {ho}, {wo}, L) with L = G·P·3 "
            f"= {used} or DCNv4's padded ceil(G·P·3 / 8)·8 = {widths[-1]} (G = {p.group}, P = "
            f"{p.points} points), got {tuple(offset_mask.shape)}"
        )
    return p


def split(offset_mask: Array, group: int, points: int) -> tuple[Array, Array]:
    """Views of the packed (N, H_out, W_out, L) tensor as the shared pieces take them: offsets
    (N, Q, G, P, 2) and the mask (N, Q, G, P), Q = H_out·W_out."""
    n, q = int(offset_mask.shape[0]), int(offset_mask.shape[1]) * int(offset_mask.shape[2])
    per_group = offset_mask[..., : group * 3 * points].reshape(n, q, group, 3 * points)
    return per_group[..., : 2 * points].reshape(n, q, group, points, 2), per_group[..., 2 * points :]


def pack(offset: Array, mask: Array, width: int) -> Array:
    """The packed (N, H_out, W_out, ``width``) tensor of offsets (N, Q, G, P, 2) and a mask
    (N, Q, G, P) (shapes of :func:`split`), zeros in the padding; ``H_out·W_out`` from the caller."""
    xp = array_module(offset)
    n, q, g, pts = (int(v) for v in mask.shape)
    out = xp.zeros((n, q, width), dtype=mask.dtype)
    body = xp.concatenate([offset.reshape(n, q, g, 2 * pts), mask], axis=-1)
    out[..., : g * 3 * pts] = body.reshape(n, q, g * 3 * pts)
    return out


def run_dcnv4_backward(
    grad_out: Array, input: Array, offset_mask: Array, p: DCNv3Params
) -> tuple[Array, Array]:
    g_input, g_offset, g_mask = run_backward(grad_out, input, *split(offset_mask, p.group, p.points), p)
    g_packed = pack(g_offset, g_mask, int(offset_mask.shape[3]))
    return g_input, g_packed.reshape(offset_mask.shape)


def dcnv4_forward(
    input: Array,
    offset_mask: Array,
    kernel_size: int | Pair,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> Array:
    """Array-level forward of :func:`dcnv4` (no tape): ``out`` (N, H_out, W_out, C)."""
    args = (kernel_size, stride, padding, dilation, group, offset_scale, remove_center)
    p = check_dcnv4(input, offset_mask, *args)
    return run_forward(input, *split(offset_mask, p.group, p.points), p)


def dcnv4_backward(
    grad_out: Array,
    input: Array,
    offset_mask: Array,
    kernel_size: int | Pair,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> tuple[Array, Array]:
    """Array-level backward of :func:`dcnv4`: the gradients ``(input, offset_mask)`` given
    ``grad_out`` (N, H_out, W_out, C); the padding channels of ``offset_mask`` get 0."""
    args = (kernel_size, stride, padding, dilation, group, offset_scale, remove_center)
    p = check_dcnv4(input, offset_mask, *args)
    return run_dcnv4_backward(grad_out, input, offset_mask, p)


class DCNv4Function(Function):
    """Tape node of dcnv4; inputs ``(input, offset_mask)``."""

    def forward(self, input, offset_mask, *, params):
        self.params = check_dcnv4(input, offset_mask, *params)
        self.save_for_backward(input, offset_mask)
        return run_forward(input, *split(offset_mask, self.params.group, self.params.points), self.params)

    def backward(self, grad_out):
        input, offset_mask = self.saved
        return run_dcnv4_backward(grad_out, input, offset_mask, self.params)


def dcnv4(
    input: Array,
    offset_mask: Array,
    kernel_size: int | Pair,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> Array:
    """DCNv4's core (``DCNv4Function``): :func:`cudcn.functional.dcnv3` with the offsets and the
    mask packed in one tensor, any kernel size and any channels per group.

    Args:
        input: (N, H, W, G·D), channels last.
        offset_mask: (N, H_out, W_out, L), L = G·P·3 or DCNv4's padded ``ceil(G·P·3 / 8)·8``. For
            group g: channels ``g·3P + 2p`` and ``g·3P + 2p + 1`` are point p's **x** and **y**
            offsets (as dcnv3's, scaled by ``offset_scale``), channel ``g·3P + 2P + p`` its mask
            value, used as given (no softmax); channels from G·3P on are ignored (gradient 0).
        kernel_size, stride, padding, dilation, group, offset_scale, remove_center: as for
            :func:`cudcn.functional.dcnv3` (P = kh·kw, less one with ``remove_center``).

    Returns:
        (N, H_out, W_out, G·D), what dcnv3 gives for the unpacked offsets and mask.

    ``cudcn.ops.dcnv3_to_dcnv4`` / ``dcnv4_to_dcnv3`` convert between the two layouts.

    Example:
        >>> import numpy as np, cudcn
        >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
        >>> om = np.zeros((1, 4, 4, 32))                         # G·P·3 = 27, padded to 32
        >>> om[..., 18:27] = 1 / 9                               # the mask: a 3x3 box filter
        >>> float(cudcn.functional.dcnv4(x, om, 3, padding=1)[0, 1, 1, 0])
        5.0
    """
    args = (kernel_size, stride, padding, dilation, group, offset_scale, remove_center)
    return DCNv4Function.apply(input, offset_mask, params=args)
