"""Loading host builds with ctypes: kernels that check their launches the way a GPU would need them.

:func:`host_kernels` returns ``get_kernel(name_expression)`` for an op, like the CUDA loader, and each
:class:`HostKernel` is called like CuPy's ``RawKernel``: ``kernel(grid, block, args)``. Before running,
it checks what a raw GPU launch never checks and gets silently wrong: the grid and block limits, the
argument count, every scalar's kind and width (``numpy.int32`` for ``int``, ``numpy.int64`` for
``long long``, ``numpy.float32`` for ``float``, ...; Python numbers are refused), and every pointer
argument's element type, C-contiguity and, for non-const pointers, writability. Parameter types come
from the build's export table, i.e. from the compiled kernel signatures themselves.

How a launch runs (see the execution model in ``cudcn/kernels/host_shim.h``), read at each launch:

* ``CUDCN_EMULATED_MODE``: ``concurrent`` runs every CUDA thread of a block as an OS thread, so a
  block's threads race as on a GPU and ``__syncthreads``, shared memory and warp shuffles work;
  ``serial`` runs a block's threads one after another (about 20x faster on small launches; refused,
  with an error, by a kernel that cooperates); ``auto`` (default) is concurrent for the kernels of a
  ``.cu`` file whose source uses a cooperation primitive, serial for the others. The race checks
  (``tests/backends/test_sanitizers.py``) and the small-block tests run everything concurrent.
* ``CUDCN_EMULATED_WORKERS``: how many blocks run at once (default: the CPUs this process may use).
* ``CUDCN_EMULATED_SEED``: the seed that shuffles the order in which blocks start (default 0, so
  runs are reproducible; a GPU promises no order at all).
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cudcn.backends.cuda.source import source_files
from cudcn.backends.emulated.build import TABLE_SYMBOL, build, build_flags, compiler
from cudcn.backends.launch.common import GetKernel
from cudcn.dtypes import bfloat16

_C_NAMES = {
    "f2": "cudcn_half",
    "bf2": "cudcn_bfloat16",
    "f4": "float",
    "f8": "double",
    "i4": "int",
    "i8": "long long",
    "u4": "unsigned int",
    "u8": "unsigned long long",
}
MODES = ("auto", "concurrent", "serial")
# What makes the threads of a block cooperate: such kernels cannot run in serial mode.
COOPERATION = re.compile(
    r"\b(__syncthreads|__syncwarp|__shfl\w*_sync|__ballot_sync|__all_sync|__any_sync|"
    r"CUDCN_SHARED_ARRAY)\b"
)
_COMMENT_OR_DIRECTIVE = re.compile(r"//[^\n]*|/\*.*?\*/|^[ \t]*#[^\n]*", re.DOTALL | re.MULTILINE)


class LaunchConfig(ctypes.Structure):
    """``cudcn_host::LaunchConfig``: how one launch runs."""

    _fields_ = (
        ("workers", ctypes.c_int),
        ("concurrent", ctypes.c_int),
        ("seed", ctypes.c_ulonglong),
    )


_LAUNCH = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_uint),
    ctypes.POINTER(ctypes.c_uint),
    ctypes.c_void_p,
    ctypes.POINTER(LaunchConfig),
)
_STATUS = {
    1: "rejected: the grid or block exceeds CUDA's limits",
    2: "refused in CUDCN_EMULATED_MODE=serial: the kernel uses __syncthreads, shared memory or a "
    "warp primitive, which need CUDCN_EMULATED_MODE=concurrent",
    3: "failed: not one block's worth of OS threads could be started",
}


class _Entry(ctypes.Structure):
    _fields_ = (("name", ctypes.c_char_p), ("launch", _LAUNCH), ("signature", ctypes.c_char_p))


def describe(code: str) -> str:
    """The C++ type of a parameter code: ``"cpf4"`` -> ``"const float*"``, ``"i8"`` -> ``"long long"``."""
    if code.startswith("cp"):
        return f"const {_C_NAMES.get(code[2:], code[2:])}*"
    if code.startswith("p"):
        return f"{_C_NAMES.get(code[1:], code[1:])}*"
    return _C_NAMES.get(code, code)


def _numpy_name(code: str) -> str:
    """``"i4"`` -> ``"numpy.int32"``, ``"f8"`` -> ``"numpy.float64"``, ``"bf2"`` ->
    ``"ml_dtypes.bfloat16"``."""
    return "ml_dtypes.bfloat16" if code == "bf2" else f"numpy.{np.dtype(code).name}"


def type_code(dtype: np.dtype) -> str:
    """The export table's code of a dtype: kind and size (``"f4"``), ``"bf2"`` for bfloat16."""
    return "bf2" if dtype == bfloat16 else f"{dtype.kind}{dtype.itemsize}"


def _dims(what: str, value: Any) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or any(not isinstance(d, (int, np.integer)) or d < 1 for d in dims):
        raise ValueError(f"{what} must be 1 to 3 positive integers, got {value!r}")
    x, y, z = (*(int(d) for d in dims), 1, 1)[:3]
    return x, y, z


def _environment_int(name: str, default: int, minimum: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def launch_config(cooperates: bool) -> LaunchConfig:
    """The launch settings from ``CUDCN_EMULATED_MODE``, ``_WORKERS`` and ``_SEED`` (read now) for a
    kernel whose source does (``cooperates``) or does not use cooperation primitives."""
    mode = os.environ.get("CUDCN_EMULATED_MODE", "").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"CUDCN_EMULATED_MODE must be one of {MODES}, got {mode!r}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = _environment_int("CUDCN_EMULATED_WORKERS", cpus or 1, 1)
    seed = _environment_int("CUDCN_EMULATED_SEED", 0, 0)
    if seed >= 2**64:
        raise ValueError(f"CUDCN_EMULATED_SEED must be < 2**64, got {seed}")
    concurrent = mode == "concurrent" or (mode == "auto" and cooperates)
    return LaunchConfig(workers, int(concurrent), seed)


def uses_cooperation(stem: str | Path) -> bool:
    """Whether the kernel source of op ``stem`` (or the kernel file at a path), the ``.cu`` and its
    headers but the shim, uses ``__syncthreads``, shared memory or a warp primitive."""
    for path in source_files(stem):
        if path.name.startswith("host_"):  # the shim itself defines the primitives
            continue
        code = _COMMENT_OR_DIRECTIVE.sub("", path.read_text(encoding="utf-8"))
        if COOPERATION.search(code):
            return True
    return False


class HostKernel:
    """One kernel of a host build. ``signature``: its parameter codes (``"cpf4"``, ``"i4"``, ...)."""

    def __init__(self, name: str, launch: Any, signature: tuple[str, ...], library: Path, cooperates: bool):
        self.name, self.signature, self.library = name, signature, library
        self.cooperates = cooperates  # the op's source uses __syncthreads / shared / warp primitives
        self._launch = launch

    def __repr__(self) -> str:
        params = ", ".join(describe(code) for code in self.signature)
        return f"<HostKernel {self.name}({params}) from {self.library.name}>"

    def _argument(self, position: int, code: str, arg: Any) -> np.ndarray:
        """A one-element array holding the value the kernel receives for parameter ``position``."""
        where = f"{self.name}: argument {position} ({describe(code)})"
        if code.startswith(("p", "cp")):
            element = code.removeprefix("c")[1:]
            if not isinstance(arg, np.ndarray):
                raise TypeError(f"{where} needs a numpy array, got {type(arg).__name__}")
            if type_code(arg.dtype) != element:
                raise TypeError(f"{where} needs a {_numpy_name(element)} array, got {arg.dtype}")
            if not arg.flags.c_contiguous:
                raise ValueError(f"{where} needs a C-contiguous array, got strides {arg.strides}")
            if not code.startswith("cp") and not arg.flags.writeable:
                raise ValueError(f"{where} is written by the kernel, got a read-only array")
            return np.array([arg.ctypes.data], dtype=np.uintp)
        if not isinstance(arg, np.generic) or type_code(arg.dtype) != code:
            got = f"numpy.{arg.dtype}" if isinstance(arg, np.generic) else type(arg).__name__
            raise TypeError(
                f"{where} needs a {_numpy_name(code)} scalar (raw launches pass scalars of the "
                f"parameter's exact width), got {got} {arg!r}"
            )
        return np.array([arg], dtype=arg.dtype)

    def __call__(self, grid: Any, block: Any, args: tuple[Any, ...] | list[Any]) -> None:
        grid3, block3 = _dims("grid", grid), _dims("block", block)
        threads = block3[0] * block3[1] * block3[2]
        if threads > 1024 or block3[2] > 64:
            raise ValueError(f"{self.name}: block {block3} exceeds CUDA's limits (1024 threads, z<=64)")
        if grid3[0] >= 2**31 or grid3[1] > 65535 or grid3[2] > 65535:
            raise ValueError(f"{self.name}: grid {grid3} exceeds CUDA's limits (2**31-1, 65535, 65535)")
        if len(args) != len(self.signature):
            params = ", ".join(describe(code) for code in self.signature)
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments ({params}), got {len(args)}")
        values = [
            self._argument(i, code, a) for i, (code, a) in enumerate(zip(self.signature, args, strict=True))
        ]
        pointers = np.array([v.ctypes.data for v in values], dtype=np.uintp)
        config = launch_config(self.cooperates)
        status = self._launch(
            (ctypes.c_uint * 3)(*grid3),
            (ctypes.c_uint * 3)(*block3),
            pointers.ctypes.data,
            ctypes.byref(config),
        )
        if status != 0:
            reason = _STATUS.get(status, f"failed with status {status}")
            raise RuntimeError(f"{self.name}: launch of grid {grid3} x block {block3} {reason}")


class HostLibrary:
    """A loaded host build and its kernels by name expression."""

    def __init__(self, path: Path, cooperates: bool = False):
        self.path = path
        self._dll = ctypes.CDLL(str(path))  # RTLD_LOCAL: builds never see each other's symbols
        table = getattr(self._dll, TABLE_SYMBOL)
        table.restype = ctypes.POINTER(_Entry)
        table.argtypes = (ctypes.POINTER(ctypes.c_int),)
        count = ctypes.c_int(0)
        rows = table(ctypes.byref(count))
        self.kernels: dict[str, HostKernel] = {}
        for i in range(count.value):
            name = rows[i].name.decode()
            signature = tuple(rows[i].signature.decode().split())
            self.kernels[name] = HostKernel(name, rows[i].launch, signature, path, cooperates)

    def get_kernel(self, name: str) -> HostKernel:
        try:
            return self.kernels[name]
        except KeyError:
            raise KeyError(
                f"{name!r} is not a kernel of {self.path.name}; it exports {sorted(self.kernels)}"
            ) from None


_SANITIZERS = {
    "address": ("__asan_init", "libasan.so", "ASAN_OPTIONS=detect_leaks=0"),
    "thread": ("__tsan_init", "libtsan.so", "TSAN_OPTIONS=halt_on_error=0"),
}


def check_sanitizer_runtime(flags: tuple[str, ...]) -> None:
    """Loading a sanitized build into a process without the sanitizer's runtime loaded first would
    abort it: refuse with the command that works instead."""
    for flag in flags:
        for name, (symbol, library, options) in _SANITIZERS.items():
            if flag.startswith("-fsanitize=") and name in flag:
                if not hasattr(ctypes.CDLL(None), symbol):
                    raise RuntimeError(
                        f"CUDCN_HOST_SANITIZE={name} needs the sanitizer's runtime loaded first: "
                        f"run Python with LD_PRELOAD=$(g++ -print-file-name={library}) and {options}"
                    )


_lock = threading.Lock()
_libraries: dict[tuple[str, str, tuple[str, ...]], HostLibrary] = {}


def host_library(stem: str) -> HostLibrary:
    """The host build of ``cudcn/kernels/<stem>.cu`` for the current flags, built on first use."""
    key = (stem, compiler(), build_flags())
    check_sanitizer_runtime(key[2])
    with _lock:
        library = _libraries.get(key)
        if library is None:
            library = HostLibrary(build(stem), uses_cooperation(stem))
            _libraries[key] = library
    return library


def host_kernels(stem: str) -> GetKernel:
    """``get_kernel(name_expression)`` for op ``stem``: the counterpart of ``cuda_kernels``."""
    return host_library(stem).get_kernel
