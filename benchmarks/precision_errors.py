"""Measured error of every op's float16, bfloat16 and float32 results against the float64 reference
evaluated on the same rounded inputs, on the host backends (``cpu``, ``emulated``).

For every result (the forward output and each gradient) it prints the worst error in units of
``eps(dtype) * max|reference|`` of that result. A result rounded once from an exact value is within
0.5 (half a unit in the last place at the largest value); a float32 result shows the float32 work,
whose sample positions the emulated backend computes in float32 and the CPU one in float64.
(Errors in units of each element's own ulp are not shown: gradients that cancel to near zero have
tiny ulps and no bound relative to them.)

Usage: ``python benchmarks/precision_errors.py [--seed N]`` (seconds on 2 cores).
"""

from __future__ import annotations

import argparse

import numpy as np

import cudcn
from cudcn import dtypes, ops, reference
from cudcn.ops.dcnv3 import DCNv3Params
from cudcn.ops.deform_conv2d import DeformConv2dParams
from cudcn.ops.deform_psroi_pool import DeformPSRoIPoolParams
from cudcn.ops.deform_roi_pool import DeformRoIPoolParams
from cudcn.ops.ms_deform_attn import MSDeformAttnParams

CONV = {"stride": 1, "padding": 1, "dilation": 1}
ROI = {"output_size": (7, 7), "spatial_scale": 0.25, "sampling_ratio": 2, "gamma": 0.1}
ALIGN = {"output_size": (7, 7), "spatial_scale": 0.25, "sampling_ratio": 2, "aligned": True}
PSROI = {
    "spatial_scale": 0.25,
    "output_dim": 8,
    "group_size": 3,
    "pooled_size": 3,
    "sample_per_part": 2,
    "trans_std": 0.1,
}
DCNV3 = (3, 1, 1, 1, 4, 1.0, False)  # kernel_size, stride, padding, dilation, group, scale, centre
MSDA_LEVELS, MSDA_STARTS = [[16, 24], [8, 12]], [0, 384]  # N = 2, Lq = 100, M = 8, D = 32, P = 4
REFERENCE_PARAMS = {
    "ms_deform_attn": MSDeformAttnParams(((16, 24), (8, 12)), (0, 384)),
    "dcnv3": DCNv3Params.build(np.zeros((2, 24, 24, 64)), *DCNV3),
    "deform_conv2d": DeformConv2dParams((1, 1), (1, 1), (1, 1), groups=1, offset_groups=1),
    "deform_roi_pool": DeformRoIPoolParams(
        7, 7, spatial_scale=0.25, sampling_ratio=2, gamma=0.1, aligned=True
    ),
    "deform_psroi_pool": DeformPSRoIPoolParams(**{**PSROI, "part_size": 3}),
}


def inputs(op: str, rng: np.random.Generator) -> list[np.ndarray]:
    """float64 inputs of a detection-like size, and the cotangent drawn later from the output."""
    if op == "deform_conv2d":
        return [
            rng.standard_normal((2, 16, 24, 24)),
            rng.uniform(-3, 3, (2, 18, 24, 24)),
            rng.standard_normal((16, 16, 3, 3)) / 12,
            rng.standard_normal(16),
            rng.uniform(0.1, 1, (2, 9, 24, 24)),
        ]
    if op == "dcnv3":  # InternImage's layout: channels last, a softmax mask per group
        logits = rng.standard_normal((2, 24, 24, 4, 9))
        mask = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        return [
            rng.standard_normal((2, 24, 24, 64)),
            rng.uniform(-3, 3, (2, 24, 24, 72)),
            mask.reshape(2, 24, 24, 36),
        ]
    if op == "ms_deform_attn":  # points around the levels (some outside), softmax weights
        logits = rng.standard_normal((2, 100, 8, 2, 4))
        weights = np.exp(logits) / np.exp(logits).sum(axis=(3, 4), keepdims=True)
        return [rng.standard_normal((2, 480, 8, 32)), rng.uniform(-0.05, 1.05, (2, 100, 8, 2, 4, 2)), weights]
    channels = 8 * 9 if op == "deform_psroi_pool" else 16
    x1, y1 = rng.uniform(-8, 90, 32), rng.uniform(-8, 90, 32)
    w, h = rng.uniform(8, 60, 32), rng.uniform(8, 60, 32)
    rois = np.column_stack([rng.integers(0, 2, 32), x1, y1, x1 + w, y1 + h])
    shift = rng.uniform(-1, 1, (32, 2, 3, 3) if op == "deform_psroi_pool" else (32, 2, 7, 7))
    return [rng.standard_normal((2, channels, 24, 24)), rois, shift]


def run(op: str, arrays: list, grad_out) -> list:
    """Forward output and every gradient through the public array-level ops."""
    if op == "deform_conv2d":
        x, offset, weight, bias, mask = arrays
        out = ops.deform_conv2d_forward(x, offset, weight, bias, **CONV, mask=mask)
        grads = ops.deform_conv2d_backward(grad_out, x, offset, weight, bias, **CONV, mask=mask)
    elif op == "deform_roi_pool":
        out = ops.deform_roi_pool_forward(*arrays, **ROI)
        grads = ops.deform_roi_pool_backward(grad_out, *arrays, **ROI)
    elif op == "dcnv3":
        out = ops.dcnv3_forward(*arrays, *DCNV3)
        grads = ops.dcnv3_backward(grad_out, *arrays, *DCNV3)
    elif op == "ms_deform_attn":
        value, locations, weights = arrays
        out = ops.ms_deform_attn_forward(value, MSDA_LEVELS, MSDA_STARTS, locations, weights)
        grads = ops.ms_deform_attn_backward(grad_out, value, MSDA_LEVELS, MSDA_STARTS, locations, weights)
    elif op == "roi_align":
        out = ops.roi_align_forward(*arrays[:2], **ALIGN)
        grads = ops.roi_align_backward(grad_out, *arrays[:2], **ALIGN)
    else:
        out = ops.deform_psroi_pool_forward(*arrays, **PSROI)
        grads = ops.deform_psroi_pool_backward(grad_out, *arrays, **PSROI)
    return [out, *grads]


def truth(op: str, arrays: list, grad_out: np.ndarray) -> list:
    """The float64 reference on the (already rounded) inputs."""
    if op == "roi_align":  # deform_roi_pool without offset, aligned
        p = REFERENCE_PARAMS["deform_roi_pool"]
        args = [*arrays[:2], None]
        return [
            reference.deform_roi_pool_forward(*args, p),
            reference.deform_roi_pool_backward(grad_out, *args, p)[0],
        ]
    if op == "ms_deform_attn":  # the reference keeps the heads apart: (N, Lq, M, D)
        p, heads = REFERENCE_PARAMS[op], arrays[0].shape[2]
        out = reference.ms_deform_attn_forward(*arrays, p)
        grads = reference.ms_deform_attn_backward(grad_out.reshape(out.shape), *arrays, p)
        return [out.reshape(*out.shape[:2], heads * out.shape[3]), *grads]
    forward = getattr(reference, f"{op}_forward")
    backward = getattr(reference, f"{op}_backward")
    return [forward(*arrays, REFERENCE_PARAMS[op]), *backward(grad_out, *arrays, REFERENCE_PARAMS[op])]


def error(got: np.ndarray, want: np.ndarray, dtype) -> float:
    """Worst |got - want| / (eps(dtype) * max|want|)."""
    err = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
    return float(err / (dtypes.eps(dtype) * np.abs(want).max()))


NAMES = {
    "deform_conv2d": ("out", "input", "offset", "weight", "bias", "mask"),
    "deform_roi_pool": ("out", "input", "offset"),
    "roi_align": ("out", "input"),
    "deform_psroi_pool": ("out", "input", "trans"),
    "dcnv3": ("out", "input", "offset", "mask"),
    "ms_deform_attn": ("out", "value", "sampling_locations", "attention_weights"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=20261201)
    seed = parser.parse_args().seed
    print(f"seed {seed}; worst error per result in eps(dtype) * max|reference| (see the docstring)\n")
    print("| op | result | backend | float16 | bfloat16 | float32 |")
    print("|---|---|---|---|---|---|")
    for op in NAMES:
        rng = np.random.default_rng(seed)
        wide = inputs(op, rng)
        rows: dict[tuple[str, str], list[str]] = {}
        for dtype in (dtypes.float16, dtypes.bfloat16, dtypes.float32):
            arrays = [a.astype(dtype) for a in wide]
            rounded = [a.astype(np.float64) for a in arrays]
            grad_out = (
                np.random.default_rng(seed + 1).standard_normal(truth_output_shape(op, rounded)).astype(dtype)
            )
            want = truth(op, rounded, grad_out.astype(np.float64))
            for backend in ("cpu", "emulated"):
                with cudcn.use_backend(backend):
                    got = run(op, arrays, grad_out)
                for name, g, w in zip(NAMES[op], got, want, strict=True):
                    rows.setdefault((name, backend), []).append(f"{error(g, w, dtype):.2f}")
        for (name, backend), cells in rows.items():
            print(f"| {op} | {name} | {backend} | " + " | ".join(cells) + " |")


def truth_output_shape(op: str, rounded: list) -> tuple[int, ...]:
    """The forward output's shape, from the reference."""
    if op == "deform_conv2d":
        return (rounded[0].shape[0], rounded[2].shape[0], *rounded[0].shape[2:])
    if op == "dcnv3":
        return rounded[0].shape
    if op == "ms_deform_attn":
        return (*rounded[1].shape[:2], rounded[0].shape[2] * rounded[0].shape[3])
    if op in ("deform_roi_pool", "roi_align"):
        return (rounded[1].shape[0], rounded[0].shape[1], *ROI["output_size"])
    return (rounded[1].shape[0], PSROI["output_dim"], PSROI["pooled_size"], PSROI["pooled_size"])


if __name__ == "__main__":
    main()
