"""The configurations, input makers and derived tolerances shared by the dcnv3 and dcnv4 tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cudcn import reference
from cudcn.ops.dcnv3 import DCNv3Params


@dataclass(frozen=True)
class Case:
    """One dcnv3 configuration: input (batch, height, width, group·depth), channels last."""

    id: str
    batch: int = 2
    height: int = 5
    width: int = 6
    group: int = 2
    depth: int = 3
    kernel: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    offset_scale: float = 1.0
    remove_center: bool = False

    def args(self) -> tuple:
        """kernel_size, stride, padding, dilation, group, offset_scale, remove_center."""
        return (
            self.kernel,
            self.stride,
            self.padding,
            self.dilation,
            self.group,
            self.offset_scale,
            self.remove_center,
        )

    def params(self) -> DCNv3Params:
        """The parameters object the reference takes (built from an input of this case's shape)."""
        return DCNv3Params.build(np.zeros(self.input_shape()), *self.args())

    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.height, self.width, self.group * self.depth)


CASES = [
    Case("basic"),
    Case("stride_dilation", height=7, stride=(2, 1), padding=(0, 1), dilation=(2, 1)),
    Case("even_non_square", kernel=(2, 3), padding=(1, 0), group=3, depth=1),
    Case("remove_center_scaled", remove_center=True, offset_scale=0.7, group=1, depth=4),
    Case(
        "kernel_5_outside",
        kernel=(5, 5),
        padding=(2, 2),
        height=4,
        width=4,
        offset_scale=2.0,
        remove_center=True,
    ),
    Case("one_by_one", kernel=(1, 1), padding=(0, 0), group=4, depth=1, batch=1),
]


def make_inputs(
    case: Case, dtype, seed: int, reach: float = 2.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random input, offset (uniform in ±``reach`` pixels, so samples leave the image) and mask
    (signed, not normalised) of ``case``, as ``dtype``."""
    rng = np.random.default_rng(seed)
    p = case.params()
    ho, wo = p.output_size
    x = rng.standard_normal(case.input_shape())
    offset = rng.uniform(-reach, reach, (case.batch, ho, wo, case.group * p.points * 2))
    mask = rng.standard_normal((case.batch, ho, wo, case.group * p.points))
    return tuple(a.astype(dtype) for a in (x, offset, mask))  # type: ignore[return-value]


def position_reach(x: np.ndarray, offset: np.ndarray, p: DCNv3Params) -> float:
    """Largest |sampling position| (pixels) plus one: the float rounding of a position is a small
    multiple of eps times this."""
    (kh, kw), (ph, pw), s = p.kernel_size, p.padding, abs(p.offset_scale)
    size = max(p.output_size[0] * p.stride[0] + ph, p.output_size[1] * p.stride[1] + pw)
    grid = max(p.dilation[0] * kh, p.dilation[1] * kw)
    return size + (1 + s) * grid + s * float(np.abs(offset.astype(np.float64)).max()) + 1


def scales(x, offset, mask, grad_out, p: DCNv3Params) -> tuple[np.ndarray, ...]:
    """Per-element magnitudes of (out, grad_input, grad_offset, grad_mask), float64: the sum of
    |terms| (the reference on absolute values; bilinear weights are >= 0) plus the effect of
    rounding the sampling positions (``reach`` pixels): a bilinear sample's slope is at most
    2 max|x| per pixel and a bilinear weight's 1.

    grad_input's position term is bounded per (batch, channel) by every term of that channel,
    sum |mask·grad_out|, an upper bound on those that touch one pixel."""
    x, offset, mask, grad_out = (a.astype(np.float64) for a in (x, offset, mask, grad_out))
    n, ho, wo, c = grad_out.shape
    g, pts, d = p.group, p.points, c // p.group
    reach, slope = position_reach(x, offset, p), 2 * float(np.abs(x).max())
    abs_out = reference.dcnv3_forward(np.abs(x), offset, np.abs(mask), p)
    abs_grads = reference.dcnv3_backward(np.abs(grad_out), np.abs(x), offset, np.abs(mask), p)
    m = np.abs(mask).reshape(n, ho, wo, g, pts)
    go = np.abs(grad_out).reshape(n, ho, wo, g, d)
    out = abs_out + np.repeat(m.sum(axis=4), d, axis=3) * slope * reach
    per_channel = np.einsum("nhwgp,nhwgd->ngd", m, go).reshape(n, 1, 1, c)
    g_input = abs_grads[0] + per_channel * reach
    g_sum = go.sum(axis=4)[..., None]  # (n, ho, wo, g, 1): Σ_d |grad_out|
    g_offset = abs(p.offset_scale) * m * g_sum * slope * (1 + reach)
    g_offset = np.repeat(g_offset.reshape(n, ho, wo, g * pts), 2, axis=3)
    g_mask = abs_grads[2] + (g_sum * slope * reach * np.ones(pts)).reshape(n, ho, wo, g * pts)
    return out, g_input, g_offset, g_mask
