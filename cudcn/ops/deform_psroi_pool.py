"""deform_psroi_pool: its parameters object, backend dispatch, and the autograd Function.

Three layers: the backends' launchers (``cudcn.backends.*``), the array-level pair
:func:`deform_psroi_pool_forward` / :func:`deform_psroi_pool_backward`, and the public differentiable
:func:`deform_psroi_pool` (re-exported by ``cudcn.functional``). The arguments are validated once,
into a :class:`DeformPSRoIPoolParams`, which every backend receives unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cudcn.arrays import Array
from cudcn.autograd import Function
from cudcn.backends import array_module, get_backend, new_output
from cudcn.ops._checks import (
    check_arrays,
    check_ndim,
    check_shape,
    contiguous,
    finite_float,
    positive_int,
)
from cudcn.ops.deform_roi_pool import check_rois, check_samples_per_axis


@dataclass(frozen=True)
class DeformPSRoIPoolParams:
    """The parameters of one deform_psroi_pool call, validated against its arrays by :meth:`check`
    (``part_size`` resolved); passed unchanged, as the last argument, to the reference, the CPU
    backend and the launch code."""

    spatial_scale: float
    output_dim: int
    group_size: int
    pooled_size: int
    part_size: int
    sample_per_part: int
    trans_std: float

    @classmethod
    def check(
        cls,
        input: Array,
        rois: Array,
        trans: Array | None,
        spatial_scale: Any,
        output_dim: Any,
        group_size: Any,
        pooled_size: Any,
        part_size: Any,
        sample_per_part: Any,
        trans_std: Any,
    ) -> DeformPSRoIPoolParams:
        """Validate the arguments of deform_psroi_pool (docs/spec.md) and return its parameters."""
        check_arrays({"input": input, "rois": rois, "trans": trans}, optional=("trans",))
        check_ndim("input", input, 4, "(B, C, H, W)")
        if min(input.shape[2:]) < 1:
            raise ValueError(f"input must have H, W >= 1, got shape {tuple(input.shape)}")
        check_rois(rois, int(input.shape[0]))
        scale = finite_float("spatial_scale", spatial_scale)
        if scale <= 0:
            raise ValueError(f"spatial_scale must be > 0, got {scale}")
        output_dim = positive_int("output_dim", output_dim)
        group_size = positive_int("group_size", group_size)
        pooled_size = positive_int("pooled_size", pooled_size)
        part_size = pooled_size if part_size is None else positive_int("part_size", part_size)
        sample_per_part = positive_int("sample_per_part", sample_per_part)
        check_samples_per_axis("sample_per_part", sample_per_part)
        channels = int(input.shape[1])
        if output_dim * group_size**2 != channels:
            raise ValueError(
                f"input channels must equal output_dim * group_size**2 = {output_dim} * "
                f"{group_size}**2 = {output_dim * group_size**2}, got {channels}"
            )
        if trans is not None:
            check_ndim("trans", trans, 4, "(R, 2 * num_classes, part_size, part_size)")
            pairs = int(trans.shape[1])
            if pairs == 0 or pairs % 2:
                raise ValueError(
                    f"trans.shape[1] must be a positive even number 2 * num_classes, got {pairs}"
                )
            if output_dim % (pairs // 2):
                raise ValueError(
                    f"output_dim ({output_dim}) must be divisible by num_classes = trans.shape[1] // 2 "
                    f"= {pairs // 2}"
                )
            check_shape(
                "trans",
                trans,
                (rois.shape[0], pairs, part_size, part_size),
                "(R, 2 * num_classes, part_size, part_size)",
            )
        trans_std = finite_float("trans_std", trans_std)
        return cls(scale, output_dim, group_size, pooled_size, part_size, sample_per_part, trans_std)


def run_forward(input: Array, rois: Array, trans: Array | None, p: DeformPSRoIPoolParams) -> Array:
    if rois.shape[0] == 0:
        shape = (0, p.output_dim, p.pooled_size, p.pooled_size)
        return new_output(array_module(input), shape, input.dtype)
    args = [contiguous(a) for a in (input, rois, trans)]
    return get_backend(input).deform_psroi_pool_forward(*args, p)


def run_backward(
    grad_out: Array, input: Array, rois: Array, trans: Array | None, p: DeformPSRoIPoolParams
) -> tuple[Array, Array | None]:
    check_arrays({"input": input, "grad_out": grad_out})
    check_shape(
        "grad_out",
        grad_out,
        (rois.shape[0], p.output_dim, p.pooled_size, p.pooled_size),
        "(R, output_dim, pooled_size, pooled_size)",
    )
    if rois.shape[0] == 0:
        xp = array_module(input)
        return xp.zeros_like(input), None if trans is None else xp.zeros_like(trans)
    args = [contiguous(a) for a in (grad_out, input, rois, trans)]
    return get_backend(input).deform_psroi_pool_backward(*args, p)


def deform_psroi_pool_forward(
    input: Array,
    rois: Array,
    trans: Array | None = None,
    *,
    spatial_scale: float,
    output_dim: int,
    group_size: int,
    pooled_size: int,
    part_size: int | None = None,
    sample_per_part: int = 4,
    trans_std: float = 0.1,
) -> Array:
    """Array-level forward of :func:`deform_psroi_pool` (no tape). Same arguments; returns ``out``
    (R, output_dim, pooled_size, pooled_size) of the inputs' library and dtype."""
    p = DeformPSRoIPoolParams.check(
        input,
        rois,
        trans,
        spatial_scale,
        output_dim,
        group_size,
        pooled_size,
        part_size,
        sample_per_part,
        trans_std,
    )
    return run_forward(input, rois, trans, p)


def deform_psroi_pool_backward(
    grad_out: Array,
    input: Array,
    rois: Array,
    trans: Array | None = None,
    *,
    spatial_scale: float,
    output_dim: int,
    group_size: int,
    pooled_size: int,
    part_size: int | None = None,
    sample_per_part: int = 4,
    trans_std: float = 0.1,
) -> tuple[Array, Array | None]:
    """Array-level backward of :func:`deform_psroi_pool`: the gradients ``(input, trans)`` given
    ``grad_out`` (R, output_dim, pooled_size, pooled_size); ``None`` for ``trans`` when it was
    ``None``. ``rois`` get no gradient. Recomputes what it needs."""
    p = DeformPSRoIPoolParams.check(
        input,
        rois,
        trans,
        spatial_scale,
        output_dim,
        group_size,
        pooled_size,
        part_size,
        sample_per_part,
        trans_std,
    )
    return run_backward(grad_out, input, rois, trans, p)


class DeformPSRoIPoolFunction(Function):
    """Tape node of deform_psroi_pool; inputs ``(input, rois, trans)``, no grad for rois."""

    def forward(self, input, rois, trans, **params):
        self.params = DeformPSRoIPoolParams.check(input, rois, trans, **params)
        self.save_for_backward(input, rois, trans)
        return run_forward(input, rois, trans, self.params)

    def backward(self, grad_out):
        input, rois, trans = self.saved
        g_input, g_trans = run_backward(grad_out, input, rois, trans, self.params)
        return g_input, None, g_trans


def deform_psroi_pool(
    input: Array,
    rois: Array,
    trans: Array | None = None,
    *,
    spatial_scale: float,
    output_dim: int,
    group_size: int,
    pooled_size: int,
    part_size: int | None = None,
    sample_per_part: int = 4,
    trans_std: float = 0.1,
) -> Array:
    """Deformable position-sensitive RoI pooling (R-FCN; the original operator's semantics).

    Notation: B batch, H x W the feature map, R RoIs, P = ``pooled_size`` bins per side,
    G = ``group_size``, K = ``num_classes = trans.shape[1] // 2`` (1 without ``trans``),
    ``part = part_size``. Coordinates are in input pixels with pixel centres at integers.

    Args:
        input: (B, output_dim * G * G, H, W). Output channel ``ctop``, bin (i, j) reads input channel
            ``(ctop * G + gh) * G + gw`` with ``gh = min(i * G // P, G - 1)`` (gw alike).
        rois: (R, 5) rows ``(batch_index, x1, y1, x2, y2)`` in image coordinates, same dtype as
            ``input``; the batch index must be an integer in ``[0, B)`` and every value finite
            (``ValueError`` otherwise; for CuPy arrays this costs one small device-to-host copy).
            No gradient flows to ``rois``.
        trans: (R, 2 * K, part, part) or None (no deformation). For class
            ``cls = ctop // (output_dim // K)``, **channel 2 * cls is x (columns) and 2 * cls + 1 is
            y (rows)** — the (x, y) order of RoI offsets, the opposite of deform_conv2d's (dy, dx).
            Bin (i, j) reads part cell ``(i * part // P, j * part // P)`` and moves by
            ``trans * trans_std * roi_size`` along each axis.
        spatial_scale: input pixels per image unit (e.g. 1/16).
        output_dim: output channels; divisible by K.
        group_size: G, the position-sensitive score map grid.
        pooled_size: P.
        part_size: side of the ``trans`` grid; defaults to ``pooled_size``.
        sample_per_part: samples per bin along each axis.
        trans_std: scale of ``trans``.

    Returns:
        (R, output_dim, P, P). RoI coordinates are rounded half away from zero (C's ``round``):
        ``start = round(x1) * spatial_scale - 0.5``, ``end = (round(x2) + 1) * spatial_scale - 0.5``,
        ``roi_w = max(end - start, 0.1)`` (y alike), ``bin = roi / P``, ``sub_bin = bin /
        sample_per_part``. Bin (i, j) samples ``w = start + j * bin + dx + k * sub_bin`` for
        ``k < sample_per_part`` (corner-aligned; h alike). A sample outside ``[-0.5, W - 0.5]`` (or
        H, or not finite) is skipped; the others are clamped into the image and interpolated between
        floor and ceil. Each bin is the mean of its valid samples, 0 when there is none.

    Gradients flow to ``input`` and ``trans``; at an integer coordinate floor and ceil coincide, so
    the gradient along that axis is 0.

    Precision: float32 and float64 compute in their own dtype; float16 and bfloat16 are read as
    stored and computed in float32 (bin geometry, sample positions, weights, the sums and the
    gradients' scatters), each result rounded once to the input dtype. The CPU backend computes the
    bin geometry, sample positions and the trans gradient in float64 for every dtype (at least as
    precise). GPU gradients are atomic scatters (last bits vary run to run) unless under
    ``cudcn.deterministic()``.

    Example:
        >>> import numpy as np, cudcn
        >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
        >>> rois = np.array([[0.0, 1.0, 1.0, 2.0, 2.0]])
        >>> out = cudcn.functional.deform_psroi_pool(
        ...     x, rois, spatial_scale=1.0, output_dim=1, group_size=1, pooled_size=1,
        ...     sample_per_part=2)
        >>> out[0, 0, 0, 0]
        np.float64(5.0)
    """
    return DeformPSRoIPoolFunction.apply(
        input,
        rois,
        trans,
        spatial_scale=spatial_scale,
        output_dim=output_dim,
        group_size=group_size,
        pooled_size=pooled_size,
        part_size=part_size,
        sample_per_part=sample_per_part,
        trans_std=trans_std,
    )
