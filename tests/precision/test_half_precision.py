"""float16 and bfloat16 specifics on every backend (the op-by-op comparisons with the float64
reference are the ``test_matches_reference`` tests of each op, parametrized over all four dtypes).

The position trap: torchvision computes sampling positions in float16, where the spacing at 1500 is
1, so an offset of 0.3 px at x = 1500 is lost. cudcn computes positions in float32 (docs/spec.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from cudcn import dtypes, ops
from cudcn.backends import deterministic
from cudcn.ops import deform_conv2d_forward, deform_roi_pool_forward
from cudcn.testing import poison_outputs

WIDTH, ORIGIN, SHIFT = 2048, 1500, 0.3


def row() -> np.ndarray:
    """A (1, 1, 1, 2048) float16 image with v(x) = x - 1500 (every value an exact float16)."""
    values = np.arange(WIDTH, dtype=np.float64) - ORIGIN
    image = values.astype(np.float16).reshape(1, 1, 1, WIDTH)
    assert np.array_equal(image.ravel().astype(np.float64), values)
    return image


def test_float16_positions_lose_the_offset() -> None:
    """The trap itself: 1500 + 0.3 computed in float16 is 1500."""
    assert np.float16(ORIGIN) + np.float16(SHIFT) == np.float16(ORIGIN)


def test_deform_conv2d_keeps_a_subpixel_offset_at_x_1500(backend) -> None:
    """A 1x1 identity kernel with dx = 0.3 everywhere samples v(x + 0.3) = x - 1500 + 0.3."""
    offset = np.zeros((1, 2, 1, WIDTH), np.float16)
    offset[:, 1] = SHIFT
    weight = np.ones((1, 1, 1, 1), np.float16)
    args = [backend.asarray(a) for a in (row(), offset, weight)]
    with backend.context(), poison_outputs():
        out = backend.to_numpy(deform_conv2d_forward(*args)).ravel()
    # float32 position: 1500 + float16(0.3) = 1500.300048828125 exactly; v is exact too.
    assert out[ORIGIN] == np.float16(SHIFT), out[ORIGIN - 1 : ORIGIN + 2]
    expected = (np.arange(WIDTH - 1) - ORIGIN + np.float64(np.float16(SHIFT))).astype(np.float16)
    np.testing.assert_array_equal(out[:-1], expected)  # the last column reads past the edge


def test_deform_roi_pool_keeps_a_subpixel_offset_at_x_1500(backend) -> None:
    """One 1x1 bin over pixel 1500 (aligned: its sample at x1 * scale - 0.5 + 0.5 = 1500), shifted
    by gamma * roi_w * offset = 0.1 * 1 * 3 = 0.3 px: the value is v(1500.3) = 0.3."""
    rois = np.array([[0, ORIGIN, 0, ORIGIN + 1, 1]], np.float16)
    offset = np.zeros((1, 2, 1, 1), np.float16)
    offset[0, 0] = 3.0  # channel 0 is x (mmcv's order)
    args = [backend.asarray(a) for a in (row(), rois, offset)]
    with backend.context(), poison_outputs():
        out = backend.to_numpy(deform_roi_pool_forward(*args, 1, 1.0, 1, 0.1))
    # float32 sample position 1499.5 + 0.1f * 3 + 0.5 is within 2**-13 of 1500.3; the result is
    # then rounded once to float16, whose spacing at 0.3 is 2**-12.
    assert abs(float(out.ravel()[0]) - SHIFT) <= 2.0**-13 + 2.0**-12, out


@pytest.mark.torch
def test_the_position_trap_side_by_side_with_torchvision() -> None:
    """The same 1x1 sampling at 1500 + 0.3 through torchvision's CPU deform_conv2d, for the record:
    cudcn's float16 keeps float16(0.3) and equals its float32 result rounded once; torchvision's
    float32 agrees with cudcn's float32. torchvision's float16 value is printed, not asserted (it
    is their behaviour: 0.0 with torchvision 0.29.1, the offset lost)."""
    torch = pytest.importorskip("torch", reason="torch not installed")
    torchvision = pytest.importorskip("torchvision", reason="torchvision not installed")
    offset = np.zeros((1, 2, 1, WIDTH), np.float16)
    offset[:, 1] = SHIFT
    weight = np.ones((1, 1, 1, 1), np.float16)
    ours = {
        dt: deform_conv2d_forward(*(a.astype(dt) for a in (row(), offset, weight)))
        for dt in (np.float16, np.float32)
    }
    assert ours[np.float16][0, 0, 0, ORIGIN] == np.float16(SHIFT)
    np.testing.assert_array_equal(ours[np.float16], ours[np.float32].astype(np.float16))
    theirs = {}
    for dt in (np.float16, np.float32):
        args = [torch.from_numpy(a.astype(dt)) for a in (row(), offset, weight)]
        theirs[dt] = torchvision.ops.deform_conv2d(*args).numpy()
    np.testing.assert_array_equal(theirs[np.float32], ours[np.float32])
    print(
        f"at x = 1500 + 0.3: cudcn float16 {float(ours[np.float16][0, 0, 0, ORIGIN])}, "
        f"torchvision {torchvision.__version__} float16 {float(theirs[np.float16][0, 0, 0, ORIGIN])}, "
        f"float32 {float(theirs[np.float32][0, 0, 0, ORIGIN])}"
    )


def _conv_inputs(rng: np.random.Generator) -> list[np.ndarray]:
    return [
        rng.standard_normal((2, 4, 6, 7)),  # input
        rng.uniform(-2, 2, (2, 18, 6, 7)),  # offset: samples leave the image
        rng.standard_normal((3, 4, 3, 3)) / 6,  # weight
        rng.standard_normal(3),  # bias
        rng.uniform(0.1, 1, (2, 9, 6, 7)),  # mask
    ]


def _roi_inputs(rng: np.random.Generator) -> list[np.ndarray]:
    rois = np.array([[0, 0.5, 1.0, 9.0, 7.5], [1, -2.0, 3.0, 6.0, 12.0], [0, 4.0, 2.0, 5.5, 4.0]])
    return [rng.standard_normal((2, 3, 8, 9)), rois, rng.uniform(-0.5, 0.5, (3, 2, 2, 3))]


OPS = {
    "deform_conv2d": (_conv_inputs, lambda a: ((*a[:4],), {"padding": 1, "mask": a[4]})),
    "deform_roi_pool": (_roi_inputs, lambda a: ((*a, (2, 3), 0.5, 2, 0.2), {})),
}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", dtypes.HALF_DTYPES, ids=str)
def test_results_are_the_float32_results_rounded_once(backend, op, dtype) -> None:
    """Every output and gradient of a 16-bit call is, bit for bit, the float32 call on the widened
    inputs rounded once to the dtype: the kernels compute in float32 and keep every accumulation
    there. Deterministic mode makes the float32 scatters order-independent on every backend."""
    rng = np.random.default_rng(20261201)
    print("seed 20261201")
    make, arguments = OPS[op]
    narrow = [a.astype(dtype) for a in make(rng)]
    forward, backward = getattr(ops, f"{op}_forward"), getattr(ops, f"{op}_backward")
    grad_out = None  # the 16-bit output, as the cotangent of both calls
    results = {}
    for kind, arrays in (("16", narrow), ("32", [a.astype(np.float32) for a in narrow])):
        args, kwargs = arguments([backend.asarray(a) for a in arrays])
        with backend.context(), deterministic(), poison_outputs():
            out = forward(*args, **kwargs)
            grad_out = backend.to_numpy(out) if grad_out is None else grad_out
            cotangent = backend.asarray(grad_out.astype(arrays[0].dtype))
            results[kind] = [out, *backward(cotangent, *args, **kwargs)]
    for i, (got, want) in enumerate(zip(results["16"], results["32"], strict=True)):
        if want is None:
            assert got is None
            continue
        got, want = backend.to_numpy(got), backend.to_numpy(want).astype(dtype)
        assert got.dtype == dtype, i
        np.testing.assert_array_equal(got, want, err_msg=f"result {i} of {op}")
