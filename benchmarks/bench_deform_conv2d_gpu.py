"""GPU benchmark of deform_conv2d: cudcn's CUDA backend against torchvision and a plain cuDNN conv.

Needs a CUDA GPU with CuPy, torch and torchvision in one Python; runs cudcn from the source tree::

    PYTHONPATH=. python3 benchmarks/bench_deform_conv2d_gpu.py [--repeats 50] [--json out.json]

(``benchmarks/gpu_check.sh`` runs it after the GPU tests.) float32, 3x3 kernel, padding 1, with mask
and bias, offsets uniform in [-2, 2]. Shapes: (B, C_in = C_out, H, W) in :data:`SHAPES`.

* Times: medians (ms) over ``--repeats`` calls after ``--warmup`` calls (compilation, cuBLAS / cuDNN
  setup and autotuning stay out), each call between two CUDA events of its own library, input sets
  rotated so that repeated calls do not find their inputs in L2. ``fwd+bwd`` is one forward and one
  backward giving every gradient (cudcn: ``ops.deform_conv2d_forward`` then ``_backward``; torch:
  ``autograd.grad`` of the output).
* Peak memory: bytes allocated during the call beyond what was allocated before it (outputs and
  gradients included), the same way for both passes. torch: ``torch.cuda.max_memory_allocated()``
  after ``reset_peak_memory_stats()`` minus ``memory_allocated()`` before. cudcn: CuPy's default
  memory pool has no high-water mark, so for the measured call the allocator is swapped for a
  wrapper of the pool's ``malloc`` that reads ``pool.used_bytes()`` after every allocation (bytes
  in use can only rise at an allocation, so the largest reading is the peak), minus
  ``used_bytes()`` before. Neither counts cuBLAS's own workspace.
* Precision: CuPy's and torchvision's GEMMs run in full float32 (no TF32 by default); the cuDNN conv
  is timed with TF32 off (same arithmetic) and with torch's default (TF32 on) for reference.

The last lines are a Markdown table (device and date in its header) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

SHAPES = [(8, 256, 64, 64), (32, 64, 56, 56)]  # (B, C, H, W); C_out = C_in = C, 3x3, padding 1
SETS = 3  # input sets rotated between calls


def _median_ms(record: Callable[[], Any], elapsed: Callable[[Any], float], run: Callable[[int], Any],
               warmup: int, repeats: int) -> float:  # fmt: skip
    for i in range(warmup):
        run(i)
    times = []
    for i in range(repeats):
        start = record()
        run(i)
        times.append(elapsed((start, record())))
    return statistics.median(times)


class CupyClock:
    """CUDA events on CuPy's current stream, and the pool's peak bytes in use during a call."""

    def __init__(self, cupy: Any):
        self.cp = cupy
        self.pool = cupy.get_default_memory_pool()
        self.peak = 0

    def record(self) -> Any:
        event = self.cp.cuda.Event()
        event.record()
        return event

    def elapsed(self, events: tuple[Any, Any]) -> float:
        events[1].synchronize()
        return self.cp.cuda.get_elapsed_time(*events)

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

    def elapsed(self, events: tuple[Any, Any]) -> float:
        events[1].synchronize()
        return events[0].elapsed_time(events[1])

    def peak_bytes(self, run: Callable[[int], Any]) -> int:
        self.torch.cuda.synchronize()
        base = self.torch.cuda.memory_allocated()
        self.torch.cuda.reset_peak_memory_stats()
        run(0)
        self.torch.cuda.synchronize()
        return self.torch.cuda.max_memory_allocated() - base


def host_inputs(shape: tuple[int, int, int, int], seed: int) -> dict[str, np.ndarray]:
    """Random float32 inputs of one call, and a cotangent ``grad`` for the backward."""
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
    return {name: a.astype(np.float32) for name, a in arrays.items()}


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def bench_shape(shape, cp, torch, tv_ops, warmup: int, repeats: int) -> dict[str, Any]:
    from cudcn.ops import deform_conv2d_backward, deform_conv2d_forward

    names = ("input", "offset", "weight", "bias", "mask")
    hosts = [host_inputs(shape, seed) for seed in range(SETS)]
    ours = [{k: cp.asarray(v) for k, v in h.items()} for h in hosts]
    theirs = [{k: torch.from_numpy(v).cuda().requires_grad_(k != "grad") for k, v in h.items()}
              for h in hosts]  # fmt: skip
    conv = torch.nn.functional.conv2d
    conv_in = [[t[k] for k in ("input", "weight", "bias")] for t in theirs]

    def cudcn_fwd(i: int) -> Any:
        a = ours[i % SETS]
        return deform_conv2d_forward(*(a[k] for k in names[:4]), padding=1, mask=a["mask"])

    def cudcn_fwd_bwd(i: int) -> Any:
        a = ours[i % SETS]
        args = [a[k] for k in names[:4]]
        out = deform_conv2d_forward(*args, padding=1, mask=a["mask"])
        return out, deform_conv2d_backward(a["grad"], *args, padding=1, mask=a["mask"])

    def tv_fwd(i: int) -> Any:
        t = theirs[i % SETS]
        with torch.no_grad():
            return tv_ops.deform_conv2d(*(t[k] for k in names[:4]), padding=1, mask=t["mask"])

    def tv_fwd_bwd(i: int) -> Any:
        t = theirs[i % SETS]
        out = tv_ops.deform_conv2d(*(t[k] for k in names[:4]), padding=1, mask=t["mask"])
        return out, torch.autograd.grad(out, [t[k] for k in names], t["grad"])

    def conv_fwd(i: int) -> Any:
        with torch.no_grad():
            return conv(*conv_in[i % SETS], padding=1)

    def conv_fwd_bwd(i: int) -> Any:
        args = conv_in[i % SETS]
        out = conv(*args, padding=1)
        return out, torch.autograd.grad(out, args, theirs[i % SETS]["grad"])

    cupy_clock, torch_clock = CupyClock(cp), TorchClock(torch)
    rows: dict[str, dict[str, float]] = {}

    def measure(label: str, clock: Any, fwd: Callable, fwd_bwd: Callable) -> None:
        rows[label] = {
            "fwd_ms": _median_ms(clock.record, clock.elapsed, fwd, warmup, repeats),
            "fwd_bwd_ms": _median_ms(clock.record, clock.elapsed, fwd_bwd, warmup, repeats),
            "fwd_peak_mib": clock.peak_bytes(fwd) / 2**20,
            "fwd_bwd_peak_mib": clock.peak_bytes(fwd_bwd) / 2**20,
        }

    torch.backends.cudnn.benchmark = True
    measure("cudcn", cupy_clock, cudcn_fwd, cudcn_fwd_bwd)
    measure("torchvision", torch_clock, tv_fwd, tv_fwd_bwd)
    default_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    measure("cuDNN conv fp32", torch_clock, conv_fwd, conv_fwd_bwd)
    torch.backends.cudnn.allow_tf32 = True
    measure("cuDNN conv tf32", torch_clock, conv_fwd, conv_fwd_bwd)
    torch.backends.cudnn.allow_tf32 = default_tf32

    out, grads = cudcn_fwd_bwd(0)
    ref_out, ref_grads = tv_fwd_bwd(0)
    errors = {"output": relative_error(cp.asnumpy(out), ref_out.detach().cpu().numpy())}
    for name, g, r in zip(names, grads, ref_grads, strict=True):
        errors[f"grad {name}"] = relative_error(cp.asnumpy(g), r.cpu().numpy())
    return {"shape": shape, "rows": rows, "rel_error_vs_torchvision": errors}


def table(results: list[dict[str, Any]], device: str) -> str:
    today = datetime.date.today().isoformat()
    lines = [
        f"deform_conv2d, float32, 3x3, pad 1, mask + bias; {device}; {today}",
        "",
        "| B, C, H x W | implementation | fwd ms | fwd+bwd ms | fwd peak MiB | fwd+bwd peak MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for result in results:
        b, c, h, w = result["shape"]
        for label, r in result["rows"].items():
            lines.append(
                f"| {b}, {c}, {h}x{w} | {label} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | "
                f"{r['fwd_peak_mib']:.1f} | {r['fwd_bwd_peak_mib']:.1f} |"
            )
        ours, tv = result["rows"]["cudcn"], result["rows"]["torchvision"]
        ratios = {k: ours[k] / tv[k] for k in ours}
        verdict = "target met" if all(v <= 1.0 for v in ratios.values()) else "target NOT met"
        lines.append(
            f"| {b}, {c}, {h}x{w} | cudcn / torchvision ({verdict}) | {ratios['fwd_ms']:.2f} | "
            f"{ratios['fwd_bwd_ms']:.2f} | {ratios['fwd_peak_mib']:.2f} | "
            f"{ratios['fwd_bwd_peak_mib']:.2f} |"
        )
    worst = max(max(r["rel_error_vs_torchvision"].values()) for r in results)
    lines += ["", f"largest relative error against torchvision (output and gradients): {worst:.1e}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", help="also write every number to this file")
    args = parser.parse_args(argv)
    try:
        import cupy as cp
        import torch
        import torchvision.ops as tv_ops
    except ImportError as error:
        print(
            f"bench_deform_conv2d_gpu: needs CuPy, torch and torchvision: {error}", file=sys.stderr
        )
        return 1
    if cp.cuda.runtime.getDeviceCount() < 1 or not torch.cuda.is_available():
        print("bench_deform_conv2d_gpu: no CUDA device", file=sys.stderr)
        return 1
    device = torch.cuda.get_device_name(0)
    results = [bench_shape(s, cp, torch, tv_ops, args.warmup, args.repeats) for s in SHAPES]
    for result in results:
        errors = ", ".join(f"{k} {v:.1e}" for k, v in result["rel_error_vs_torchvision"].items())
        print(f"shape {result['shape']}: relative error vs torchvision: {errors}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": device, "results": results}, f, indent=2)
    print(table(results, device))
    worst = max(max(r["rel_error_vs_torchvision"].values()) for r in results)
    return 0 if worst < 1e-3 else 2


if __name__ == "__main__":
    sys.exit(main())
