"""CUDA-event timing and per-call peak memory for ``bench_deform_conv2d_gpu.py``, one clock per
library (CuPy, torch): each times calls on its own current stream and measures the bytes its
allocator hands out during one call (see the benchmark's docstring for how)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any


class CupyClock:
    """CUDA events on CuPy's current stream, and the pool's peak bytes in use during a call."""

    def __init__(self, cupy: Any):
        self.cp, self.pool, self.peak = cupy, cupy.get_default_memory_pool(), 0

    def record(self) -> Any:
        event = self.cp.cuda.Event()
        event.record()
        return event

    def elapsed(self, start: Any, stop: Any) -> float:
        stop.synchronize()
        return self.cp.cuda.get_elapsed_time(start, stop)

    def _tracking_malloc(self, size: int) -> Any:
        memory = self.pool.malloc(size)
        self.peak = max(self.peak, self.pool.used_bytes())
        return memory

    def peak_bytes(self, run: Callable[[int], Any]) -> int:
        self.cp.cuda.Device().synchronize()
        base = self.peak = self.pool.used_bytes()
        previous = self.cp.cuda.get_allocator()
        self.cp.cuda.set_allocator(self._tracking_malloc)
        try:
            run(0)
            self.cp.cuda.Device().synchronize()
        finally:
            self.cp.cuda.set_allocator(previous)
        return self.peak - base


class TorchClock:
    """CUDA events on torch's current stream, and torch's allocator peak during a call."""

    def __init__(self, torch: Any):
        self.torch = torch

    def record(self) -> Any:
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed(self, start: Any, stop: Any) -> float:
        stop.synchronize()
        return start.elapsed_time(stop)

    def peak_bytes(self, run: Callable[[int], Any]) -> int:
        self.torch.cuda.synchronize()
        base = self.torch.cuda.memory_allocated()
        self.torch.cuda.reset_peak_memory_stats()
        run(0)
        self.torch.cuda.synchronize()
        return self.torch.cuda.max_memory_allocated() - base


def median_ms(clock: Any, run: Callable[[int], Any], warmup: int, repeats: int) -> float:
    for i in range(warmup):
        run(i)
    times = []
    for i in range(repeats):
        start = clock.record()
        run(i)
        times.append(clock.elapsed(start, clock.record()))
    return statistics.median(times)
