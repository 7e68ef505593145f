"""Every kernel instantiation compiles with NVRTC for every architecture we support, without a GPU.

For each ``cudcn/kernels/<op>.cu`` the test compiles the text the CUDA backend hands to
``RawModule`` (the joined source, the op's ``NAME_EXPRESSIONS``, our options and those CuPy adds)
to CUBIN for each architecture in ``ARCHES`` with ``-Xptxas=-v``: a compile error fails, and
ptxas's registers / stack / spills per kernel are printed (a spill is reported; only an absurd one
fails). NVRTC's lowered (mangled) names must equal the symbols of the host build: g++ and NVRTC
both mangle with the Itanium C++ ABI, so equal names mean both builds compiled the same kernel
signatures.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass

import pytest

nvrtc = pytest.importorskip(
    "cuda.bindings.nvrtc", reason="cuda-bindings is not installed (pip install 'cudcn[test]')"
)

from cudcn.backends.cuda.loader import NVRTC_OPTIONS  # noqa: E402
from cudcn.backends.cuda.source import (  # noqa: E402
    join_source,
    kernel_source,
    kernel_stems,
    name_expressions,
)
from cudcn.backends.cuda.toolkit import header_directory, include_options  # noqa: E402

from .cooperation_kernels import NAMES as COOPERATION_NAMES  # noqa: E402
from .cooperation_kernels import PATH as COOPERATION_PATH  # noqa: E402
from .storage_kernels import NAMES as STORAGE_NAMES  # noqa: E402
from .storage_kernels import PATH as STORAGE_PATH  # noqa: E402

ARCHES = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")
CUPY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")  # what RawModule adds
MAX_SPILL_BYTES = 512  # more than this in one kernel is a bug, not a tuning matter
_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


@dataclass
class KernelStats:
    registers: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0


@dataclass
class Compiled:
    lowered: dict[str, str]  # name expression -> mangled name
    stats: dict[str, KernelStats]  # mangled name -> ptxas report
    cubin_bytes: int


def _ok(result: tuple, what: str, log: str = "") -> tuple:
    if result[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise AssertionError(f"{what} failed: {result[0]}\n{log}")
    return result[1:]


def _ptxas_stats(log: str) -> dict[str, KernelStats]:
    stats: dict[str, KernelStats] = {}
    current = None
    for line in log.splitlines():
        if match := _ENTRY.search(line):
            current = stats.setdefault(match.group(1), KernelStats())
        elif current is not None and (match := _FRAME.search(line)):
            current.stack, current.spill_stores, current.spill_loads = map(int, match.groups())
        elif current is not None and (match := _REGISTERS.search(line)):
            current.registers = int(match.group(1))
    return stats


@functools.cache
def compile_op(stem: str, arch: str) -> Compiled:
    """NVRTC-compile op ``stem`` to CUBIN for ``arch``; AssertionError with the log on failure."""
    return compile_text(kernel_source(stem), stem, name_expressions(stem), arch)


def compile_text(source: str, label: str, names: tuple[str, ...], arch: str) -> Compiled:
    """NVRTC-compile ``source`` with its kernels ``names`` to CUBIN for ``arch``, with our options,
    CuPy's and the CUDA headers' include directory (as CuPy finds it)."""
    (program,) = _ok(
        nvrtc.nvrtcCreateProgram(source.encode(), f"{label}.cu".encode(), 0, [], []),
        "nvrtcCreateProgram",
    )
    try:
        for name in names:
            _ok(nvrtc.nvrtcAddNameExpression(program, name.encode()), f"adding {name}")
        options = [
            *NVRTC_OPTIONS,
            *CUPY_OPTIONS,
            *include_options(),
            f"--gpu-architecture={arch}",
            "-Xptxas=-v",
        ]
        result = nvrtc.nvrtcCompileProgram(program, len(options), [o.encode() for o in options])
        (size,) = _ok(nvrtc.nvrtcGetProgramLogSize(program), "nvrtcGetProgramLogSize")
        buffer = b" " * size
        _ok(nvrtc.nvrtcGetProgramLog(program, buffer), "nvrtcGetProgramLog")
        log = buffer.rstrip(b"\0 ").decode(errors="replace")
        _ok(result, f"NVRTC compile of {label}.cu for {arch}", log)
        lowered = {
            name: _ok(nvrtc.nvrtcGetLoweredName(program, name.encode()), name)[0].decode() for name in names
        }
        (cubin_bytes,) = _ok(nvrtc.nvrtcGetCUBINSize(program), "nvrtcGetCUBINSize")
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    return Compiled(lowered, _ptxas_stats(log), int(cubin_bytes))


def test_every_kernel_file_declares_its_instantiations() -> None:
    stems = kernel_stems()
    assert "deform_conv2d" in stems
    for stem in stems:
        names = name_expressions(stem)
        assert names, f"cudcn.backends.launch.{stem}.NAME_EXPRESSIONS is empty"
        assert len(set(names)) == len(names), f"{stem}: duplicate name expressions"
        for name in names:
            assert re.fullmatch(r"\w+(<[\w ,*]+>)?", name), f"{stem}: odd name expression {name!r}"


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("stem", kernel_stems())
def test_nvrtc_compiles_every_instantiation(stem: str, arch: str, capsys) -> None:
    compiled = compile_op(stem, arch)
    assert compiled.cubin_bytes > 0
    assert set(compiled.stats) == set(compiled.lowered.values()), "ptxas did not report every kernel"
    rows = []
    for name, mangled in compiled.lowered.items():
        s = compiled.stats[mangled]
        rows.append(
            f"  {arch} {name:<48} {s.registers:>3} regs  {s.stack:>4} B stack  "
            f"{s.spill_stores:>4}/{s.spill_loads:<4} B spill st/ld"
        )
        assert 0 < s.registers <= 255, f"{name} on {arch}: {s.registers} registers"
        assert s.spill_stores + s.spill_loads <= MAX_SPILL_BYTES, f"{name} on {arch} spills: {s}"
        if s.spill_stores or s.spill_loads:
            warnings.warn(f"{name} spills on {arch}: {s}", stacklevel=1)
    with capsys.disabled():
        print(f"\nptxas -v, {stem}.cu, {arch}:\n" + "\n".join(rows))


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) is not installed")
@pytest.mark.parametrize("stem", kernel_stems())
def test_lowered_names_equal_host_symbols(stem: str) -> None:
    from cudcn.backends.emulated.build import build

    library = build(stem)
    listing = subprocess.run(
        ["nm", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    symbols = {line.split()[-1] for line in listing.splitlines() if line.strip()}
    lowered = compile_op(stem, ARCHES[0]).lowered
    missing = {name: mangled for name, mangled in lowered.items() if mangled not in symbols}
    if missing and shutil.which("c++filt"):
        demangled = subprocess.run(
            ["c++filt"], input="\n".join(missing.values()), capture_output=True, text=True
        ).stdout
        pytest.fail(f"NVRTC names absent from the host build {library.name}:\n{demangled}")
    assert not missing, f"NVRTC names absent from the host build {library.name}: {missing}"


@pytest.mark.parametrize(
    ("path", "names"),
    [(COOPERATION_PATH, COOPERATION_NAMES), (STORAGE_PATH, STORAGE_NAMES)],
    ids=["cooperation", "storage"],
)
def test_emulator_test_kernels_are_valid_cuda(path, names) -> None:
    """tests/backends/kernels/cooperation.cu (shared memory, barriers, warp shuffles) and storage.cu (the
    16-bit conversions) compile for a GPU too."""
    compiled = compile_text(join_source(path), path.stem, names, "sm_80")
    assert set(compiled.lowered) == set(names)


def test_the_cuda_headers_are_installed_and_compile() -> None:
    """The header wheel of the test extra (nvidia-cuda-runtime) is found as CuPy finds it, and its
    half-precision headers compile under NVRTC (what 16-bit kernels will include)."""
    directory = header_directory()
    assert directory is not None, "cuda-pathfinder found no CUDA headers (pip install 'cudcn[test]')"
    assert (directory / "cuda_fp16.h").is_file() and (directory / "cuda_bf16.h").is_file()
    source = (
        "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n"
        "__global__ void halves(__half* h, __nv_bfloat16* b) {\n"
        "  h[0] = __float2half(__half2float(h[0]) + 1.0f);\n"
        "  b[0] = __float2bfloat16(__bfloat162float(b[0]) * 2.0f);\n}\n"
    )
    compiled = compile_text(source, "halves", ("halves",), "sm_80")
    assert compiled.cubin_bytes > 0
