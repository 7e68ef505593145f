"""Host-side half of ``bench_deform_conv2d_gpu.py``: which rows the GPU benchmark measures, the rows
it prints where it could not measure them, its time limit, and its Markdown table. Nothing here needs
a GPU, so ``tests/cli/test_bench_gpu_table.py`` checks all of it on any machine.
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

SHAPES = [(8, 256, 64, 64), (32, 64, 56, 56)]  # (B, C, H, W); C_out = C_in = C, 3x3, padding 1
DTYPES = ("float32", "float16", "bfloat16")
METRICS = ("fwd_ms", "fwd_bwd_ms", "fwd_peak_mib", "fwd_bwd_peak_mib")
BACKWARD_METRICS = ("fwd_bwd_ms", "fwd_bwd_peak_mib")  # what the deterministic mode can change
TITLE = "deform_conv2d on a GPU"
NO_GPU = "not measured (no GPU lent)"
TV_NO_BFLOAT16 = "not available: torchvision has no bfloat16 deform_conv2d"


def implementations(dtype: str) -> list[str]:
    """The rows of one shape and dtype, in table order. ``cuDNN conv`` is a plain 3x3 convolution of
    the same size (float32 with TF32 off; ``cuDNN conv tf32`` is torch's default, TF32 on)."""
    rows = ["cudcn", "cudcn deterministic", "torchvision", "cuDNN conv"]
    return [*rows, "cuDNN conv tf32"] if dtype == "float32" else rows


@dataclass
class Row:
    """One measured (or unmeasured) line: medians in ms and peak MiB; ``None`` where not measured,
    with ``note`` saying why. ``failed`` marks a call that raised (the benchmark then exits 2)."""

    shape: tuple[int, int, int, int]
    dtype: str
    implementation: str
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    fwd_peak_mib: float | None = None
    fwd_bwd_peak_mib: float | None = None
    note: str = ""
    failed: bool = False

    def measured(self, metrics: Iterable[str] = METRICS) -> bool:
        return all(getattr(self, m) is not None for m in metrics)

    def as_dict(self) -> dict:
        return asdict(self)


def planned_rows(
    shapes: Iterable[tuple[int, int, int, int]],
    dtypes: Iterable[str],
    note: str,
) -> list[Row]:
    """Every row the benchmark would measure, none measured, each reading ``note``."""
    dtypes = list(dtypes)
    return [Row(tuple(s), d, impl, note=note) for s in shapes for d in dtypes for impl in implementations(d)]


def _cell(row: Row, metric: str) -> str:
    value = getattr(row, metric)
    if value is not None:
        return f"{value:.3f}" if metric.endswith("_ms") else f"{value:.1f}"
    if row.implementation == "cudcn deterministic" and metric not in BACKWARD_METRICS and row.note == "":
        return "— (forward unchanged)"
    return row.note or "—"


def _ratio(a: Row, b: Row, metrics: Iterable[str]) -> dict[str, float | None]:
    """``a / b`` per metric; ``None`` (printed "—") where ``b`` is 0, e.g. no allocation."""
    return {m: getattr(a, m) / getattr(b, m) if getattr(b, m) else None for m in metrics}


def ratio_rows(rows: list[Row]) -> list[tuple[Row, str]]:
    """Same-run ratios per shape and dtype: cudcn / torchvision (every column; target: at most 1) and
    deterministic / default (fwd+bwd time and peak), where both rows were measured. Returns each
    ratio as a Row of ratios and a label."""
    found = {(r.shape, r.dtype, r.implementation): r for r in rows}
    out = []
    for (shape, dtype, impl), row in found.items():
        if impl != "cudcn" or not row.measured():
            continue
        tv = found.get((shape, dtype, "torchvision"))
        if tv is not None and tv.measured():
            ratios = _ratio(row, tv, METRICS)
            met = all(v is not None and v <= 1.0 for v in ratios.values())
            verdict = "target met" if met else "target NOT met"
            out.append((Row(shape, dtype, "", **ratios), f"cudcn / torchvision ({verdict})"))
        det = found.get((shape, dtype, "cudcn deterministic"))
        if det is not None and det.measured(BACKWARD_METRICS):
            ratios = _ratio(det, row, BACKWARD_METRICS)
            out.append((Row(shape, dtype, "", **ratios), "deterministic / default"))
    return out


def table(rows: list[Row], device: str, today: datetime.date | None = None) -> str:
    """The Markdown table (device and date in its first line) for benchmarks/RESULTS.md; ratio
    lines follow the rows of their shape and dtype."""
    today = today or datetime.date.today()
    lines = [
        f"{TITLE}: 3x3, pad 1, mask + bias; {device}; {today.isoformat()}",
        "",
        "| B, C, H x W | dtype | implementation | fwd ms | fwd+bwd ms | fwd peak MiB | fwd+bwd peak MiB |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    ratios: dict[tuple, list[tuple[Row, str]]] = {}
    for ratio, label in ratio_rows(rows):
        ratios.setdefault((ratio.shape, ratio.dtype), []).append((ratio, label))

    def line(row: Row, label: str, fmt: Callable[[Row, str], str]) -> str:
        b, c, h, w = row.shape
        cells = " | ".join(fmt(row, m) for m in METRICS)
        return f"| {b}, {c}, {h}x{w} | {row.dtype} | {label} | {cells} |"

    def ratio_cell(row: Row, metric: str) -> str:
        value = getattr(row, metric)
        return "—" if value is None else f"{value:.2f}"

    for i, row in enumerate(rows):
        lines.append(line(row, row.implementation, _cell))
        following = rows[i + 1] if i + 1 < len(rows) else None
        key = (row.shape, row.dtype)
        if following is None or (following.shape, following.dtype) != key:
            lines += [line(r, label, ratio_cell) for r, label in ratios.get(key, [])]
    return "\n".join(lines)


class Deadline:
    """A wall-clock limit for the whole benchmark, so that it prints its table before the step limit
    of ``gpu_check.sh`` kills it. Rows not started in time read :meth:`note`."""

    def __init__(self, limit_s: float, clock: Callable[[], float] = time.monotonic):
        self.limit_s, self.clock = limit_s, clock
        self.start = clock()

    def expired(self) -> bool:
        return self.clock() - self.start >= self.limit_s

    def note(self) -> str:
        return f"not measured (time limit of {self.limit_s:g} s reached)"


def verdict(rows: list[Row], checks_ok: bool) -> str:
    """One line for the log's summary: failed rows, rows out of time, and the checks."""
    failed = sum(r.failed for r in rows)
    late = sum(r.note.startswith("not measured (time limit") for r in rows)
    checks = "checks passed" if checks_ok else "a check FAILED"
    return f"bench_deform_conv2d_gpu: failed rows {failed}, rows out of time {late}, {checks}"


def exit_status(rows: list[Row], checks_ok: bool) -> int:
    """0 when every row was measured or has a stated reason not to be (no bfloat16 dtype, no
    torchvision bfloat16) and every check held; 2 when a call failed, the time ran out, or a check
    failed."""
    late = any(r.note.startswith("not measured (time limit") for r in rows)
    return 0 if checks_ok and not late and not any(r.failed for r in rows) else 2


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    """The benchmark's command line: ``--warmup``, ``--repeats``, ``--dtypes``, ``--time-limit``,
    ``--json``; a bad value exits 2 with a message naming the flag."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--warmup", type=_positive(int), default=5)
    parser.add_argument("--repeats", type=_positive(int), default=50)
    parser.add_argument(
        "--dtypes", type=_dtypes, default=list(DTYPES), help="comma-separated subset of " + ",".join(DTYPES)
    )
    parser.add_argument(
        "--time-limit",
        type=_positive(float),
        default=200.0,
        help="seconds; rows not started by then are not measured",
    )
    parser.add_argument("--json", help="also write every number to this file")
    return parser.parse_args(argv)


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _dtypes(text: str) -> list[str]:
    chosen = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in chosen if d not in DTYPES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(DTYPES)}, got {text!r}")
    return chosen
