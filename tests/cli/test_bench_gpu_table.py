"""benchmarks/bench_deform_conv2d_gpu.py without a GPU: its command line, the rows it plans, the
"not measured (no GPU lent)" table it prints here, the same-run ratios, the time limit, the peak
memory tracker, and the whole measuring loop run end to end on a stand-in for CuPy whose arrays are
NumPy arrays (so cudcn's CPU backend does the work, in every dtype)."""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cudcn.dtypes import eps

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_deform_conv2d_gpu as bench
import gpu_table
from gpu_table import Deadline, Row
from gpu_timing import CupyClock

SHAPE = (1, 4, 6, 6)


class _Event:
    def record(self) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass


class _Pool:
    def __init__(self) -> None:
        self.used = 0

    def used_bytes(self) -> int:
        return self.used

    def malloc(self, size: int) -> int:
        self.used += size
        return size

    def free_all_blocks(self) -> None:
        pass


def fake_cupy(asarray=np.asarray) -> SimpleNamespace:
    """Enough of CuPy for the benchmark: NumPy arrays, perf_counter events, a counting pool."""
    pool, allocator = _Pool(), [None]
    cuda = SimpleNamespace(
        Event=_Event,
        get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3,
        get_allocator=lambda: allocator[0],
        set_allocator=lambda f: allocator.__setitem__(0, f),
        Device=lambda: SimpleNamespace(synchronize=lambda: None),
    )
    return SimpleNamespace(
        __version__="0-fake",
        asarray=asarray,
        asnumpy=np.asarray,
        get_default_memory_pool=lambda: pool,
        cuda=cuda,
    )


def _args(**kw) -> SimpleNamespace:
    return SimpleNamespace(**{"warmup": 0, "repeats": 2, "time_limit": 600.0, **kw})


def test_command_line_defaults_and_bad_values(capsys) -> None:
    args = gpu_table.parse_args([], "x")
    assert (args.warmup, args.repeats, args.dtypes) == (5, 50, ["float32", "float16", "bfloat16"])
    assert gpu_table.parse_args(["--dtypes", "float16, bfloat16"], "x").dtypes == ["float16", "bfloat16"]
    for bad in (["--dtypes", "float8"], ["--repeats", "0"], ["--time-limit", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            gpu_table.parse_args(bad, "x")
        assert exit_info.value.code == 2
        assert bad[0] in capsys.readouterr().err


def test_without_a_gpu_every_planned_row_reads_not_measured(tmp_path, capsys) -> None:
    if bench.gpu_reason()[0] is not None:
        pytest.skip("a GPU is present: the benchmark would measure")
    out = tmp_path / "rows.json"
    assert bench.main(["--json", str(out)]) == 1
    printed = capsys.readouterr()
    assert "no usable CUDA GPU here" in printed.err
    lines = [x for x in printed.out.splitlines() if x.startswith("| 8, 256") or x.startswith("| 32")]
    # 2 shapes x (5 float32 rows + 4 float16 + 4 bfloat16), no ratio lines, every cell unmeasured
    assert len(lines) == 2 * 13
    assert all(x.count(gpu_table.NO_GPU) == 4 for x in lines)
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 26 and {r["dtype"] for r in rows} == {"float32", "float16", "bfloat16"}
    assert all(r["fwd_ms"] is None and r["note"] == gpu_table.NO_GPU for r in rows)


def test_ratios_are_same_run_quotients_and_only_where_both_rows_were_measured() -> None:
    s = (2, 8, 4, 4)
    rows = [
        Row(s, "float16", "cudcn", 1.0, 3.0, 10.0, 30.0),
        Row(s, "float16", "cudcn deterministic", None, 4.5, None, 45.0),
        Row(s, "float16", "torchvision", 2.0, 6.0, 20.0, 15.0),
        Row(s, "bfloat16", "cudcn", 1.0, 3.0, 10.0, 30.0),
        Row(s, "bfloat16", "torchvision", note=gpu_table.TV_NO_BFLOAT16),
    ]
    text = gpu_table.table(rows, "Fake GPU", datetime.date(2026, 12, 1))
    assert text.splitlines()[0].endswith("Fake GPU; 2026-12-01")
    lines = text.splitlines()
    tv = next(x for x in lines if "cudcn / torchvision" in x)
    assert "target NOT met" in tv and "| 0.50 | 0.50 | 0.50 | 2.00 |" in tv  # peak 30 / 15
    det = next(x for x in lines if "deterministic / default" in x)
    assert "| — | 1.50 | — | 1.50 |" in det
    assert "— (forward unchanged)" in next(x for x in lines if "| cudcn deterministic |" in x)
    assert sum("/" in x.split("|")[3] for x in lines[4:]) == 2  # no bfloat16 ratio: tv unmeasured
    assert lines.index(det) < lines.index(next(x for x in lines if "| bfloat16 | cudcn |" in x))
    assert gpu_table.TV_NO_BFLOAT16 in text


def test_time_limit_and_exit_status() -> None:
    now = [0.0]
    deadline = Deadline(10, clock=lambda: now[0])
    assert not deadline.expired()
    now[0] = 10.0
    assert deadline.expired() and "10 s" in deadline.note()
    measured = Row(SHAPE, "float32", "cudcn", 1.0, 2.0, 3.0, 4.0)
    assert (
        gpu_table.exit_status(
            [measured, Row(SHAPE, "bfloat16", "torchvision", note=gpu_table.TV_NO_BFLOAT16)], True
        )
        == 0
    )
    assert gpu_table.exit_status([measured], checks_ok=False) == 2
    assert gpu_table.exit_status([Row(SHAPE, "float32", "cudcn", note=deadline.note())], True) == 2
    assert gpu_table.exit_status([Row(SHAPE, "float32", "cudcn", failed=True)], True) == 2


def test_peak_memory_is_the_high_water_mark_of_one_call() -> None:
    cp = fake_cupy()
    clock = CupyClock(cp)
    cp.get_default_memory_pool().used = 1000  # already allocated before the call

    def run(_: int) -> None:
        malloc = cp.cuda.get_allocator()
        malloc(300)
        malloc(200)
        cp.get_default_memory_pool().used -= 400  # freed inside the call
        malloc(100)

    assert clock.peak_bytes(run) == 500
    assert cp.cuda.get_allocator() is None  # the previous allocator is back


@pytest.mark.slow
def test_bfloat16_rows_say_why_when_cupy_lacks_the_dtype() -> None:
    def no_bfloat16(a):
        if a.dtype == bench.NUMPY_DTYPES["bfloat16"]:
            raise ValueError("Unsupported dtype bfloat16")
        return np.asarray(a)

    assert bench.cupy_dtype_reason(fake_cupy(), "bfloat16") is None
    assert bench.cupy_dtype_reason(fake_cupy(no_bfloat16), "float16") is None
    reason = bench.cupy_dtype_reason(fake_cupy(no_bfloat16), "bfloat16")
    assert reason == "not run: CuPy 0-fake has no bfloat16 (ValueError)"
    b = bench.Bench(fake_cupy(no_bfloat16), None, None, "not measured (no torch)", _args())
    b.shape(SHAPE, ["bfloat16"])
    assert [r.note for r in b.rows[:2]] == [reason, reason]
    assert gpu_table.exit_status(b.rows, b.checks_ok) == 0


@pytest.mark.slow
def test_the_measuring_loop_end_to_end_on_the_cpu_backend() -> None:
    b = bench.Bench(fake_cupy(), None, None, "not measured (no torch)", _args())
    b.shape(SHAPE, list(gpu_table.DTYPES))
    rows = {(r.dtype, r.implementation): r for r in b.rows}
    for dtype in gpu_table.DTYPES:
        assert rows[dtype, "cudcn"].measured(), rows[dtype, "cudcn"]
        assert rows[dtype, "cudcn deterministic"].measured(gpu_table.BACKWARD_METRICS)
        assert rows[dtype, "cudcn deterministic"].fwd_ms is None
        assert rows[dtype, "torchvision"].note == "not measured (no torch)"
        assert any(
            f"{dtype}: deterministic mode, 3 backward calls bitwise identical: yes" in x for x in b.lines
        )
    errors = {x.split(" cudcn:")[0].split()[-1]: x for x in b.lines if "relative error" in x}
    assert set(errors) == set(gpu_table.DTYPES)
    # against float64 on the same rounded inputs: 16-bit results are float32 sums rounded once
    # (relative error eps / 2, plus far less); float32 sums of at most 36 terms each
    worst = {d: max(float(t.split()[-1]) for t in x.split(": ")[-1].split(", ")) for d, x in errors.items()}
    assert worst["float32"] <= 2 * 36 * eps("float32")
    assert worst["float16"] <= eps("float16") and worst["bfloat16"] <= eps("bfloat16")
    assert b.checks_ok and gpu_table.exit_status(b.rows, b.checks_ok) == 0
    assert gpu_table.verdict(b.rows, b.checks_ok).endswith("failed rows 0, rows out of time 0, checks passed")
    det = [x for x in gpu_table.table(b.rows, "CPU").splitlines() if "deterministic / default" in x]
    assert len(det) == 3 and all(x.endswith(" | — |") for x in det)  # the fake pool allocates 0


def test_rows_not_started_in_time_read_so() -> None:
    b = bench.Bench(fake_cupy(), None, None, "not measured (no torch)", _args(time_limit=1e-9))
    b.shape(SHAPE, ["float32"])
    assert b.rows[0].note.startswith("not measured (time limit of")
    assert "float32 determinism: not checked (time limit reached)" in b.lines[0]
    assert gpu_table.exit_status(b.rows, b.checks_ok) == 2


def test_a_failing_cudcn_call_is_a_failed_row_and_the_table_still_prints(monkeypatch) -> None:
    real = bench.cudcn_calls

    def failing_float16(arrays):
        fwd, fwd_bwd = real(arrays)

        def check(run):
            def call(i):
                if arrays[0]["input"].dtype == np.float16:
                    raise RuntimeError("boom\nsecond line")
                return run(i)

            return call

        return check(fwd), check(fwd_bwd)

    monkeypatch.setattr(bench, "cudcn_calls", failing_float16)
    b = bench.Bench(fake_cupy(), None, None, "not measured (no torch)", _args())
    b.shape(SHAPE, ["float32", "float16"])
    rows = {(r.dtype, r.implementation): r for r in b.rows}
    assert rows["float16", "cudcn"].failed and rows["float16", "cudcn"].note == "failed: RuntimeError: boom"
    assert rows["float32", "cudcn"].measured() and not rows["float32", "cudcn"].failed
    assert any("float16 determinism failed: RuntimeError: boom" in x for x in b.lines)
    assert not b.checks_ok and gpu_table.exit_status(b.rows, b.checks_ok) == 2
    assert gpu_table.verdict(b.rows, b.checks_ok).endswith(
        "failed rows 2, rows out of time 0, a check FAILED"
    )
    assert "failed: RuntimeError: boom" in gpu_table.table(b.rows, "CPU")
