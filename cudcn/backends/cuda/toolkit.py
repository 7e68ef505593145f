"""Where the CUDA headers and NVRTC come from: the NVIDIA wheels the ``cuda13`` / ``cuda12`` extras
install (``cupy-cuda13x[ctk]`` brings ``nvidia-cuda-runtime``, whose ``include`` holds
``cuda_runtime.h``, ``cuda_fp16.h``, ``cuda_bf16.h``, and ``nvidia-cuda-nvrtc``), else a local
toolkit (``CUDA_PATH`` / ``CUDA_HOME``). Found the way CuPy 14 finds them, with ``cuda-pathfinder``.

CuPy adds the header directory to every ``RawModule`` compile itself; cudcn's own NVRTC compiles
(``cudcn info``, ``tests/backends/test_nvrtc.py``) add :func:`include_options` to do the same.
"""

from __future__ import annotations

import re
from pathlib import Path

_VERSION = re.compile(r"#define\s+CUDART_VERSION\s+(\d+)")


def header_directory() -> Path | None:
    """The directory holding ``cuda_runtime.h``, or None (no cuda-pathfinder, or no headers)."""
    try:
        from cuda.pathfinder import find_nvidia_header_directory
    except ImportError:
        return None
    found = find_nvidia_header_directory("cudart")
    return Path(found) if found else None


def header_version(directory: Path) -> str:
    """The CUDA runtime version the headers in ``directory`` declare, e.g. ``"13.0"``."""
    header = directory / "cuda_runtime_api.h"
    match = _VERSION.search(header.read_text(errors="replace")) if header.is_file() else None
    if match is None:
        return "unknown version"
    number = int(match.group(1))
    return f"{number // 1000}.{number % 1000 // 10}"


def include_options() -> tuple[str, ...]:
    """``("-I<header directory>",)`` when the headers are found, else ``()``."""
    directory = header_directory()
    return () if directory is None else (f"-I{directory}",)


def describe_headers() -> tuple[bool, str]:
    """Whether the CUDA headers were found; where and which version, or what to install."""
    directory = header_directory()
    if directory is None:
        return False, (
            "not found: install cudcn's cuda13 / cuda12 extra (it brings nvidia-cuda-runtime), or "
            "set CUDA_PATH to a CUDA toolkit"
        )
    return True, f"CUDA {header_version(directory)} headers in {directory}"
