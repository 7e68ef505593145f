"""``cudcn check``: every op on every available backend, on tiny shapes, against the float64 NumPy
reference (``cudcn.reference``; float64, float32, float16 and bfloat16, the reference evaluated on the
inputs rounded to the dtype) and against finite differences (``gradcheck``).

The ops are the rows of :data:`CHECKS`; adding an op is adding one :class:`OpCheck`. Each check calls
the public differentiable function: with plain arrays for the forward, and with Tensors, a random
output gradient and ``backward`` for the gradients, under ``cudcn.testing.poison_outputs()`` (an
element a kernel forgets to write shows up as NaN).

Tolerances: ``max |got - reference| <= 64 * eps(dtype) * max(1, max |reference|)``; gradcheck with
its defaults. These are smoke checks for an installation; the test suite derives tighter bounds.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cudcn import dtypes, functional, reference
from cudcn.autograd import Tensor
from cudcn.backends import use_backend
from cudcn.dtypes import FLOAT_DTYPES, check_library_dtype, eps
from cudcn.ops.dcnv3 import DCNv3Params
from cudcn.ops.dcnv3_layout import dcnv3_to_dcnv4
from cudcn.ops.deform_conv2d import DeformConv2dParams
from cudcn.ops.deform_psroi_pool import DeformPSRoIPoolParams
from cudcn.ops.deform_roi_pool import DeformRoIPoolParams
from cudcn.ops.ms_deform_attn import MSDeformAttnParams
from cudcn.testing import gradcheck, poison_outputs, to_numpy

Inputs = dict[str, Any]
TOLERANCE_FACTOR = 64.0


@dataclass(frozen=True)
class OpCheck:
    """One op: ``make(rng)`` returns float64 inputs keyed by the functional's argument names (None
    allowed); ``call(**inputs)`` runs the functional; ``wrt`` names the differentiable inputs in the
    order of ``reference_backward``'s result; the reference pair takes the same inputs."""

    name: str
    make: Callable[[np.random.Generator], Inputs]
    call: Callable[..., Any]
    wrt: tuple[str, ...]
    reference_forward: Callable[[Inputs], np.ndarray]
    reference_backward: Callable[[np.ndarray, Inputs], tuple[Any, ...]]


def _smooth_offsets(rng: np.random.Generator, shape: tuple[int, ...], reach: int) -> np.ndarray:
    """Offsets whose fractional parts stay in [0.1, 0.9], so finite differences see no kink."""
    return rng.integers(-reach, reach, shape) + rng.uniform(0.1, 0.9, shape)


def _rois(rng: np.random.Generator, n: int, batch: int, size: float) -> np.ndarray:
    """``n`` boxes (batch_index, x1, y1, x2, y2) inside a ``size`` x ``size`` image."""
    corners = np.sort(rng.uniform(0.05 * size, 0.95 * size, (n, 2, 2)), axis=1)
    return np.concatenate([rng.integers(0, batch, (n, 1)), corners.reshape(n, 4)[:, [0, 2, 1, 3]]], 1)


_CONV = DeformConv2dParams(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=2, offset_groups=2)


def _deform_conv2d_inputs(rng: np.random.Generator) -> Inputs:
    return {
        "input": rng.standard_normal((2, 4, 4, 5)),
        "offset": _smooth_offsets(rng, (2, 36, 4, 5), 2),
        "weight": rng.standard_normal((6, 2, 3, 3)),
        "bias": rng.standard_normal(6),
        "mask": rng.uniform(0.2, 1.0, (2, 18, 4, 5)),
    }


_CONV_ORDER = ("input", "offset", "weight", "bias", "mask")


def _conv_arrays(a: Inputs) -> tuple[Any, Any, Any, Any, Any]:
    """The conv's arrays in the reference's order."""
    return a["input"], a["offset"], a["weight"], a["bias"], a["mask"]


DEFORM_CONV2D = OpCheck(
    "deform_conv2d",
    _deform_conv2d_inputs,
    lambda **a: functional.deform_conv2d(**a, padding=1),
    _CONV_ORDER,
    lambda a: reference.deform_conv2d_forward(*_conv_arrays(a), _CONV),
    lambda g, a: reference.deform_conv2d_backward(g, *_conv_arrays(a), _CONV),
)

_ROI = DeformRoIPoolParams(
    pooled_h=2, pooled_w=3, spatial_scale=0.5, sampling_ratio=2, gamma=0.1, aligned=True
)


def _roi_inputs(rng: np.random.Generator, with_offset: bool) -> Inputs:
    inputs = {"input": rng.standard_normal((2, 3, 6, 7)), "rois": _rois(rng, 3, 2, 12.0)}
    if with_offset:
        inputs["offset"] = rng.uniform(-1.0, 1.0, (3, 2, 2, 3))
    return inputs


DEFORM_ROI_POOL = OpCheck(
    "deform_roi_pool",
    lambda rng: _roi_inputs(rng, True),
    lambda **a: functional.deform_roi_pool(
        **a, output_size=(2, 3), spatial_scale=0.5, sampling_ratio=2, gamma=0.1
    ),
    ("input", "offset"),
    lambda a: reference.deform_roi_pool_forward(a["input"], a["rois"], a["offset"], _ROI),
    lambda g, a: reference.deform_roi_pool_backward(g, a["input"], a["rois"], a["offset"], _ROI),
)

_ALIGN = replace(_ROI, gamma=0.0, aligned=False)
ROI_ALIGN = OpCheck(
    "roi_align",
    lambda rng: _roi_inputs(rng, False),
    lambda **a: functional.roi_align(**a, output_size=(2, 3), spatial_scale=0.5, sampling_ratio=2),
    ("input",),
    lambda a: reference.deform_roi_pool_forward(a["input"], a["rois"], None, _ALIGN),
    lambda g, a: reference.deform_roi_pool_backward(g, a["input"], a["rois"], None, _ALIGN)[:1],
)

_PSROI = DeformPSRoIPoolParams(
    spatial_scale=0.5,
    output_dim=2,
    group_size=2,
    pooled_size=2,
    part_size=2,
    sample_per_part=2,
    trans_std=0.1,
)
DEFORM_PSROI_POOL = OpCheck(
    "deform_psroi_pool",
    lambda rng: {
        "input": rng.standard_normal((2, 8, 6, 7)),
        "rois": _rois(rng, 3, 2, 12.0),
        "trans": rng.uniform(-1.0, 1.0, (3, 2, 2, 2)),
    },
    lambda **a: functional.deform_psroi_pool(**a, **asdict(_PSROI)),
    ("input", "trans"),
    lambda a: reference.deform_psroi_pool_forward(a["input"], a["rois"], a["trans"], _PSROI),
    lambda g, a: reference.deform_psroi_pool_backward(g, a["input"], a["rois"], a["trans"], _PSROI),
)

_MSDA = MSDeformAttnParams(levels=((2, 3), (1, 2)), starts=(0, 6))
_MSDA_SHAPE = (1, 2, 2, 2)  # N, Lq, M, D (small: gradcheck runs a launch per input element)


def _msda_inputs(rng: np.random.Generator) -> Inputs:
    """Normalised locations of pixel positions whose fractional parts stay in [0.1, 0.9] (no kink
    for finite differences), some partly outside their level."""
    n, q, m, d = _MSDA_SHAPE
    sizes = np.array([(w, h) for h, w in _MSDA.levels], dtype=np.float64)[:, None, :]  # (L, 1, 2)
    shape = (n, q, m, len(_MSDA.levels), 2, 2)  # P = 2
    pixels = np.floor(rng.uniform(0, 1, shape) * (sizes + 1)) - 1 + rng.uniform(0.1, 0.9, shape)
    return {
        "value": rng.standard_normal((n, sum(h * w for h, w in _MSDA.levels), m, d)),
        "sampling_locations": (pixels + 0.5) / sizes,
        "attention_weights": rng.uniform(0.1, 1.0, shape[:-1]),
    }


def _msda_arrays(a: Inputs) -> tuple[Any, Any, Any]:
    return a["value"], a["sampling_locations"], a["attention_weights"]


MS_DEFORM_ATTN = OpCheck(
    "ms_deform_attn",
    _msda_inputs,
    lambda value, sampling_locations, attention_weights: functional.ms_deform_attn(
        value, [list(s) for s in _MSDA.levels], list(_MSDA.starts), sampling_locations, attention_weights
    ),
    ("value", "sampling_locations", "attention_weights"),
    lambda a: reference.ms_deform_attn_forward(*_msda_arrays(a), _MSDA).reshape((*_MSDA_SHAPE[:2], -1)),
    lambda g, a: reference.ms_deform_attn_backward(g.reshape(_MSDA_SHAPE), *_msda_arrays(a), _MSDA),
)

_DCN_ARGS: dict[str, Any] = {
    "kernel_size": 3,
    "padding": 1,
    "group": 2,
    "offset_scale": 0.5,
    "remove_center": True,
}
_DCN = DCNv3Params.build(np.zeros((1, 3, 4, 4)), 3, 1, 1, 1, 2, 0.5, True)


def _dcnv3_inputs(rng: np.random.Generator) -> Inputs:
    return {
        "input": rng.standard_normal((1, 3, 4, 4)),
        "offset": _smooth_offsets(rng, (1, 3, 4, 32), 2) / 0.5,  # positions off the kinks
        "mask": rng.uniform(-1.0, 1.0, (1, 3, 4, 16)),
    }


def _dcnv4_inputs(rng: np.random.Generator) -> Inputs:
    a = _dcnv3_inputs(rng)
    return {"input": a["input"], "offset_mask": dcnv3_to_dcnv4(a["offset"], a["mask"], 3, 2, True)}


DCNV3 = OpCheck(
    "dcnv3",
    _dcnv3_inputs,
    lambda **a: functional.dcnv3(**a, **_DCN_ARGS),
    ("input", "offset", "mask"),
    lambda a: reference.dcnv3_forward(a["input"], a["offset"], a["mask"], _DCN),
    lambda g, a: reference.dcnv3_backward(g, a["input"], a["offset"], a["mask"], _DCN),
)
DCNV4 = OpCheck(
    "dcnv4",
    _dcnv4_inputs,
    lambda **a: functional.dcnv4(**a, **_DCN_ARGS),
    ("input", "offset_mask"),
    lambda a: reference.dcnv4_forward(a["input"], a["offset_mask"], _DCN),
    lambda g, a: reference.dcnv4_backward(g, a["input"], a["offset_mask"], _DCN),
)

CHECKS = (DEFORM_CONV2D, DEFORM_ROI_POOL, ROI_ALIGN, DEFORM_PSROI_POOL, MS_DEFORM_ATTN, DCNV3, DCNV4)


@dataclass(frozen=True)
class Backend:
    """A backend to check: ``convert`` puts a float64 host array into its library and dtype."""

    name: str
    convert: Callable[[np.ndarray, Any], Any]

    def context(self) -> Any:
        return use_backend(self.name) if self.name != "cuda" else contextlib.nullcontext()


def gxx_works() -> tuple[bool, str]:
    """Whether the host compiler builds C++20 with ``std::atomic_ref`` (what the emulated backend
    needs); the compiler's first version line or the reason it does not."""
    from cudcn.backends.emulated.build import compiler

    cxx = compiler()
    if shutil.which(cxx) is None:
        return False, f"{cxx} not found"
    source = "#include <atomic>\nint main() { int v = 0; std::atomic_ref<int>(v).fetch_add(1); }\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.cpp"
        path.write_text(source)
        result = subprocess.run(
            [cxx, "-std=c++20", str(path), "-o", str(Path(tmp) / "probe")],
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        return False, f"{cxx} cannot build C++20: {result.stderr.strip().splitlines()[-1:]}"
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    return True, version.splitlines()[0] if version else cxx


def cuda_device() -> tuple[bool, str]:
    """Whether CuPy imports and sees a CUDA device; the device name or the reason."""
    try:
        import cupy
    except ImportError:
        return False, "CuPy not installed"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises its own CUDARuntimeError without a driver
        return False, f"no usable CUDA driver ({exc})"
    if count == 0:
        return False, "no CUDA device"
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return True, name.decode() if isinstance(name, bytes) else str(name)


def cupy_dtypes() -> str:
    """The floating dtypes CuPy arrays can have here: float16 always; bfloat16 only where the
    installed CuPy has it (``cudcn.dtypes.check_library_dtype``; needs no GPU)."""
    try:
        import cupy
    except ImportError:
        return "not installed"
    try:
        check_library_dtype(cupy, dtypes.bfloat16, "CuPy arrays")
    except TypeError as exc:
        return f"float16, float32, float64 ({exc})"
    return "float16, bfloat16, float32, float64"


def nvrtc_compiles(arch: str = "compute_75") -> tuple[bool, str]:
    """Whether every kernel file compiles to PTX with NVRTC (through ``cuda.bindings``), as the CUDA
    backend compiles it; a summary or the first failure. Needs no GPU."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        return False, "cuda-bindings not installed (pip install cuda-bindings nvidia-cuda-nvrtc)"
    from cudcn.backends.cuda.loader import NVRTC_OPTIONS
    from cudcn.backends.cuda.source import kernel_source, kernel_stems, name_expressions
    from cudcn.backends.cuda.toolkit import include_options

    options = [o.encode() for o in (*NVRTC_OPTIONS, *include_options(), f"--gpu-architecture={arch}")]
    try:
        _, major, minor = nvrtc.nvrtcVersion()
    except RuntimeError as exc:  # cuda.bindings raises when libnvrtc cannot be loaded
        return False, f"NVRTC library not loadable ({exc})"
    count = 0
    for stem in kernel_stems():
        _, program = nvrtc.nvrtcCreateProgram(kernel_source(stem).encode(), stem.encode(), 0, [], [])
        try:
            for name in name_expressions(stem):
                nvrtc.nvrtcAddNameExpression(program, name.encode())
                count += 1
            (result,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
            if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
                _, size = nvrtc.nvrtcGetProgramLogSize(program)
                log = b" " * size
                nvrtc.nvrtcGetProgramLog(program, log)
                first = log.decode(errors="replace").strip().splitlines()[:1]
                return False, f"{stem}.cu does not compile: {first}"
        finally:
            nvrtc.nvrtcDestroyProgram(program)
    return (
        True,
        f"NVRTC {major}.{minor}: {count} kernels in {len(kernel_stems())} files compile ({arch})",
    )


def available_backends() -> list[Backend]:
    """cpu always; emulated when g++ works; cuda when CuPy sees a device."""
    backends = [Backend("cpu", lambda a, dtype: a.astype(dtype))]
    if gxx_works()[0]:
        backends.append(Backend("emulated", lambda a, dtype: a.astype(dtype)))
    if cuda_device()[0]:
        import cupy

        backends.append(Backend("cuda", lambda a, dtype: cupy.asarray(a, dtype=dtype)))
    return backends


def _worst(got: Any, want: np.ndarray, dtype: Any) -> float:
    """Error relative to the allowed one (<= 1 passes; NaN fails)."""
    got = to_numpy(got).astype(np.float64)
    if got.shape != want.shape:
        return float("inf")
    allowed = TOLERANCE_FACTOR * eps(dtype) * max(1.0, float(np.abs(want).max(initial=0)))
    err = float(np.abs(got - want).max(initial=0.0))
    return err / allowed if np.isfinite(err) else float("inf")


def _compare(op: OpCheck, backend: Backend, inputs: Inputs, dtype: Any, seed: int) -> float:
    """Forward and tape gradients in ``dtype`` against the reference; the worst relative error."""
    dev = {k: None if v is None else backend.convert(v, dtype) for k, v in inputs.items()}
    rounded = {k: None if v is None else v.astype(dtype).astype(np.float64) for k, v in inputs.items()}
    want_out = op.reference_forward(rounded)
    grad = np.random.default_rng(seed).standard_normal(want_out.shape)
    grad = grad.astype(dtype).astype(np.float64)
    want_grads = op.reference_backward(grad, rounded)
    leaves = {k: Tensor(dev[k], requires_grad=True) for k in op.wrt}
    tensors = {**dev, **leaves}
    with backend.context(), poison_outputs():
        out = op.call(**dev)
        tape_out = op.call(**tensors)
        tape_out.backward(backend.convert(grad, dtype))
    worst = _worst(out, want_out, dtype)
    for name, want in zip(op.wrt, want_grads, strict=True):
        worst = max(worst, _worst(leaves[name].grad, want, dtype))
    return worst


def _gradcheck(op: OpCheck, backend: Backend, inputs: Inputs, seed: int) -> None:
    dev = {k: None if v is None else backend.convert(v, np.float64) for k, v in inputs.items()}

    def fn(*tensors: Tensor) -> Any:
        return op.call(**{**dev, **dict(zip(op.wrt, tensors, strict=True))})

    with backend.context():
        gradcheck(fn, [dev[k] for k in op.wrt], seed=seed)


@dataclass(frozen=True)
class Result:
    op: str
    backend: str
    passed: bool
    detail: str
    seconds: float


def check_one(op: OpCheck, backend: Backend, seed: int = 0) -> Result:
    """Run one op on one backend; never raises for a failed check (the Result says why)."""
    start = time.perf_counter()
    inputs = op.make(np.random.default_rng(seed))
    try:
        errors = {
            np.dtype(d).name: _compare(op, backend, inputs, d, seed + 1) for d in reversed(FLOAT_DTYPES)
        }
        _gradcheck(op, backend, inputs, seed + 2)
    except Exception as exc:  # a failed check or a crash: report it as a failure with its message
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Result(
            op.name,
            backend.name,
            False,
            f"{type(exc).__name__}: {message}",
            time.perf_counter() - start,
        )
    bad = [d for d, e in errors.items() if not e <= 1.0]
    detail = ", ".join(f"{d} error {e:.2g} of allowed" for d, e in errors.items())
    if bad:
        return Result(
            op.name,
            backend.name,
            False,
            f"reference mismatch: {detail}",
            time.perf_counter() - start,
        )
    return Result(op.name, backend.name, True, f"{detail}; gradcheck ok", time.perf_counter() - start)


def run_checks(backends: list[Backend], ops: tuple[OpCheck, ...] = CHECKS) -> list[Result]:
    """Every op on every backend."""
    return [check_one(op, backend) for backend in backends for op in ops]
