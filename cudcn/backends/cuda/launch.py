"""Launch helpers shared by every op's launch module (``cudcn.backends.cuda.<op>``).

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

Kernel = Callable[[tuple[int, ...], tuple[int, ...], tuple[Any, ...]], Any]
GetKernel = Callable[[str], Kernel]

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 16384
# Largest element count a 32-bit-index instantiation may see: the grid-stride index i + stride must
# still fit in int32.
INDEX32_LIMIT = 2**31 - 1 - MAX_BLOCKS * THREADS_PER_BLOCK

_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def c_type(dtype: Any) -> str:
    """The C++ type of a float dtype: ``"float"`` or ``"double"``."""
    try:
        return _C_TYPES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"kernels take float32 or float64 arrays, got dtype {dtype}") from None


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
    as ``numpy.int32``, ``float`` fields as the kernels' float type; ``tests/test_launch.py``
    checks every subclass's field names against the ``.cu`` signatures."""

    def scalars(self, dtype: Any) -> tuple[Any, ...]:
        """The values, in order, as the explicit NumPy scalars a raw launch needs."""
        scalar = np.dtype(dtype).type
        return tuple(
            np.int32(getattr(self, f.name)) if f.type == "int" else scalar(getattr(self, f.name))
            for f in fields(self)
        )


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
