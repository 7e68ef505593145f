"""Threads of the CPU backend: Numba's threading layer, and the lock around kernel launches.

The kernels run on Numba's thread pool, the GEMMs between them on OpenBLAS's. Numba's default layer
on Linux is OpenMP, whose idle workers keep spinning after a parallel region; on a machine with few
cores they take the cores from the BLAS threads of the next GEMM (and OpenBLAS's idle threads, which
do yield, from the next kernel). So when the CPU backend is imported and nobody has chosen a layer, it
selects Numba's ``workqueue`` layer, whose idle workers sleep (benchmarks/RESULTS.md measures both).
That choice is process-wide (it is Numba's) and only takes effect if no Numba parallel code has run
yet. To keep your own choice, set ``NUMBA_THREADING_LAYER`` (any value, ``default`` included) in the
environment or ``numba.config.THREADING_LAYER`` before importing cudcn's CPU backend.

The workqueue layer aborts the process when two threads launch parallel kernels at once, so every
launch of the CPU backend holds one lock (``kernel_threads``): concurrent cudcn calls from several
Python threads take turns in the kernels. Results never depend on the thread count: every kernel
partitions its writes by the shape, never by the thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import numba

LAYER = "workqueue"
SERIAL_WORK = 1 << 16  # below this many elements written, a kernel runs on the calling thread alone

_launch_lock = threading.Lock()


def prefer_workqueue() -> None:
    """Select Numba's ``workqueue`` threading layer unless the environment or the program chose one."""
    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = LAYER


@contextlib.contextmanager
def kernel_threads(work: int | None = None) -> Iterator[bool]:
    """Hold the launch lock for the Numba kernels of the block, which write ``work`` elements; yields
    ``serial``: True when the work is small (waking the pool costs more than it saves: the kernels
    take a ``serial`` argument and then run on the calling thread alone). All threads for None."""
    with _launch_lock:
        yield work is not None and work < SERIAL_WORK


prefer_workqueue()  # on import, before any of the backend's kernels can run
