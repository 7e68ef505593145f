"""deform_roi_pool: its parameters object, backend dispatch, and the autograd Function.

Three layers: the backends' launchers (``cudcn.backends.*``), the array-level pair
:func:`deform_roi_pool_forward` / :func:`deform_roi_pool_backward`, and the public differentiable
:func:`deform_roi_pool` (re-exported by ``cudcn.functional``). ``roi_align`` (``cudcn.ops.roi_align``)
is this op without offsets. The arguments are validated once, into a :class:`DeformRoIPoolParams`,
which every backend receives unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cudcn.arrays import Array
from cudcn.autograd import Function
from cudcn.backends import array_module, get_backend, is_cupy_array, new_output
from cudcn.ops._checks import (
    check_arrays,
    check_bool,
    check_ndim,
    check_shape,
    contiguous,
    finite_float,
    int_pair,
    positive_int,
)


def check_rois(rois: Array, batch: int) -> None:
    """``rois`` must be (R, 5) = (batch_index, x1, y1, x2, y2), finite, with integer batch indices in
    ``[0, batch)``, so that no kernel reads outside the input. For a CuPy ``rois`` the check costs one
    small device-to-host copy (the count of bad rows; the rows themselves only on failure)."""
    check_ndim("rois", rois, 2, "(R, 5) = (batch_index, x1, y1, x2, y2)")
    check_shape("rois", rois, (rois.shape[0], 5), "(R, 5) = (batch_index, x1, y1, x2, y2)")
    if rois.shape[0] == 0:
        return
    xp = array_module(rois)
    index = rois[:, 0]
    bad = ~xp.isfinite(rois).all(axis=1) | (index < 0) | (index >= batch) | (index != xp.floor(index))
    if int(xp.count_nonzero(bad)) == 0:
        return
    rows = bad.get() if is_cupy_array(bad) else bad
    first = int(np.flatnonzero(rows)[0])
    row = [float(v) for v in (rois[first].get() if is_cupy_array(rois) else rois[first])]
    raise ValueError(
        f"rois rows must be finite with an integer batch index in [0, {batch}) (input has batch "
        f"size {batch}); {int(rows.sum())} rows are not, the first is rois[{first}] = {row}"
    )


MAX_SAMPLES_PER_BIN = 2**20  # every op, every backend: a bin's loop stays short, its indices small
MAX_SAMPLES_PER_AXIS = 2**10  # sampling_ratio, sample_per_part: MAX_SAMPLES_PER_AXIS**2 per bin
MAX_ADAPTIVE_SAMPLES = MAX_SAMPLES_PER_BIN  # adaptive grids: a RoI of ~7000 pixels at 7 x 7 bins


def check_samples_per_axis(name: str, value: int) -> None:
    """Refuse more than :data:`MAX_SAMPLES_PER_AXIS` samples per bin along an axis (``value**2`` per
    bin): beyond it one bin loops over more than :data:`MAX_SAMPLES_PER_BIN` samples, a kernel that
    seems to hang, scratch of gigabytes, and sizes that overflow 32-bit indices."""
    if value > MAX_SAMPLES_PER_AXIS:
        raise ValueError(
            f"{name} must be at most {MAX_SAMPLES_PER_AXIS} ({MAX_SAMPLES_PER_AXIS}**2 = "
            f"{MAX_SAMPLES_PER_BIN} samples per bin, the limit of every op and backend), got {value}"
        )


def check_adaptive_grid(rois: Array, pooled_h: int, pooled_w: int, scale: float) -> None:
    """With ``sampling_ratio`` 0 a bin takes ``ceil(roi size / pooled)`` samples per axis: refuse
    RoIs so large that one bin would loop over more than :data:`MAX_ADAPTIVE_SAMPLES` samples (a
    kernel that never finishes, or an allocation that fails)."""
    if rois.shape[0] == 0:
        return
    xp = array_module(rois)
    extent = xp.abs(rois[:, 3:5] - rois[:, 1:3]).max(axis=0) * scale
    width, height = (float(v) for v in (extent.get() if is_cupy_array(extent) else extent))
    samples = np.ceil(height / pooled_h + 1) * np.ceil(width / pooled_w + 1)
    if samples > MAX_ADAPTIVE_SAMPLES:
        raise ValueError(
            f"rois up to {width:.3g} x {height:.3g} feature-map pixels would take about "
            f"{samples:.3g} samples per bin with sampling_ratio=0 (adaptive; the limit is "
            f"{MAX_ADAPTIVE_SAMPLES}): check the rois' units and spatial_scale, or pass "
            "sampling_ratio > 0"
        )


@dataclass(frozen=True)
class DeformRoIPoolParams:
    """The parameters of one deform_roi_pool (or roi_align) call, validated against its arrays by
    :meth:`check`; passed unchanged, as the last argument, to the reference, the CPU backend and
    the launch code."""

    pooled_h: int
    pooled_w: int
    spatial_scale: float
    sampling_ratio: int  # 0 = adaptive
    gamma: float
    aligned: bool

    @classmethod
    def check(
        cls,
        input: Array,
        rois: Array,
        offset: Array | None,
        output_size: Any,
        spatial_scale: Any,
        sampling_ratio: Any,
        gamma: Any,
        aligned: Any = True,
    ) -> DeformRoIPoolParams:
        """Validate the arguments of deform_roi_pool (docs/spec.md) and return its parameters."""
        check_arrays({"input": input, "rois": rois, "offset": offset}, optional=("offset",))
        check_ndim("input", input, 4, "(B, C, H, W)")
        if min(input.shape[2:]) < 1:
            raise ValueError(f"input must have H, W >= 1, got shape {tuple(input.shape)}")
        check_rois(rois, int(input.shape[0]))
        pooled_h, pooled_w = int_pair("output_size", output_size, 1)
        scale = finite_float("spatial_scale", spatial_scale)
        if scale <= 0:
            raise ValueError(f"spatial_scale must be > 0, got {scale}")
        ratio = positive_int("sampling_ratio", sampling_ratio, minimum=0)
        check_samples_per_axis("sampling_ratio", ratio)
        if ratio == 0:
            check_adaptive_grid(rois, pooled_h, pooled_w, scale)
        if offset is not None:
            layout = "(R, 2, pooled_h, pooled_w)"
            check_ndim("offset", offset, 4, layout)
            check_shape("offset", offset, (rois.shape[0], 2, pooled_h, pooled_w), layout)
        gamma = finite_float("gamma", gamma)
        return cls(pooled_h, pooled_w, scale, ratio, gamma, check_bool("aligned", aligned))


def run_forward(input: Array, rois: Array, offset: Array | None, p: DeformRoIPoolParams) -> Array:
    if rois.shape[0] == 0:
        shape = (0, input.shape[1], p.pooled_h, p.pooled_w)
        return new_output(array_module(input), shape, input.dtype)
    args = [contiguous(a) for a in (input, rois, offset)]
    return get_backend(input).deform_roi_pool_forward(*args, p)


def run_backward(
    grad_out: Array, input: Array, rois: Array, offset: Array | None, p: DeformRoIPoolParams
) -> tuple[Array, Array | None]:
    check_arrays({"input": input, "grad_out": grad_out})
    check_shape(
        "grad_out",
        grad_out,
        (rois.shape[0], input.shape[1], p.pooled_h, p.pooled_w),
        "(R, C, pooled_h, pooled_w)",
    )
    if rois.shape[0] == 0:
        xp = array_module(input)
        return xp.zeros_like(input), None if offset is None else xp.zeros_like(offset)
    args = [contiguous(a) for a in (grad_out, input, rois, offset)]
    return get_backend(input).deform_roi_pool_backward(*args, p)


def deform_roi_pool_forward(
    input: Array,
    rois: Array,
    offset: Array | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> Array:
    """Array-level forward of :func:`deform_roi_pool` (no tape). Same arguments; returns ``out``
    (R, C, pooled_h, pooled_w) of the inputs' library and dtype."""
    p = DeformRoIPoolParams.check(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma)
    return run_forward(input, rois, offset, p)


def deform_roi_pool_backward(
    grad_out: Array,
    input: Array,
    rois: Array,
    offset: Array | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> tuple[Array, Array | None]:
    """Array-level backward of :func:`deform_roi_pool`: the gradients ``(input, offset)`` given
    ``grad_out`` (R, C, pooled_h, pooled_w); ``None`` for ``offset`` when it was ``None``. ``rois``
    get no gradient. Recomputes what it needs."""
    p = DeformRoIPoolParams.check(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma)
    return run_backward(grad_out, input, rois, offset, p)


class DeformRoIPoolFunction(Function):
    """Tape node of deform_roi_pool / roi_align; inputs ``(input, rois, offset)``, no grad for rois."""

    def forward(self, input, rois, offset, *, output_size, spatial_scale, sampling_ratio, gamma, aligned):
        self.params = DeformRoIPoolParams.check(
            input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, aligned
        )
        self.save_for_backward(input, rois, offset)
        return run_forward(input, rois, offset, self.params)

    def backward(self, grad_out):
        input, rois, offset = self.saved
        g_input, g_offset = run_backward(grad_out, input, rois, offset, self.params)
        return g_input, None, g_offset


def deform_roi_pool(
    input: Array,
    rois: Array,
    offset: Array | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> Array:
    """Deformable RoI pooling built on RoIAlign (mmcv's ``deform_roi_pool``, same signature).

    Notation: B batch, C channels, H x W the feature map, R RoIs, ph x pw = ``output_size`` bins.
    Coordinates are in input pixels with pixel centres at integers.

    Args:
        input: (B, C, H, W).
        rois: (R, 5) rows ``(batch_index, x1, y1, x2, y2)`` in image coordinates, same dtype as
            ``input``; the batch index must be an integer in ``[0, B)`` and every value finite
            (``ValueError`` otherwise; for CuPy arrays this costs one small device-to-host copy).
            No gradient flows to ``rois``.
        offset: (R, 2, ph, pw) or None. **Channel 0 is x (columns), channel 1 is y (rows)** — mmcv's
            order, the opposite of deform_conv2d's (dy, dx) offsets. Offsets are in units of the RoI
            size: bin (i, j) moves by ``gamma * roi_w * offset[r, 0, i, j]`` along x and
            ``gamma * roi_h * offset[r, 1, i, j]`` along y.
        output_size: ph, or a pair (ph, pw).
        spatial_scale: input pixels per image unit (e.g. 1/16).
        sampling_ratio: samples per bin along each axis; 0 means ``ceil(roi_size / pooled)``.
        gamma: scale of the offsets.

    Returns:
        (R, C, ph, pw). With ``start = x1 * spatial_scale - 0.5``, ``roi_w = (x2 - x1) *
        spatial_scale`` (same for y), ``bin_w = roi_w / pw``, bin (i, j) averages the
        ``grid_h * grid_w`` RoIAlign samples at ``x = start + dx + j * bin_w + (k + 0.5) * bin_w /
        grid_w`` (k < grid_w; y alike) and divides by ``max(grid_h * grid_w, 1)``. A sample with
        ``y < -1``, ``y > H``, ``x < -1`` or ``x > W`` (or not finite) is 0; otherwise it is clamped to
        0 from below and snaps to the last row / column when ``floor(y) >= H - 1``, then interpolated
        bilinearly. With ``offset=None`` this is ``roi_align(..., aligned=True)``.

    Gradients flow to ``input`` and ``offset``; along an axis where a sample was clamped or snapped
    it does not move, so it adds nothing to the offset gradient.

    Precision: float32 and float64 compute in their own dtype; float16 and bfloat16 are read as
    stored and computed in float32 (RoI geometry, sample positions, weights, the bin sums and the
    gradients' scatters), each result rounded once to the input dtype. The CPU backend computes the
    RoI geometry, sample positions and the offset gradient in float64 for every dtype (at least as
    precise). GPU gradients are atomic scatters (last bits vary run to run) unless under
    ``cudcn.deterministic()``.

    Example:
        >>> import numpy as np, cudcn
        >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
        >>> rois = np.array([[0.0, 0.5, 0.5, 2.5, 2.5]])
        >>> cudcn.functional.deform_roi_pool(x, rois, None, 1)[0, 0, 0, 0]
        np.float64(5.0)
    """
    return DeformRoIPoolFunction.apply(
        input,
        rois,
        offset,
        output_size=output_size,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        gamma=gamma,
        aligned=True,
    )
