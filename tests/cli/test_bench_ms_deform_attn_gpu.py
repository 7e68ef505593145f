"""benchmarks/bench_ms_deform_attn_gpu.py without a GPU: it imports without CuPy, prints every row
"not measured (no GPU lent)" and exits 1, and its measuring loop runs end to end on the stand-in
for CuPy of test_bench_gpu_table.py (NumPy arrays; the emulated backend runs the CUDA kernels), at a
tiny shape."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import cudcn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_ms_deform_attn_gpu as bench
import gpu_table

from .test_bench_gpu_table import _args, fake_cupy


def test_without_a_gpu_every_row_reads_not_measured(tmp_path, capsys) -> None:
    if bench.gpu_reason()[0] is not None:
        pytest.skip("a GPU is present: the benchmark would measure")
    out = tmp_path / "rows.json"
    assert bench.main(["--json", str(out)]) == 1
    printed = capsys.readouterr()
    assert "bench_ms_deform_attn_gpu: no usable CUDA GPU here" in printed.err
    lines = [x for x in printed.out.splitlines() if x.startswith("| float") or x.startswith("| bfloat")]
    assert len(lines) == 3 * 3 and all(x.count(gpu_table.NO_GPU) == 2 for x in lines)
    assert "Lq = 5017, M = 8, D = 32, P = 4" in printed.out
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 9 and all(r["fwd_ms"] is None and r["note"] == gpu_table.NO_GPU for r in rows)


def test_the_measuring_loop_end_to_end_on_the_emulated_backend(monkeypatch) -> None:
    monkeypatch.setattr(bench, "HEADS", 2)
    monkeypatch.setattr(bench, "CHANNELS", 3)
    monkeypatch.setattr(bench, "POINTS", 2)
    b = bench.Bench(fake_cupy(), None, None, "not measured (no torch)", _args(), ((3, 4), (2, 2)), 3)
    with cudcn.use_backend("emulated"):
        for dtype in ("float32", "bfloat16"):
            b.dtype(dtype)
    rows = {(r.dtype, r.implementation): r for r in b.rows}
    for dtype in ("float32", "bfloat16"):
        assert rows[dtype, "cudcn"].fwd_ms is not None and rows[dtype, "cudcn"].fwd_bwd_ms is not None
        assert rows[dtype, "cudcn deterministic"].fwd_bwd_ms is not None
        assert rows[dtype, "torch grid_sample"].note == "not measured (no torch)"
        assert f"{dtype}: deterministic mode, 3 backward calls bitwise identical: yes" in "\n".join(b.lines)
    assert sum("relative error vs float64" in x for x in b.lines) == 2, b.lines
    assert b.checks_ok
    printed = bench.table(b.rows, "CPU", ((3, 4), (2, 2)))
    assert "| float32 | cudcn deterministic | — (forward unchanged) |" in printed
