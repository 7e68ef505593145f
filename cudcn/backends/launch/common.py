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
from cudcn.dtypes import bfloat16, compute_dtype, narrow

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


INDEX_TYPES = ("int", "long long")  # the kernels' index instantiations, see index_type


def name_expressions(stem: str, kernels: tuple[str, ...]) -> tuple[str, ...]:
    """Every instantiation ``<stem>_<kernel><storage type, index type>`` of an op's kernels: the
    ``NAME_EXPRESSIONS`` of its launch module."""
    return tuple(
        f"{stem}_{kernel}<{scalar}, {index}>"
        for kernel in kernels
        for scalar in C_TYPES.values()
        for index in INDEX_TYPES
    )


def index_type(*counts: int) -> tuple[str, type[np.integer]]:
    """The kernels' index type for a launch whose largest element count is ``max(counts)``:
    ``("int", numpy.int32)``, or ``("long long", numpy.int64)`` past :data:`INDEX32_LIMIT`."""
    if max(counts) <= INDEX32_LIMIT:
        return INDEX_TYPES[0], np.int32
    return INDEX_TYPES[1], np.int64


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


# Passes of a Scatter (kScatterAtomic, kScatterSurvey, kScatterAdd and kExponentBias in common.cuh).
SCATTER_ATOMIC, SCATTER_SURVEY, SCATTER_ADD = 0, 1, 2
EXPONENT_BIAS = 2048


class ScatterTarget:
    """A zeroed gradient that kernels scatter into through ``Scatter`` (``cudcn/kernels/common.cuh``).

    Atomic mode: the kernels add floats to ``target`` with atomicAdd; ``fixed`` is a placeholder.
    Deterministic mode (docs/determinism.md): ``fixed`` holds a record of four int64 words per
    element of ``target``, and :func:`scatter_passes` launches the kernel twice. The survey counts
    each element's finite nonzero contributions ``m`` and records the largest ``E`` with
    ``|v| < 2**E``; the second launch adds each contribution as two words, ``round(v * 2**s)`` and
    the rounded remainder times ``2**k``, with the element's own ``s = 62 - E - L`` and
    ``k = 62 - L`` (``m < 2**L``), exactly; :meth:`finish` adds the sums, converted back, to
    ``target`` (which holds the sum of any non-finite contributions).

    Error of an element whose ``m`` finite nonzero contributions sum to ``S``: each contribution is
    rounded to a multiple of ``2**-(s + k)``, and the conversion rounds twice in float64, so
    ``|result - S| <= 2**-51 * |S| + m * 2**(E + L - 112) + m * 2**(E + 2 * L - 124)``, plus
    ``2**-1074`` where the result is subnormal, before its one rounding to the dtype; ``inf`` only
    where ``|S|`` is that close to float64's overflow threshold or past it. No sum can reach 2**63
    (for ``m < 2**60``): the high words add up to at most ``m * (2**(62 - L) + 1/2)``, the low ones
    to at most ``m * (2**(61 - L) + 1/2)``.
    """

    def __init__(self, xp: Any, target: Any, deterministic: bool):
        self.xp, self.target, self.deterministic = xp, target, deterministic
        self.fixed = xp.zeros(4 * target.size if deterministic else 4, dtype=np.uint64)

    def args(self) -> tuple[Any, ...]:
        """The kernel arguments ``(target, fixed)``."""
        return self.target, self.fixed

    def finish(self) -> None:
        """Deterministic mode, after both passes: target += the fixed-point sums, converted back
        (in place)."""
        if not self.deterministic:
            return
        xp, words = self.xp, self.fixed.reshape(-1, 4)
        hit = xp.flatnonzero(words[:, 2])  # the elements with a finite nonzero contribution
        if hit.size == 0:
            return
        record = words[hit]
        # L and E as Scatter::add computes them.
        width = xp.frexp(record[:, 2].astype(np.float64))[1]
        exponent = (record[:, 3].view(np.int64) - EXPONENT_BIAS).astype(np.int32)
        sums = record[:, :2].view(np.int64).astype(np.float64)
        flat = self.target.reshape(-1)  # a view: targets are C-contiguous
        with np.errstate(over="ignore", under="ignore"):  # an inf or subnormal sum is the answer
            sums = xp.ldexp(sums[:, 0] + xp.ldexp(sums[:, 1], width - 62), exponent + width - 62)
            # The target holds only zeros or non-finite sums: one add, computed in float64 and
            # rounded once to the target's dtype.
            flat[hit] = flat[hit] + sums


def scatter_passes(launch: Callable[[np.int32], None], *targets: ScatterTarget) -> None:
    """Run a scatter kernel into ``targets`` (all of one mode): ``launch(scatter_pass)`` once with
    atomics, or, in the deterministic mode, the survey and the add pass, then
    :meth:`ScatterTarget.finish`."""
    if not any(t.deterministic for t in targets):
        launch(np.int32(SCATTER_ATOMIC))
        return
    launch(np.int32(SCATTER_SURVEY))
    launch(np.int32(SCATTER_ADD))
    for target in targets:
        target.finish()


def roi_pool_backward(
    xp: Any,
    kernel: Kernel,
    grad_out: Any,
    input: Any,
    rois: Any,
    shift: Any | None,
    scalars: tuple[Any, ...],
) -> tuple[Any, Any | None]:
    """Launch the backward kernel of a RoI pooling op (deform_roi_pool, deform_psroi_pool), whose
    arguments are ``(grad_out, input, rois, shift, grad_input, grad_shift, fixed_input,
    fixed_shift, scatter_pass, *scalars)``; returns ``(grad_input, grad_shift)``,
    ``grad_shift`` None when ``shift`` is.

    ``shift`` is the bins' offset (trans) or None (then a one-element placeholder the kernel never
    touches). The gradients are scattered (:func:`scatter_passes`) into buffers of the compute dtype
    (float32 for 16-bit inputs) and rounded once to the input dtype at the end.
    """
    wide = compute_dtype(input.dtype)
    grad_input = xp.zeros(input.shape, dtype=wide)  # scatter target
    if shift is None:  # placeholders the kernel never touches
        shift_arg, grad_shift = xp.zeros((1,), dtype=input.dtype), xp.zeros((1,), dtype=wide)
    else:
        shift_arg = shift
        grad_shift = xp.zeros(shift.shape, dtype=wide)
    deterministic = deterministic_enabled()
    to_input = ScatterTarget(xp, grad_input, deterministic)
    to_shift = ScatterTarget(xp, grad_shift, deterministic and shift is not None)

    def launch(scatter_pass: np.int32) -> None:
        arrays = (grad_out, input, rois, shift_arg, grad_input, grad_shift)
        words = (to_input.fixed, to_shift.fixed)
        launch_1d(kernel, grad_out.size, (*arrays, *words, scatter_pass, *scalars))

    scatter_passes(launch, to_input, to_shift)
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
