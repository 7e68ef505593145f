"""Launch helpers shared by every op's launch module (``cudcn.backends.launch.<op>``).

A launch module receives ``xp`` (``cupy`` or ``numpy``) and ``get_kernel(name_expression)``, which
returns a kernel callable as ``kernel(grid, block, args)`` like CuPy's ``RawKernel``: a CuPy kernel of a
``RawModule`` on the CUDA backend, a :class:`~cudcn.backends.emulated.loader.HostKernel` on the emulated
one. Raw launches check nothing on a GPU, so launch code passes C-contiguous arrays and every scalar as
an explicit NumPy scalar of the parameter's width (the emulated loader enforces both).

Every kernel is a grid-stride loop over ``n`` elements (``CUDCN_KERNEL_LOOP`` in ``common.cuh``), so the
grid is capped at :data:`MAX_BLOCKS` and any ``n`` is covered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from cudcn.backends import deterministic_enabled
from cudcn.dtypes import bfloat16, compute_dtype, narrow, widen

Kernel = Callable[[tuple[int, ...], tuple[int, ...], tuple[Any, ...]], Any]
GetKernel = Callable[[str], Kernel]

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 16384
# Largest element count a 32-bit-index instantiation may see: the grid-stride index i + stride must
# still fit in int32.
INDEX32_LIMIT = 2**31 - 1 - MAX_BLOCKS * THREADS_PER_BLOCK

# The kernels' storage types (cudcn/kernels/storage.cuh), in NAME_EXPRESSIONS order.
C_TYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.float16): "cudcn_half",
    bfloat16: "cudcn_bfloat16",
}


def c_type(dtype: Any) -> str:
    """The C++ storage type of a float dtype: ``"float"``, ``"double"``, ``"cudcn_half"`` or
    ``"cudcn_bfloat16"``."""
    try:
        return C_TYPES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(
            f"kernels take float16, bfloat16, float32 or float64 arrays, got dtype {dtype}"
        ) from None


def index_type(*counts: int) -> tuple[str, type[np.integer]]:
    """The kernels' index type for a launch whose largest element count is ``max(counts)``:
    ``("int", numpy.int32)``, or ``("long long", numpy.int64)`` past :data:`INDEX32_LIMIT`."""
    if max(counts) <= INDEX32_LIMIT:
        return "int", np.int32
    return "long long", np.int64


def check_plane(height: int, width: int, what: str = "input") -> None:
    """Kernels index within one (height, width) plane in int: refuse planes of 2**31 pixels or more."""
    if height * width > np.iinfo(np.int32).max:
        raise ValueError(
            f"{what} planes must have < 2**31 pixels (the kernels index one plane in int), got "
            f"{height} x {width} = {height * width}"
        )


@dataclass(frozen=True)
class KernelParams:
    """The trailing scalar parameters of a family of kernels, as named fields in the kernels'
    parameter order, built by keyword so no two can be swapped silently. ``int`` fields are passed
    as ``numpy.int32``, ``float`` fields in the kernels' compute type (float32 for 16-bit
    storage); ``tests/backends/test_launch.py`` checks every subclass's field names against the ``.cu``
    signatures."""

    def scalars(self, dtype: Any) -> tuple[Any, ...]:
        """The values, in order, as the explicit NumPy scalars a raw launch needs, for kernels
        whose arrays have ``dtype``."""
        scalar = compute_dtype(dtype).type
        return tuple(
            np.int32(getattr(self, f.name)) if f.type == "int" else scalar(getattr(self, f.name))
            for f in fields(self)
        )


class ScatterTarget:
    """A zeroed gradient that kernels scatter into through ``Scatter`` (``cudcn/kernels/common.cuh``).

    Atomic mode (``bound`` None): the kernels add floats to ``target`` with atomicAdd; the
    fixed-point arguments are a one-element placeholder and scale 0. Deterministic mode: an int64
    buffer of the target's size and the power-of-two scale that keeps every sum below 2**62 when the
    contributions' magnitudes add up to at most ``bound``; :meth:`finish` adds the exact integer
    sums, converted back, to ``target`` (which holds the sum of any non-finite contributions).

    Error of the deterministic result: each contribution is rounded to a multiple of 1 / scale, at
    most ``bound * 2**-63`` off, so an element summing ``m`` contributions is within
    ``m * bound * 2**-63`` of the exact sum before its one rounding to the dtype.
    """

    def __init__(self, xp: Any, target: Any, bound: float | None):
        self.xp, self.target = xp, target
        if bound is None:
            self.fixed, self.scale = xp.zeros((1,), dtype=np.uint64), 0.0
            return
        if not np.isfinite(bound):
            raise OverflowError(
                "deterministic mode: the gradient contributions' magnitudes add up to more than "
                "float64 holds; their fixed-point sums cannot be formed"
            )
        exponent = 0 if bound == 0 else int(np.ceil(np.log2(bound)))
        self.fixed = xp.zeros(target.size, dtype=np.uint64)
        self.scale = float(2.0 ** min(62 - exponent, 1000))

    def args(self) -> tuple[Any, ...]:
        """The kernel arguments ``(target, fixed, scale)``."""
        return self.target, self.fixed, np.float64(self.scale)

    def finish(self) -> None:
        """Deterministic mode: target += the fixed-point sums, converted back (in place)."""
        if self.scale == 0.0:
            return
        # One pass to float64 (scaling by a power of two is exact, like the division it replaces)
        # and one add into the target, computed in float64 and rounded once: the target holds only
        # zeros or non-finite sums, so this equals rounding the sums first, bit for bit.
        sums = self.fixed.view(np.int64) * (1.0 / self.scale)
        self.xp.add(self.target, sums.reshape(self.target.shape), out=self.target, casting="same_kind")


def finite_abs_sum(xp: Any, a: Any) -> float:
    """sum |a| over the finite elements of ``a`` (float64)."""
    a = widen(a)  # nan_to_num knows no bfloat16
    total = float(xp.abs(a).sum(dtype=np.float64))
    if np.isfinite(total):
        return total
    return float(xp.nan_to_num(xp.abs(a), nan=0.0, posinf=0.0).sum(dtype=np.float64))


def finite_abs_max(xp: Any, a: Any) -> float:
    """max |a| over the finite elements of ``a`` (0 for none)."""
    if a.size == 0:
        return 0.0
    a = widen(a)
    largest = float(xp.abs(a).max())
    if np.isfinite(largest):
        return largest
    return float(xp.nan_to_num(xp.abs(a), nan=0.0, posinf=0.0).max())


def largest_roi_side(xp: Any, rois: Any) -> float:
    """max |x2 - x1| and |y2 - y1| over ``rois`` (R, 5), in float64 (a float16 difference overflows
    past 65504)."""
    corners = rois[:, 1:5].astype(np.float64)
    return float(xp.abs(corners[:, 2:] - corners[:, :2]).max()) if len(rois) else 0.0


def roi_pool_backward(
    xp: Any,
    kernel: Kernel,
    grad_out: Any,
    input: Any,
    rois: Any,
    shift: Any | None,
    step: float,
    extent: Callable[[], float],
    scalars: tuple[Any, ...],
) -> tuple[Any, Any | None]:
    """Launch the backward kernel of a RoI pooling op (deform_roi_pool, deform_psroi_pool), whose
    arguments are ``(grad_out, input, rois, shift, grad_input, grad_shift, fixed_input,
    fixed_shift, input_scale, shift_scale, *scalars)``; returns ``(grad_input, grad_shift)``,
    ``grad_shift`` None when ``shift`` is.

    ``shift`` is the bins' offset (trans) or None (then a one-element placeholder the kernel never
    touches); ``step`` (gamma, trans_std) scales it by the RoI size; ``extent()`` bounds any RoI's
    size in feature-map pixels, called in the deterministic mode only. The bounds of the
    contributions' magnitudes there: grad_out / count spread with weights summing to <= 1 for the
    input, and a shift derivative <= step * RoI size * |grad| * 2 max|input|.

    The gradients are scattered into buffers of the compute dtype (float32 for 16-bit inputs) and
    rounded once to the input dtype at the end.
    """
    wide = compute_dtype(input.dtype)
    grad_input = xp.zeros(input.shape, dtype=wide)  # scatter target
    if shift is None:  # placeholders the kernel never touches
        shift_arg, grad_shift = xp.zeros((1,), dtype=input.dtype), xp.zeros((1,), dtype=wide)
    else:
        shift_arg = shift
        grad_shift = xp.zeros(shift.shape, dtype=wide)
    bound_input = bound_shift = None
    if deterministic_enabled():
        bound_input = finite_abs_sum(xp, grad_out)
        if shift is not None:
            bound_shift = bound_input * abs(step) * extent() * 2.0 * finite_abs_max(xp, input)
    to_input = ScatterTarget(xp, grad_input, bound_input)
    to_shift = ScatterTarget(xp, grad_shift, bound_shift)
    launch_1d(
        kernel,
        grad_out.size,
        (
            grad_out,
            input,
            rois,
            shift_arg,
            grad_input,
            grad_shift,
            to_input.fixed,
            to_shift.fixed,
            np.float64(to_input.scale),
            np.float64(to_shift.scale),
            *scalars,
        ),
    )
    to_input.finish()
    to_shift.finish()
    return narrow(grad_input, input.dtype), None if shift is None else narrow(grad_shift, input.dtype)


def launch_1d(kernel: Kernel, n: int, args: Sequence[Any]) -> None:
    """Launch a grid-stride kernel over ``n`` elements (nothing when ``n`` is 0)."""
    if n <= 0:
        return
    blocks = min(-(-n // THREADS_PER_BLOCK), MAX_BLOCKS)
    kernel((blocks,), (THREADS_PER_BLOCK,), tuple(args))


def batch_chunks(batch: int, bytes_per_item: int, budget: int) -> Iterator[tuple[int, int]]:
    """Split ``range(batch)`` into near-equal chunks ``(start, stop)`` of at most
    ``max(1, budget // bytes_per_item)`` items, so a per-chunk buffer stays within ``budget`` bytes."""
    limit = max(1, budget // max(bytes_per_item, 1))
    count = -(-batch // limit)
    size = -(-batch // count) if count else 0
    for start in range(0, batch, max(size, 1)):
        yield start, min(start + size, batch)
