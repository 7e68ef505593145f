"""ONNX Runtime sessions for the CPU benchmarks: CPU provider, a set thread count, spinning off.

ONNX Runtime's idle intra-op workers spin by default after a run; in a benchmark where contenders take
turns they would take the cores from whoever runs next (measured: 5-fold slower calls), so every
session here sets ``session.intra_op.allow_spinning = 0``."""

from __future__ import annotations

from typing import Any


def cpu_session(model: bytes, threads: int) -> Any:
    """An ``onnxruntime.InferenceSession`` on the serialized ``model`` with ``threads`` intra-op
    threads and spinning switched off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
