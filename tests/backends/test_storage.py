"""The kernels' 16-bit storage conversions (cudcn/kernels/storage.cuh) are bit-exact: widening is
exact for all 65536 patterns of float16 and of bfloat16, and narrowing rounds to nearest even like
NumPy (float16) and ml_dtypes (bfloat16), over float32 patterns around every rounding boundary of
every exponent, both signs: ties, one above, one below; overflow, subnormals, zeros, infinities.
NaN stays NaN (payload bits are not compared). The host build runs the very code NVRTC compiles
(tests/backends/test_nvrtc.py compiles the ops' 16-bit instantiations)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cudcn import dtypes
from cudcn.backends.launch.common import launch_1d

from .storage_kernels import library

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (host build)")

STORAGE = {"cudcn_half": dtypes.float16, "cudcn_bfloat16": dtypes.bfloat16}


def _run(name: str, values: np.ndarray, out_dtype) -> np.ndarray:
    out = np.empty(values.shape, dtype=out_dtype)
    launch_1d(library().get_kernel(name), values.size, (values, out, np.int32(values.size)))
    return out


def float32_patterns() -> np.ndarray:
    """Every combination of the top 20 bits of a float32 with low 12 bits 0x000, 0x001 and 0xfff:
    with bit 12 free this puts values on, just above and just below every float16 rounding
    boundary (13 bits dropped) and every bfloat16 one (16 bits dropped)."""
    top = np.arange(2**20, dtype=np.uint32) << np.uint32(12)
    low = np.array([0x000, 0x001, 0xFFF], dtype=np.uint32)
    return (top[:, None] | low[None, :]).ravel().view(np.float32)


@pytest.mark.parametrize("storage", STORAGE)
def test_widen_is_exact_for_every_pattern(storage: str) -> None:
    patterns = np.arange(2**16, dtype=np.uint16).view(STORAGE[storage])
    got = _run(f"widen_all<{storage}>", patterns, np.float32)
    want = patterns.astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("storage", STORAGE)
def test_narrow_rounds_to_nearest_even_like_numpy(storage: str) -> None:
    values = float32_patterns()
    got = _run(f"narrow_all<{storage}>", values, STORAGE[storage])
    with np.errstate(over="ignore", invalid="ignore"):  # NaN inputs: checked separately
        want = values.astype(STORAGE[storage])
    nan = np.isnan(values)
    assert np.isnan(got.astype(np.float32)[nan]).all()
    different = got.view(np.uint16)[~nan] != want.view(np.uint16)[~nan]
    assert not different.any(), (
        f"{int(different.sum())} of {int((~nan).sum())} differ, e.g. float32 bits "
        f"{values[~nan][different][:4].view(np.uint32)}"
    )


def test_the_patterns_cover_ties_overflow_and_subnormals() -> None:
    """Guard for the test above: its inputs really contain the hard cases."""
    values = float32_patterns()
    tie = values[np.isfinite(values) & (np.abs(values) > 1) & (np.abs(values) < 2)]
    assert np.any((tie.view(np.uint32) & 0x1FFF) == 0x1000)  # float16 ties
    assert np.any((tie.view(np.uint32) & 0xFFFF) == 0x8000)  # bfloat16 ties
    assert np.any(np.abs(values) == np.float32(65520.0))  # the float16 overflow boundary
    tiny = np.abs(values[np.isfinite(values)])
    assert np.any((tiny > 0) & (tiny < 2.0**-14))  # float16 subnormal results
    assert np.any(np.isinf(values)) and np.any(values == 0) and np.any(np.isnan(values))
