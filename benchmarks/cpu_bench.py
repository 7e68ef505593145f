"""What the CPU benchmarks share: timing contenders in turns, and ONNX Runtime sessions.

Contenders take turns within each repeat, each after a pause of ``SETTLE_S``, so that a busy machine
slows them alike and no contender runs while the previous one's idle BLAS workers still spin (an idle
OpenBLAS worker spins for about 0.1 s after a call, taking a core).

ONNX Runtime's idle intra-op workers spin too by default; in turns they would take the cores from
whoever runs next (measured: 5-fold slower calls), so every session here sets
``session.intra_op.allow_spinning = 0``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

SETTLE_S = 0.2


def medians_ms(
    fns: Mapping[str, Callable[[], object]],
    repeats: int | Mapping[str, int],
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, float], dict[str, float]]:
    """(median, fastest) ms of each function over its repeats (one count for all, or one per name),
    taking turns after one warm-up call each, each timed call after a ``SETTLE_S`` pause, on
    ``clock``."""
    counts = {name: repeats for name in fns} if isinstance(repeats, int) else dict(repeats)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for turn in range(max(counts.values())):
        for name, fn in fns.items():
            if turn < counts[name]:
                time.sleep(SETTLE_S)
                t = clock()
                fn()
                times[name].append(clock() - t)
    medians = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    return medians, {name: min(ts) * 1e3 for name, ts in times.items()}


def cpu_session(model: bytes, threads: int) -> Any:
    """An ``onnxruntime.InferenceSession`` on the serialized ``model`` with ``threads`` intra-op
    threads and spinning switched off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
