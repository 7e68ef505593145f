"""The launch code shared by the CUDA and emulated backends (cudcn/backends/launch/<op>.py): kernel
parameters passed by name in the kernels' order, index types chosen from every array a kernel
indexes, plane-size guards, and every kernel run with tiny grids (one block of 32 threads, so every
grid-stride loop wraps), 32- and 64-bit indices, concurrent threads, against the reference."""

from __future__ import annotations

import dataclasses
import re
import shutil

import numpy as np
import pytest

from cudcn.backends.cuda.source import KERNEL_DIR
from cudcn.backends.emulated import build as host_build
from cudcn.backends.emulated.loader import host_kernels
from cudcn.backends.launch import common as launch
from cudcn.backends.launch import deform_conv2d as dc_launch
from cudcn.backends.launch import deform_psroi_pool as psroi_launch
from cudcn.backends.launch import deform_roi_pool as roi_launch
from cudcn.backends.launch import ms_deform_attn as msda_launch
from cudcn.ops.deform_psroi_pool import DeformPSRoIPoolParams
from cudcn.ops.deform_roi_pool import DeformRoIPoolParams
from cudcn.ops.ms_deform_attn import MSDeformAttnParams

from . import sanitized_kernels

needs_compiler = pytest.mark.skipif(
    shutil.which(host_build.compiler()) is None, reason="no C++ compiler for the emulated backend"
)
_KERNEL = re.compile(r"__global__ void (\w+)\((.*?)\)\s*\{", re.DOTALL)
PARAMS = {
    "deform_conv2d": dc_launch.DeformConv2dKernelParams,
    "deform_roi_pool": roi_launch.DeformRoIPoolKernelParams,
    "deform_psroi_pool": psroi_launch.DeformPSRoIPoolKernelParams,
    "ms_deform_attn": msda_launch.MSDeformAttnKernelParams,
}


@pytest.mark.parametrize("stem", PARAMS)
def test_named_parameters_follow_the_kernel_signatures(stem: str) -> None:
    fields = [f.name for f in dataclasses.fields(PARAMS[stem])]
    kernels = _KERNEL.findall((KERNEL_DIR / f"{stem}.cu").read_text())
    assert kernels, f"no kernels found in {stem}.cu"
    for name, params in kernels:
        names = [p.split()[-1] for p in params.replace("\n", " ").split(",")]
        assert names[names.index("n") + 1 :] == fields, f"{name}: parameters after n"


def test_scalars_take_the_parameter_widths() -> None:
    params = roi_launch.DeformRoIPoolKernelParams(
        channels=3,
        height=4,
        width=5,
        pooled_h=2,
        pooled_w=2,
        spatial_scale=0.5,
        sampling_ratio=0,
        gamma=0.1,
        aligned=1,
        use_offset=0,
    )
    scalars = params.scalars(np.float32)
    assert [type(v) for v in scalars] == [np.int32] * 5 + [np.float32, np.int32, np.float32] + [np.int32] * 2


class _Recorder:
    """A get_kernel that records the name expressions asked for."""

    def __init__(self, stem: str):
        self.names: list[str] = []
        self._get = host_kernels(stem)

    def __call__(self, name: str):
        self.names.append(name)
        return self._get(name)


@needs_compiler
def test_roi_index_type_covers_the_offset_gradient(monkeypatch) -> None:
    """With one channel, the offset (R, 2, ph, pw) has twice as many elements as the output: the
    index type must be chosen from it too."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 1, 5, 5))
    rois = np.array([[0, 0.5, 0.5, 4.0, 4.0]] * 3)
    offset = rng.uniform(-0.5, 0.5, (3, 2, 2, 2))
    grad = rng.standard_normal((3, 1, 2, 2))
    monkeypatch.setattr(launch, "INDEX32_LIMIT", grad.size)  # n fits, the offset does not
    recorder = _Recorder("deform_roi_pool")
    params = DeformRoIPoolParams(
        pooled_h=2, pooled_w=2, spatial_scale=1.0, sampling_ratio=2, gamma=0.1, aligned=True
    )
    roi_launch.deform_roi_pool_backward(np, recorder, grad, x, rois, offset, params)
    assert recorder.names == ["deform_roi_pool_backward<double, long long>"]


@needs_compiler
def test_psroi_index_type_covers_trans(monkeypatch) -> None:
    x = np.zeros((1, 4, 5, 5))
    rois = np.array([[0, 0.0, 0.0, 4.0, 4.0]])
    trans = np.zeros((1, 8, 5, 5))  # 4 classes, 5 x 5 parts: 200 elements, more than the input
    monkeypatch.setattr(launch, "INDEX32_LIMIT", x.size)
    recorder = _Recorder("deform_psroi_pool")
    params = DeformPSRoIPoolParams(
        spatial_scale=1.0,
        output_dim=4,
        group_size=1,
        pooled_size=1,
        part_size=5,
        sample_per_part=2,
        trans_std=0.1,
    )
    psroi_launch.deform_psroi_pool_forward(np, recorder, x, rois, trans, params)
    assert recorder.names == ["deform_psroi_pool_forward<double, long long>"]


@needs_compiler
def test_msda_index_type_covers_the_thread_count(monkeypatch) -> None:
    """ms_deform_attn runs 32 threads per (batch, query, head) group: with D = 1 the thread count is
    32 times the output and larger than any array, so the index type must be chosen from it too."""
    value = np.ones((1, 4, 2, 1))
    locations = np.full((1, 3, 2, 1, 2, 2), 0.5)
    weights = np.ones((1, 3, 2, 1, 2))
    monkeypatch.setattr(launch, "INDEX32_LIMIT", locations.size)  # every array fits, n = 192 does not
    recorder = _Recorder("ms_deform_attn")
    p = MSDeformAttnParams(((2, 2),), (0,))
    out = msda_launch.ms_deform_attn_forward(np, recorder, value, locations, weights, p)
    assert recorder.names == ["ms_deform_attn_forward<double, long long>"]
    np.testing.assert_array_equal(out, 2.0)  # two points at the centre of a level of ones


def test_planes_of_2_31_pixels_are_refused() -> None:
    launch.check_plane(46340, 46340)  # 2_147_395_600 < 2**31: fine
    huge = np.broadcast_to(np.zeros(1), (1, 1, 46341, 46341))  # a view: no memory behind it
    with pytest.raises(ValueError, match="input planes must have < 2\\*\\*31 pixels"):
        roi_launch._launch_args(huge, None, 1, DeformRoIPoolParams(1, 1, 1.0, 1, 0.1, True))
    with pytest.raises(ValueError, match="input planes must have < 2\\*\\*31 pixels"):
        psroi_launch._launch_args(huge, None, 1, DeformPSRoIPoolParams(1.0, 1, 1, 1, 1, 1, 0.1))
    level = MSDeformAttnParams(((46341, 46341),), (0,))  # the arrays themselves are not looked at
    with pytest.raises(ValueError, match="value level planes must have < 2\\*\\*31 pixels"):
        msda_launch._launch_args(np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1, 1, 1, 2)), level)


@needs_compiler
@pytest.mark.parametrize("op", sanitized_kernels.OPS)
def test_every_kernel_with_one_block_of_32_threads(monkeypatch, op: str) -> None:
    """Every kernel, both index types, concurrent threads, grid-stride loops that wrap many times."""
    monkeypatch.setenv("CUDCN_EMULATED_MODE", "concurrent")
    monkeypatch.setenv("CUDCN_EMULATED_WORKERS", "2")
    monkeypatch.setattr(launch, "THREADS_PER_BLOCK", 32)
    monkeypatch.setattr(launch, "MAX_BLOCKS", 1)
    monkeypatch.setattr(launch, "INDEX32_LIMIT", launch.INDEX32_LIMIT)  # restored afterwards
    monkeypatch.setattr(dc_launch, "COLUMN_BUDGET_BYTES", sanitized_kernels.COLUMN_BUDGET_BYTES)
    monkeypatch.setattr(sanitized_kernels, "mismatches", [])
    assert sanitized_kernels.run_op(op, one=False) > 0
    assert sanitized_kernels.mismatches == []
