"""GPU benchmark of ms_deform_attn: cudcn's CUDA kernels in float32, float16 and bfloat16, with and
without ``cudcn.deterministic()``, against the PyTorch ``grid_sample`` composition, in one run.

Needs a CUDA GPU with CuPy; torch (with CUDA) in the same Python gives the torch rows, through the
composition in ``tests/ops/ms_deform_attn/torch_peer.py``. Runs cudcn from the source tree::

    PYTHONPATH=. python3 benchmarks/bench_ms_deform_attn_gpu.py [--repeats 50] [--warmup 5]
        [--dtypes float32,float16,bfloat16] [--time-limit 200] [--json out.json]

(``benchmarks/gpu_check.sh`` runs it after the deform_conv2d benchmark.) The shape is Deformable
DETR's encoder, batch 1: levels (50, 75), (25, 38), (13, 19), (7, 10), every pixel a query
(Lq = S = 5017), M = 8 heads, D = 32 channels, P = 4 points. Locations uniform in [-0.05, 1.05]
(a few points outside), weights positive and summing to 1 over the L·P points of a query and head;
drawn in float64, rounded once to each dtype, every implementation of a dtype given the same values.

* Times: medians (ms) over ``--repeats`` calls after ``--warmup`` calls, each between two CUDA events
  of its library (``gpu_timing.py``), input sets rotated between calls. ``fwd+bwd`` is one forward and
  one backward giving the three gradients (cudcn: ``ops.ms_deform_attn_forward`` then ``_backward``;
  torch: ``autograd.grad`` of the output). ``torch / cudcn`` is the speed-up, same run.
* Deterministic mode: the same fwd+bwd inside ``with cudcn.deterministic():`` (only the value
  gradient's scatter changes); three deterministic backward calls must give bitwise identical
  gradients (else exit 2); whether three default-mode calls differed is printed.
* Precision: each dtype's output and gradients against cudcn's float64 on the same rounded inputs
  (printed), and float32 against torch's float32 (gate: relative error below 1e-3, else exit 2).

Without a GPU it prints the table with every row "not measured (no GPU lent)" and exits 1; rows not
started within ``--time-limit`` seconds read so and the exit code is 2. The last lines are the
Markdown table (device and date in its header) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from bench_deform_conv2d_gpu import cupy_dtype_reason, gpu_reason, relative_error
from gpu_table import NO_GPU, Deadline, parse_args
from gpu_timing import CupyClock, TorchClock, median_ms

LEVELS = ((50, 75), (25, 38), (13, 19), (7, 10))
HEADS, CHANNELS, POINTS = 8, 32, 4
SETS = 3  # input sets rotated between calls
IMPLEMENTATIONS = ("cudcn", "cudcn deterministic", "torch grid_sample")
NAMES = ("value", "sampling_locations", "attention_weights")
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
F32_GATE = 1e-3  # cudcn float32 against torch float32


@dataclass
class Row:
    """One line of the table: medians in ms, ``None`` where not measured (``note`` says why)."""

    dtype: str
    implementation: str
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    note: str = ""
    failed: bool = False


def host_inputs(levels: tuple, queries: int, seed: int, dtype: Any) -> dict[str, np.ndarray]:
    """value, locations, weights and the cotangent ``grad``, drawn in float64, rounded to ``dtype``."""
    rng = np.random.default_rng(seed)
    spatial = sum(h * w for h, w in levels)
    shape = (1, queries, HEADS, len(levels), POINTS)
    weights = rng.uniform(0.1, 1.0, shape)
    arrays = {
        "value": rng.standard_normal((1, spatial, HEADS, CHANNELS)),
        "sampling_locations": rng.uniform(-0.05, 1.05, (*shape, 2)),
        "attention_weights": weights / weights.sum(axis=(3, 4), keepdims=True),
        "grad": rng.standard_normal((1, queries, HEADS * CHANNELS)),
    }
    return {k: a.astype(dtype) for k, a in arrays.items()}


def level_arguments(levels: tuple) -> tuple[list, list]:
    """spatial_shapes and level_start_index as Python ints (no device-to-host copy per call)."""
    starts = np.cumsum([0, *(h * w for h, w in levels)])[:-1]
    return [list(level) for level in levels], [int(s) for s in starts]


def cudcn_calls(arrays: list[dict[str, Any]], levels: tuple) -> tuple[Callable, Callable]:
    from cudcn.ops import ms_deform_attn_backward, ms_deform_attn_forward

    shapes, starts = level_arguments(levels)

    def fwd(i: int) -> Any:
        a = arrays[i % len(arrays)]
        return ms_deform_attn_forward(a["value"], shapes, starts, *(a[k] for k in NAMES[1:]))

    def fwd_bwd(i: int) -> Any:
        a = arrays[i % len(arrays)]
        args = (a["value"], shapes, starts, *(a[k] for k in NAMES[1:]))
        return ms_deform_attn_forward(*args), ms_deform_attn_backward(a["grad"], *args)

    return fwd, fwd_bwd


def torch_calls(torch: Any, peer: Callable, tensors: list[dict[str, Any]], levels: tuple) -> tuple:
    def fwd(i: int) -> Any:
        t = tensors[i % len(tensors)]
        with torch.no_grad():
            return peer(t["value"], levels, t["sampling_locations"], t["attention_weights"])

    def fwd_bwd(i: int) -> Any:
        t = tensors[i % len(tensors)]
        out = peer(t["value"], levels, t["sampling_locations"], t["attention_weights"])
        return out, torch.autograd.grad(out, [t[k] for k in NAMES], t["grad"])

    return fwd, fwd_bwd


class Bench:
    """Measures every dtype's rows in turn; ``lines`` collects the findings printed before the table.
    ``peer`` is the torch composition (None: torch rows read ``no_torch``)."""

    def __init__(
        self,
        cp: Any,
        torch: Any,
        peer: Any,
        no_torch: str,
        args: Any,
        levels: tuple = LEVELS,
        queries: int | None = None,
    ):
        self.cp, self.torch, self.peer, self.no_torch = cp, torch, peer, no_torch
        self.levels = levels
        self.queries = queries or sum(h * w for h, w in levels)  # default: one query per pixel
        self.warmup, self.repeats, self.deadline = args.warmup, args.repeats, Deadline(args.time_limit)
        self.cupy_clock = CupyClock(cp)
        self.torch_clock = TorchClock(torch) if torch is not None else None
        self.rows: list[Row] = []
        self.lines: list[str] = []
        self.checks_ok = True

    def measure(self, row: Row, clock: Any, fwd: Callable | None, fwd_bwd: Callable) -> None:
        if self.deadline.expired():
            row.note = self.deadline.note()
            return
        try:
            if fwd is not None:
                row.fwd_ms = median_ms(clock, fwd, self.warmup, self.repeats)
            row.fwd_bwd_ms = median_ms(clock, fwd_bwd, self.warmup, self.repeats)
        except Exception as error:  # a failing call becomes a failed row, not a lost table
            row.note = f"failed: {type(error).__name__}: {(str(error) or '-').splitlines()[0][:80]}"
            row.failed = row.implementation.startswith("cudcn")

    def checked(self, label: str, check: Callable[[], None]) -> None:
        if self.deadline.expired():
            self.checks_ok = False
            self.lines.append(f"{label}: not checked (time limit reached)")
            return
        try:
            check()
        except Exception as error:
            self.checks_ok = False
            self.lines.append(f"{label} failed: {type(error).__name__}: {error}"[:200])

    def dtype(self, dtype: str) -> None:
        import cudcn

        rows = {impl: Row(dtype, impl) for impl in IMPLEMENTATIONS}
        self.rows += rows.values()
        hosts = [host_inputs(self.levels, self.queries, s, NUMPY_DTYPES[dtype]) for s in range(SETS)]
        ours = None
        reason = cupy_dtype_reason(self.cp, dtype)
        if reason is not None:
            rows["cudcn"].note = rows["cudcn deterministic"].note = reason
        else:
            ours = [{k: self.cp.asarray(v) for k, v in h.items()} for h in hosts]
            fwd, fwd_bwd = cudcn_calls(ours, self.levels)
            self.measure(rows["cudcn"], self.cupy_clock, fwd, fwd_bwd)

            def exact(i: int) -> Any:
                with cudcn.deterministic():
                    return fwd_bwd(i)

            self.measure(rows["cudcn deterministic"], self.cupy_clock, None, exact)
            self.checked(f"{dtype} determinism", lambda: self.determinism(dtype, fwd_bwd, exact))
        theirs = None
        if self.peer is None:
            rows["torch grid_sample"].note = self.no_torch
        else:
            theirs = self.torch_tensors(hosts, dtype)
            calls = torch_calls(self.torch, self.peer, theirs, self.levels)
            self.measure(rows["torch grid_sample"], self.torch_clock, *calls)
        if rows["torch grid_sample"].fwd_bwd_ms is None:
            theirs = None  # a refused dtype is shown in its row, not compared
        if ours is not None:
            self.checked(f"{dtype} precision", lambda: self.compare(dtype, hosts[0], ours, theirs))

    def torch_tensors(self, hosts: list[dict], dtype: str) -> list[dict[str, Any]]:
        torch = self.torch
        kind = getattr(torch, dtype)  # the values are exact in float32, then in ``dtype``
        return [
            {
                k: torch.from_numpy(v.astype(np.float32)).cuda().to(kind).requires_grad_(k != "grad")
                for k, v in h.items()
            }
            for h in hosts
        ]

    def results(self, arrays: list[dict[str, Any]]) -> list[np.ndarray]:
        out, grads = cudcn_calls(arrays, self.levels)[1](0)
        return [self.cp.asnumpy(a) for a in (out, *grads)]

    def determinism(self, dtype: str, fwd_bwd: Callable, exact: Callable) -> None:
        def digests(run: Callable[[int], Any]) -> int:
            found = set()
            for _ in range(3):
                digest = hashlib.sha256()
                for g in run(0)[1]:
                    digest.update(self.cp.asnumpy(g).tobytes())
                found.add(digest.hexdigest())
            return len(found)

        same = digests(exact) == 1
        default = "identical" if digests(fwd_bwd) == 1 else "differed"
        self.checks_ok &= same
        self.lines.append(
            f"{dtype}: deterministic mode, 3 backward calls bitwise identical: "
            f"{'yes' if same else 'NO'}; default mode: {default}"
        )

    def compare(self, dtype: str, host: dict[str, np.ndarray], ours: list, theirs: list | None) -> None:
        """Relative errors of the output and the gradients against cudcn's float64 on the same
        rounded inputs; float32 also against torch (gated)."""
        labels = ["output", *(f"grad {n}" for n in NAMES)]
        wide = {k: self.cp.asarray(v.astype(np.float64)) for k, v in host.items()}
        ref = self.results([wide])
        found = {"cudcn": self.results(ours)}
        if theirs is not None:
            out, grads = torch_calls(self.torch, self.peer, theirs, self.levels)[1](0)
            found["torch"] = [t.detach().float().cpu().numpy() for t in (out, *grads)]
        for name, values in found.items():
            errors = ", ".join(
                f"{k} {relative_error(v, r):.1e}" for k, v, r in zip(labels, values, ref, strict=True)
            )
            self.lines.append(
                f"{dtype} {name}: relative error vs float64 on the same rounded inputs: {errors}"
            )
        if dtype == "float32" and len(found) == 2:
            worst = max(relative_error(a, b) for a, b in zip(*found.values(), strict=True))
            self.checks_ok &= worst < F32_GATE
            self.lines.append(
                f"float32: largest relative error cudcn vs torch {worst:.1e} (gate {F32_GATE:g})"
            )


def table(rows: list[Row], device: str, levels: tuple = LEVELS) -> str:
    """The Markdown table, with a ``torch / cudcn`` speed-up line per dtype where both were measured."""
    queries = sum(h * w for h, w in levels)
    lines = [
        f"ms_deform_attn on a GPU: levels {list(levels)}, Lq = {queries}, M = {HEADS}, D = {CHANNELS}, "
        f"P = {POINTS}; {device}; {datetime.date.today().isoformat()}",
        "",
        "| dtype | implementation | fwd ms | fwd+bwd ms |",
        "|---|---|---:|---:|",
    ]
    found = {(r.dtype, r.implementation): r for r in rows}

    def cell(value: float | None, row: Row, digits: str = ".3f") -> str:
        if value is not None:
            return format(value, digits)
        return (
            "— (forward unchanged)"
            if row.implementation == "cudcn deterministic" and not row.note
            else row.note
        )

    for row in rows:
        lines.append(
            f"| {row.dtype} | {row.implementation} | {cell(row.fwd_ms, row)} | {cell(row.fwd_bwd_ms, row)} |"
        )
        ours, theirs = found[row.dtype, "cudcn"], found[row.dtype, "torch grid_sample"]
        if row is theirs and None not in (ours.fwd_ms, ours.fwd_bwd_ms, theirs.fwd_ms, theirs.fwd_bwd_ms):
            speedups = (theirs.fwd_ms / ours.fwd_ms, theirs.fwd_bwd_ms / ours.fwd_bwd_ms)
            lines.append(f"| {row.dtype} | torch / cudcn | {speedups[0]:.2f} | {speedups[1]:.2f} |")
    return "\n".join(lines)


def torch_peer() -> tuple[Any, Any, str]:
    """torch, the grid_sample composition and ``""``; or ``None, None`` and why the rows are empty."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests' peer
    try:
        import torch

        from tests.ops.ms_deform_attn.torch_peer import grid_sample_ms_deform_attn
    except ImportError as error:
        return None, None, f"not measured (no torch or its peer: {error.name or error})"
    if not torch.cuda.is_available():
        return None, None, "not measured (torch sees no GPU)"
    return torch, grid_sample_ms_deform_attn, ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0])
    cp, reason = gpu_reason()
    if cp is None:
        print(f"bench_ms_deform_attn_gpu: no usable CUDA GPU here: {reason}", file=sys.stderr)
        rows = [Row(d, impl, note=NO_GPU) for d in args.dtypes for impl in IMPLEMENTATIONS]
        device, lines, status = "no GPU", [f"no usable CUDA GPU here: {reason}"], 1
    else:
        torch, peer, no_torch = torch_peer()
        name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
        device = name.decode() if isinstance(name, bytes) else str(name)
        bench = Bench(cp, torch, peer, no_torch, args)
        for dtype in args.dtypes:
            bench.dtype(dtype)
        late = sum(r.note.startswith("not measured (time limit") for r in bench.rows)
        failed = sum(r.failed for r in bench.rows)
        checks = "checks passed" if bench.checks_ok else "a check FAILED"
        bench.lines.append(
            f"bench_ms_deform_attn_gpu: failed rows {failed}, rows out of time {late}, {checks}"
        )
        print("\n".join(bench.lines))
        rows, lines = bench.rows, bench.lines
        status = 0 if bench.checks_ok and not late and not failed else 2
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": device, "lines": lines, "rows": [asdict(r) for r in rows]}, f, indent=2)
    print(table(rows, device))
    return status


if __name__ == "__main__":
    sys.exit(main())
