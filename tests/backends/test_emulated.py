"""The emulated backend's own machinery: host build, export table, launch checks and cache; and the
shared launch code's paths that the common test table does not reach (several batch chunks, 64-bit
indexing). Reference comparisons for the usual configurations live in
tests/ops/deform_conv2d/test_forward_backward.py.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest

import cudcn.backends.emulated as emulated
from cudcn import reference
from cudcn.backends.cuda.source import KERNEL_DIR, join_source, kernel_source, name_expressions
from cudcn.backends.emulated import build as host_build
from cudcn.backends.emulated.loader import host_library
from cudcn.backends.launch import common as launch
from cudcn.backends.launch import deform_conv2d as dc_launch
from cudcn.testing import assert_allclose_to_reference, poison_outputs
from tests.ops.deform_conv2d.cases import Case, make_inputs

pytestmark = pytest.mark.skipif(
    shutil.which(host_build.compiler()) is None, reason="no C++ compiler for the emulated backend"
)

NAMES = ("input", "offset", "weight", "bias", "mask")
SEED = 4242


def test_source_inlines_each_header_once_with_line_directives() -> None:
    text = kernel_source("deform_conv2d")
    assert '#include "' not in text
    assert text.count("#define CUDCN_COMMON_CUH") == 1
    assert text.count("#define CUDCN_HOST_SHIM_H") == 1
    assert '#line 1 "' in text and "deform_conv2d.cu" in text


def test_export_table_holds_every_name_expression_with_its_signature() -> None:
    kernels = host_library("deform_conv2d").kernels
    assert set(kernels) == set(name_expressions("deform_conv2d"))
    geometry = ("i4",) * 16
    assert kernels["deform_conv2d_im2col<float, int>"].signature == (("cpf4",) * 3 + ("pf4", "i4") + geometry)
    assert kernels["deform_conv2d_col2im_coord<double, long long>"].signature == (
        ("cpf8",) * 4 + ("pf8", "pf8", "i8") + geometry
    )


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) is not installed")
def test_only_the_table_is_exported() -> None:
    library = host_library("deform_conv2d").path
    listing = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    assert {line.split()[-1] for line in listing.splitlines() if line.strip()} == {host_build.TABLE_SYMBOL}


def _im2col_args(dtype=np.float32) -> list:
    """Valid arguments of deform_conv2d_im2col<float, int> for a 1x2x3x3 input, 3x3 taps, pad 1."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((1, 2, 3, 3)).astype(dtype)
    offset = rng.uniform(-1, 1, (1, 18, 3, 3)).astype(dtype)
    mask = np.zeros(1, dtype)
    columns = np.full(2 * 9 * 9, np.nan, dtype)
    n = 2 * 1 * 9
    geometry = (
        1,
        2,
        3,
        3,
        3,
        3,
        3,
        3,
        1,
        1,
        1,
        1,
        1,
        1,
        1,
        0,
    )  # batch, C, H, W, Ho, Wo, kh, kw, ...
    return [x, offset, mask, columns, np.int32(n), *(np.int32(v) for v in geometry)]


def test_valid_launch_writes_every_column() -> None:
    kernel = host_library("deform_conv2d").get_kernel("deform_conv2d_im2col<float, int>")
    args = _im2col_args()
    kernel((1,), (256,), args)
    assert np.isfinite(args[3]).all()


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


BAD_LAUNCHES = {
    "missing argument": (lambda a: a[:-1], TypeError, "takes 21 arguments"),
    "python int": (lambda a: [*a[:4], 18, *a[5:]], TypeError, "numpy.int32 scalar.*got int"),
    "int64 for int": (lambda a: [*a[:4], np.int64(18), *a[5:]], TypeError, "got numpy.int64"),
    "float64 array": (lambda a: [a[0].astype(np.float64), *a[1:]], TypeError, "numpy.float32"),
    "strided array": (lambda a: [a[0][..., ::2], *a[1:]], ValueError, "C-contiguous"),
    "read-only output": (lambda a: [*a[:3], _readonly(a[3]), *a[4:]], ValueError, "read-only"),
}


@pytest.mark.parametrize("case", BAD_LAUNCHES, ids=list(BAD_LAUNCHES))
def test_launch_that_would_be_wrong_on_a_gpu_is_refused(case: str) -> None:
    mutate, error, message = BAD_LAUNCHES[case]
    kernel = host_library("deform_conv2d").get_kernel("deform_conv2d_im2col<float, int>")
    args = mutate(_im2col_args())
    with pytest.raises(error, match=message):
        kernel((1,), (256,), args)


@pytest.mark.parametrize(
    ("grid", "block"), [((1,), (2048,)), ((1,), (1, 1, 128)), ((0,), (256,)), ((1, 70000), (32,))]
)
def test_launch_outside_cuda_limits_is_refused(grid, block) -> None:
    kernel = host_library("deform_conv2d").get_kernel("deform_conv2d_im2col<float, int>")
    with pytest.raises(ValueError, match=r"grid|block"):
        kernel(grid, block, _im2col_args())


def test_unknown_kernel_name_lists_the_exports() -> None:
    with pytest.raises(KeyError, match="deform_conv2d_im2col<float, int>"):
        host_library("deform_conv2d").get_kernel("deform_conv2d_im2col<half, int>")


def test_cache_path_follows_directory_and_flags(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CUDCN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CUDCN_HOST_SANITIZE", raising=False)
    monkeypatch.delenv("CUDCN_HOST_DEBUG", raising=False)
    plain = host_build.library_path("deform_conv2d")
    assert plain.parent == tmp_path and plain.name.startswith("deform_conv2d-")
    monkeypatch.setenv("CUDCN_HOST_SANITIZE", "address")
    sanitized = host_build.library_path("deform_conv2d")
    monkeypatch.setenv("CUDCN_HOST_DEBUG", "1")
    assert len({plain, sanitized, host_build.library_path("deform_conv2d")}) == 3


def test_cached_library_is_reused_without_compiling(monkeypatch) -> None:
    built = host_library("deform_conv2d").path

    def no_compiler(command, **kwargs):
        if "--version" in command:
            return subprocess.CompletedProcess(command, 0, stdout="", stderr="")
        raise AssertionError(f"compiled again: {command}")

    assert host_build.build("deform_conv2d") == built
    monkeypatch.setattr(host_build.subprocess, "run", no_compiler)
    assert host_build.build("deform_conv2d") == built


def test_build_error_shows_the_compiler_message_and_leaves_no_file(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CUDCN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(host_build, "host_source", lambda stem: "#error planted failure\n")
    with pytest.raises(RuntimeError, match="planted failure"):
        host_build.build("deform_conv2d")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index", ["int", "long long"])
def test_several_batch_chunks_and_64bit_index_match_reference(monkeypatch, dtype, index) -> None:
    case = Case(
        "chunks",
        batch=9,
        in_channels=6,
        out_channels=4,
        height=5,
        width=6,
        kernel=(2, 3),
        stride=(1, 2),
        padding=(1, 0),
        dilation=(2, 1),
        groups=2,
        offset_groups=3,
    )
    out_h, out_w = case.out_size()
    # Columns of 2 items per chunk: chunks of 2, 2, 2, 2, 1 (an uneven last one).
    per_item = 6 * 2 * 3 * out_h * out_w * np.dtype(dtype).itemsize
    monkeypatch.setattr(dc_launch, "COLUMN_BUDGET_BYTES", 2 * per_item)
    if index == "long long":
        monkeypatch.setattr(launch, "INDEX32_LIMIT", 0)
    inputs = make_inputs(case, dtype, SEED)
    params = case.params()
    plan = dc_launch._Plan(
        emulated.host_kernels("deform_conv2d"),
        inputs["input"],
        inputs["offset"],
        inputs["weight"],
        inputs["mask"],
        params,
    )
    assert [stop - start for start, stop in plan.chunks] == [2, 2, 2, 2, 1]
    assert plan.index_name == index
    grad_out = np.random.default_rng(SEED + 1).standard_normal((9, 4, out_h, out_w)).astype(dtype)
    args = [inputs[n] for n in NAMES]
    with poison_outputs():
        out = emulated.deform_conv2d_forward(*args, params)
        grads = emulated.deform_conv2d_backward(grad_out, *args, params)
    x64 = [None if a is None else a.astype(np.float64) for a in args]
    assert_allclose_to_reference(
        out, reference.deform_conv2d_forward(*x64, params), dtype, factor=64, name=f"output (seed {SEED})"
    )
    wanted = reference.deform_conv2d_backward(grad_out.astype(np.float64), *x64, params)
    for name, got, want in zip(NAMES, grads, wanted, strict=True):
        assert_allclose_to_reference(got, want, dtype, factor=64, name=f"grad {name} (seed {SEED})")


def test_serial_mode_with_one_worker_is_deterministic(monkeypatch) -> None:
    case = Case("atomics", batch=3, in_channels=4, out_channels=4, height=5, width=5)
    inputs = make_inputs(case, np.float32, SEED, offset_scale=0.5)  # many colliding neighbours
    params = case.params()
    grad_out = np.random.default_rng(SEED).standard_normal((3, 4, 5, 5)).astype(np.float32)
    args = [inputs[n] for n in NAMES]
    monkeypatch.setenv("CUDCN_EMULATED_MODE", "serial")
    monkeypatch.setenv("CUDCN_EMULATED_WORKERS", "1")
    first = emulated.deform_conv2d_backward(grad_out, *args, params)
    second = emulated.deform_conv2d_backward(grad_out, *args, params)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("sanitizer", "symbol"), [("address", "__asan_init"), ("thread", "__tsan_init")])
def test_sanitized_build_without_its_runtime_is_refused_clearly(monkeypatch, sanitizer, symbol) -> None:
    if hasattr(ctypes.CDLL(None), symbol):
        pytest.skip(f"this process already runs under the {sanitizer} sanitizer")
    monkeypatch.setenv("CUDCN_HOST_SANITIZE", sanitizer)
    with pytest.raises(RuntimeError, match=f"LD_PRELOAD=.*lib{sanitizer[0]}san.so"):
        host_library("deform_conv2d")


def test_a_header_first_included_under_a_conditional_is_kept(tmp_path) -> None:
    (tmp_path / "h.cuh").write_text("#ifndef H_CUH\n#define H_CUH\nint h_value = 7;\n#endif\n")
    (tmp_path / "k.cu").write_text(
        '#ifdef SKIPPED_BY_THIS_COMPILER\n#include "h.cuh"\n#endif\n#include "h.cuh"\nint k = h_value;\n'
    )
    text = join_source(tmp_path / "k.cu")
    unconditional = text.split("#endif", 1)[1]  # what follows the #ifdef block
    assert "int h_value = 7;" in unconditional  # the second include was not dropped


def test_include_cycle_is_an_error(tmp_path) -> None:
    (tmp_path / "a.cuh").write_text('#include "b.cuh"\n')
    (tmp_path / "b.cuh").write_text('#include "a.cuh"\n')
    with pytest.raises(ValueError, match=r"include cycle.*a\.cuh -> b\.cuh -> a\.cuh"):
        join_source(tmp_path / "a.cuh")


def test_every_kernel_header_has_an_include_guard() -> None:
    for header in KERNEL_DIR.glob("*.cuh"):
        text = header.read_text()
        assert "#pragma once" in text or re.search(r"#ifndef (\w+)\s+#define \1", text), header
    assert re.search(r"#ifndef (\w+)\s+#define \1", (KERNEL_DIR / "host_shim.h").read_text())
