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

import os
import threading
import types
from collections.abc import Callable
from typing import Any

import numba

LAYER = "workqueue"
SERIAL_WORK = 1 << 16  # below this many elements written, a kernel runs on the calling thread alone

_launch_lock = threading.Lock()


def prefer_workqueue() -> None:
    """Select Numba's ``workqueue`` threading layer unless the environment or the program chose one."""
    config: Any = numba.config  # numba's type stubs lack its settings
    if "NUMBA_THREADING_LAYER" not in os.environ and config.THREADING_LAYER == "default":
        config.THREADING_LAYER = LAYER


class kernel_threads:  # lower case: used like a function, ``with kernel_threads(work) as serial``
    """Hold the launch lock for the Numba kernels of the block, which write ``work`` elements; yields
    ``serial``: True when the work is small (waking the pool costs more than it saves: a
    :class:`SerialOrParallel` kernel called with it then runs on the calling thread alone). All
    threads for None.

    A class rather than a ``contextlib.contextmanager``: it is entered several times per call of a
    small op, and the generator machinery would cost a microsecond each time."""

    __slots__ = ("serial",)

    def __init__(self, work: int | None = None) -> None:
        self.serial = work is not None and work < SERIAL_WORK

    def __enter__(self) -> bool:
        _launch_lock.acquire()
        return self.serial

    def __exit__(self, *exc: object) -> None:
        _launch_lock.release()


class SerialOrParallel:
    """One Numba loop, written once with ``prange``, compiled twice: ``parallel=True`` (the loop
    spreads over Numba's threads) and plain (``prange`` is ``range``: the calling thread alone, for
    work too small to wake the pool). Call it with ``serial`` first, then the loop's arguments.

    Numba's on-disk cache names a function by its module, qualified name and first line, not by its
    compile flags, so the plain copy gets a qualified name of its own (``<name>_serial``); otherwise
    the two would load each other's machine code from the cache."""

    def __init__(self, loop: Callable[..., Any]):
        plain = types.FunctionType(
            loop.__code__, loop.__globals__, f"{loop.__name__}_serial", loop.__defaults__
        )
        plain.__qualname__ = f"{loop.__qualname__}_serial"
        plain.__doc__ = loop.__doc__
        self.__doc__ = loop.__doc__
        self.parallel = numba.njit(cache=True, parallel=True)(loop)
        self.serial = numba.njit(cache=True)(plain)

    def __call__(self, serial: bool, *args: Any) -> Any:
        return (self.serial if serial else self.parallel)(*args)


prefer_workqueue()  # on import, before any of the backend's kernels can run
