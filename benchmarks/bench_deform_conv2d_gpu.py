"""GPU benchmark of deform_conv2d: cudcn's CUDA backend in float32, float16 and bfloat16, with and
without ``cudcn.deterministic()``, against torchvision and a plain cuDNN conv, in one run.

Needs a CUDA GPU with CuPy; torch and torchvision in the same Python give their rows. Runs cudcn from
the source tree::

    PYTHONPATH=. python3 benchmarks/bench_deform_conv2d_gpu.py [--repeats 50] [--warmup 5]
        [--dtypes float32,float16,bfloat16] [--time-limit 200] [--json out.json]

(``benchmarks/gpu_check.sh`` runs it after the GPU tests.) 3x3 kernel, padding 1, with mask and bias,
offsets uniform in [-2, 2]; shapes (B, C_in = C_out, H, W) in ``gpu_table.SHAPES``. The float32
inputs are rounded once to each dtype, and every implementation of that dtype gets the same values.

* Times: medians (ms) over ``--repeats`` calls after ``--warmup`` calls (compilation, cuBLAS / cuDNN
  setup and autotuning stay out), each call between two CUDA events of its own library, input sets
  rotated so that repeated calls do not find their inputs in L2. ``fwd+bwd`` is one forward and one
  backward giving every gradient (cudcn: ``ops.deform_conv2d_forward`` then ``_backward``; torch:
  ``autograd.grad`` of the output).
* Deterministic mode: the same fwd+bwd inside ``with cudcn.deterministic():`` (only the backward
  changes), timed right after the default mode, with the ratio. The benchmark also checks that three
  deterministic backward calls give bitwise identical gradients (else it exits 2) and says whether
  three default-mode calls differed.
* Peak memory, per row, reset before each measured call: bytes allocated during the call beyond what
  was allocated before it (outputs and gradients included). torch: ``max_memory_allocated()`` after
  ``reset_peak_memory_stats()``, minus ``memory_allocated()`` before. cudcn: CuPy's default pool has
  no high-water mark, so for the measured call the allocator is a wrapper of the pool's ``malloc``
  that reads ``used_bytes()`` after every allocation (bytes in use rise only at an allocation, so the
  largest reading is the peak), minus ``used_bytes()`` before. Neither counts cuBLAS's workspace.
* Precision: every dtype's output and gradients against cudcn's float64 on the same rounded inputs
  (relative Frobenius error, printed, not a gate: the gated precision tests are ``pytest -m gpu``);
  float32 also against torchvision (gate: below 1e-3, else exit 2). CuPy's and torchvision's float32
  GEMMs run in full float32; the cuDNN conv runs with TF32 off and, as ``cuDNN conv tf32``, on.
* bfloat16: cudcn's rows run where the installed CuPy holds ``ml_dtypes.bfloat16`` arrays, else they
  say why not; torchvision has no bfloat16 deform_conv2d: its row says so (after one call that must
  raise; if it runs, it is timed).

Without a GPU it prints the table with every row "not measured (no GPU lent)" and exits 1. Rows not
started within ``--time-limit`` seconds read so, and the exit code is 2. The last lines are the
Markdown table (device and date in its header) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
from gpu_table import (
    NO_GPU,
    SHAPES,
    TV_NO_BFLOAT16,
    Deadline,
    Row,
    exit_status,
    implementations,
    parse_args,
    planned_rows,
    table,
    verdict,
)
from gpu_timing import CupyClock, TorchClock, median_ms

SETS = 3  # input sets rotated between calls
NAMES = ("input", "offset", "weight", "bias", "mask")
NUMPY_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float64": np.dtype(np.float64),
}
F32_GATE = 1e-3  # cudcn float32 against torchvision float32


def host_inputs(shape: tuple[int, int, int, int], seed: int, dtype: str) -> dict[str, np.ndarray]:
    """Random inputs of one call and a cotangent ``grad``, drawn in float64, rounded once to
    ``dtype`` (a key of :data:`NUMPY_DTYPES`)."""
    batch, channels, height, width = shape
    rng = np.random.default_rng(seed)
    arrays = {
        "input": rng.standard_normal((batch, channels, height, width)),
        "offset": rng.uniform(-2, 2, (batch, 18, height, width)),
        "weight": rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels),
        "bias": rng.standard_normal(channels),
        "mask": rng.uniform(0, 1, (batch, 9, height, width)),
        "grad": rng.standard_normal((batch, channels, height, width)),
    }
    return {name: a.astype(NUMPY_DTYPES[dtype]) for name, a in arrays.items()}


def relative_error(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def cupy_dtype_reason(cp: Any, dtype: str) -> str | None:
    """Why cudcn's rows of ``dtype`` cannot run on this CuPy (no bfloat16 arrays), or ``None``."""
    if dtype != "bfloat16":
        return None
    values = np.arange(4).astype(NUMPY_DTYPES[dtype])
    try:
        back = cp.asnumpy(cp.asarray(values))
    except Exception as error:  # CuPy without the dtype raises ValueError / TypeError
        return f"not run: CuPy {cp.__version__} has no bfloat16 ({type(error).__name__})"
    if back.dtype != values.dtype or back.tobytes() != values.tobytes():
        return f"not run: CuPy {cp.__version__} does not keep bfloat16 arrays as bfloat16"
    return None


def cudcn_calls(arrays: list[dict[str, Any]]) -> tuple[Callable, Callable]:
    from cudcn.ops import deform_conv2d_backward, deform_conv2d_forward

    def fwd(i: int) -> Any:
        a = arrays[i % len(arrays)]
        return deform_conv2d_forward(*(a[k] for k in NAMES[:4]), padding=1, mask=a["mask"])

    def fwd_bwd(i: int) -> Any:
        a = arrays[i % len(arrays)]
        args = [a[k] for k in NAMES[:4]]
        out = deform_conv2d_forward(*args, padding=1, mask=a["mask"])
        return out, deform_conv2d_backward(a["grad"], *args, padding=1, mask=a["mask"])

    return fwd, fwd_bwd


def deterministic(run: Callable[[int], Any]) -> Callable[[int], Any]:
    import cudcn

    def wrapped(i: int) -> Any:
        with cudcn.deterministic():
            return run(i)

    return wrapped


def torch_calls(torch: Any, tv_ops: Any, tensors: list[dict[str, Any]]) -> dict[str, tuple]:
    """(fwd, fwd_bwd) of torchvision's deform_conv2d and of a plain conv2d of the same size."""

    def tv_fwd(i: int) -> Any:
        t = tensors[i % len(tensors)]
        with torch.no_grad():
            return tv_ops.deform_conv2d(*(t[k] for k in NAMES[:4]), padding=1, mask=t["mask"])

    def tv_fwd_bwd(i: int) -> Any:
        t = tensors[i % len(tensors)]
        out = tv_ops.deform_conv2d(*(t[k] for k in NAMES[:4]), padding=1, mask=t["mask"])
        return out, torch.autograd.grad(out, [t[k] for k in NAMES], t["grad"])

    def conv_fwd(i: int) -> Any:
        t = tensors[i % len(tensors)]
        with torch.no_grad():
            return torch.nn.functional.conv2d(t["input"], t["weight"], t["bias"], padding=1)

    def conv_fwd_bwd(i: int) -> Any:
        t = tensors[i % len(tensors)]
        args = [t["input"], t["weight"], t["bias"]]
        out = torch.nn.functional.conv2d(*args, padding=1)
        return out, torch.autograd.grad(out, args, t["grad"])

    return {"torchvision": (tv_fwd, tv_fwd_bwd), "cuDNN conv": (conv_fwd, conv_fwd_bwd)}


class Bench:
    """Measures the rows of each shape and dtype in turn; ``lines`` collects the precision and
    determinism findings printed before the table."""

    def __init__(self, cp: Any, torch: Any, tv_ops: Any, no_torch: str, args: Any):
        self.cp, self.torch, self.tv_ops, self.no_torch = cp, torch, tv_ops, no_torch
        self.warmup, self.repeats = args.warmup, args.repeats
        self.deadline = Deadline(args.time_limit)
        self.cupy_clock = CupyClock(cp)
        self.torch_clock = TorchClock(torch) if torch is not None else None
        self.rows: list[Row] = []
        self.lines: list[str] = []
        self.checks_ok = True

    def measure(self, row: Row, clock: Any, fwd: Callable | None, fwd_bwd: Callable) -> None:
        """Fill ``row`` (``fwd`` None: a backward-only row), or say why it was not measured."""
        if self.deadline.expired():
            row.note = self.deadline.note()
            return
        try:
            if fwd is not None:
                row.fwd_ms = median_ms(clock, fwd, self.warmup, self.repeats)
                row.fwd_peak_mib = clock.peak_bytes(fwd) / 2**20
            row.fwd_bwd_ms = median_ms(clock, fwd_bwd, self.warmup, self.repeats)
            row.fwd_bwd_peak_mib = clock.peak_bytes(fwd_bwd) / 2**20
        except Exception as error:  # a failing call becomes a failed row, not a lost table
            row.note = f"failed: {type(error).__name__}: {(str(error) or '-').splitlines()[0][:80]}"
            row.failed = row.implementation.startswith("cudcn")  # the references' are shown only

    def guarded(self, label: str, check: Callable[..., None], *args: Any) -> None:
        """Run a check; if it raises, say so and fail (the table still prints)."""
        if self.deadline.expired():
            self.checks_ok = False
            self.lines.append(f"{label}: not checked (time limit reached)")
            return
        try:
            check(*args)
        except Exception as error:
            self.checks_ok = False
            self.lines.append(f"{label} failed: {type(error).__name__}: {error}"[:200])

    def shape(self, shape: tuple[int, int, int, int], dtypes: list[str]) -> None:
        for dtype in dtypes:
            self.dtype(shape, dtype, [host_inputs(shape, seed, dtype) for seed in range(SETS)])
        self.cp.get_default_memory_pool().free_all_blocks()
        if self.torch is not None:
            self.torch.cuda.empty_cache()

    def device_arrays(self, host: dict[str, np.ndarray]) -> dict[str, Any]:
        return {k: self.cp.asarray(v) for k, v in host.items()}

    def results(self, arrays: list[dict[str, Any]]) -> list[np.ndarray]:
        out, grads = cudcn_calls(arrays)[1](0)
        return [self.cp.asnumpy(a) for a in (out, *grads)]

    def dtype(self, shape: tuple, dtype: str, hosts: list[dict[str, np.ndarray]]) -> None:
        rows = {impl: Row(shape, dtype, impl) for impl in implementations(dtype)}
        self.rows += rows.values()
        ours = None
        reason = cupy_dtype_reason(self.cp, dtype)
        if reason is not None:
            rows["cudcn"].note = rows["cudcn deterministic"].note = reason
        else:
            ours = [self.device_arrays(h) for h in hosts]
            fwd, fwd_bwd = cudcn_calls(ours)
            self.measure(rows["cudcn"], self.cupy_clock, fwd, fwd_bwd)
            self.measure(rows["cudcn deterministic"], self.cupy_clock, None, deterministic(fwd_bwd))
            self.guarded(f"{shape} {dtype} determinism", self.check_determinism, shape, dtype, fwd_bwd)
        theirs = None
        if self.torch is None:
            for impl in implementations(dtype)[2:]:
                rows[impl].note = self.no_torch
        else:
            theirs = self.torch_tensors(hosts, dtype)
            self.measure_torch(rows, dtype, torch_calls(self.torch, self.tv_ops, theirs))
        self.guarded(f"{shape} {dtype} precision", self.compare, shape, dtype, hosts[0], ours, theirs, rows)

    def torch_tensors(self, hosts: list[dict], dtype: str) -> list[dict[str, Any]]:
        torch = self.torch
        tdtype = getattr(torch, dtype)  # the values are exact in float32, then in ``dtype``
        return [
            {
                k: torch.from_numpy(v.astype(np.float32)).cuda().to(tdtype).requires_grad_(k != "grad")
                for k, v in h.items()
            }
            for h in hosts
        ]

    def measure_torch(self, rows: dict[str, Row], dtype: str, calls: dict[str, tuple]) -> None:
        tv_fwd, tv_fwd_bwd = calls["torchvision"]
        refusal = self.refusal(tv_fwd) if dtype == "bfloat16" else None
        if refusal is not None:
            rows["torchvision"].note = TV_NO_BFLOAT16
            self.lines.append(f"torchvision bfloat16 deform_conv2d raised: {refusal}")
        else:
            self.measure(rows["torchvision"], self.torch_clock, tv_fwd, tv_fwd_bwd)
        cudnn = self.torch.backends.cudnn
        cudnn.benchmark, default_tf32 = True, cudnn.allow_tf32
        for impl, tf32 in (("cuDNN conv", False), ("cuDNN conv tf32", True)):
            if impl in rows:
                cudnn.allow_tf32 = tf32
                self.measure(rows[impl], self.torch_clock, *calls["cuDNN conv"])
        cudnn.allow_tf32 = default_tf32

    def refusal(self, run: Callable[[int], Any]) -> str | None:
        try:
            run(0)
            self.torch.cuda.synchronize()
        except (RuntimeError, NotImplementedError, TypeError) as error:
            return str(error).splitlines()[0][:120]
        return None

    def check_determinism(self, shape: tuple, dtype: str, fwd_bwd: Callable) -> None:
        """Three backward calls on the same inputs: bitwise identical in the deterministic mode (a
        gate), and whether they differ in the default mode (atomics; information only)."""

        def digests(run: Callable[[int], Any]) -> set[str]:
            found = set()
            for _ in range(3):
                digest = hashlib.sha256()
                for g in run(0)[1]:
                    digest.update(self.cp.asnumpy(g).tobytes())
                found.add(digest.hexdigest())
            return found

        same = len(digests(deterministic(fwd_bwd))) == 1
        default = "identical" if len(digests(fwd_bwd)) == 1 else "differed"
        self.checks_ok &= same
        self.lines.append(
            f"{shape} {dtype}: deterministic mode, 3 backward calls bitwise "
            f"identical: {'yes' if same else 'NO'}; default mode: {default}"
        )

    def compare(
        self,
        shape: tuple,
        dtype: str,
        host: dict[str, np.ndarray],
        ours: Any,
        theirs: Any,
        rows: dict[str, Row],
    ) -> None:
        """Relative errors of the output and every gradient against cudcn's float64 on the same
        rounded inputs; float32 also against torchvision (gated)."""
        labels = ["output", *(f"grad {n}" for n in NAMES)]
        ref = self.results([self.device_arrays({k: v.astype(np.float64) for k, v in host.items()})])
        found = {}
        if ours is not None and not rows["cudcn"].failed:
            found["cudcn"] = self.results(ours)
        if theirs is not None and rows["torchvision"].measured():
            out, grads = torch_calls(self.torch, self.tv_ops, theirs)["torchvision"][1](0)
            found["torchvision"] = [t.detach().float().cpu().numpy() for t in (out, *grads)]
        for name, values in found.items():
            errors = ", ".join(
                f"{k} {relative_error(v, r):.1e}" for k, v, r in zip(labels, values, ref, strict=True)
            )
            self.lines.append(
                f"{shape} {dtype} {name}: relative error vs float64 on the same rounded inputs: {errors}"
            )
        if dtype == "float32" and len(found) == 2:
            worst = max(relative_error(a, b) for a, b in zip(*found.values(), strict=True))
            self.checks_ok &= worst < F32_GATE
            self.lines.append(
                f"{shape} float32: largest relative error cudcn vs torchvision "
                f"{worst:.1e} (gate {F32_GATE:g})"
            )


def gpu_reason() -> tuple[Any, str | None]:
    """CuPy and ``None`` when it sees a GPU, else ``None`` and why not."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy, None
        return None, "no CUDA device"
    except Exception as error:  # no CuPy, no driver
        return None, f"{type(error).__name__}: {error}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0])
    cp, reason = gpu_reason()
    if cp is None:
        print(f"bench_deform_conv2d_gpu: no usable CUDA GPU here: {reason}", file=sys.stderr)
        rows, device, status = planned_rows(SHAPES, args.dtypes, NO_GPU), "no GPU", 1
        lines = [f"no usable CUDA GPU here: {reason}"]
    else:
        try:
            import torch
            import torchvision.ops as tv_ops

            no_torch = "" if torch.cuda.is_available() else "not measured (torch sees no GPU)"
        except ImportError as error:
            torch = tv_ops = None
            no_torch = f"not measured (no torch/torchvision: {error.name or error})"
        if no_torch:
            torch = tv_ops = None
        name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
        device = name.decode() if isinstance(name, bytes) else str(name)
        bench = Bench(cp, torch, tv_ops, no_torch, args)
        if no_torch:
            bench.lines.append(f"torchvision rows and the float32 comparison: {no_torch}")
        for shape in SHAPES:
            bench.shape(shape, args.dtypes)
        bench.lines.append(verdict(bench.rows, bench.checks_ok))
        print("\n".join(bench.lines))
        rows, lines = bench.rows, bench.lines
        status = exit_status(bench.rows, bench.checks_ok)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": device, "lines": lines, "rows": [r.as_dict() for r in rows]}, f, indent=2)
    print(table(rows, device))
    return status


if __name__ == "__main__":
    sys.exit(main())
