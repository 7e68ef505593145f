"""dcnv3 against a PyTorch re-implementation of the logic of InternImage's ``dcnv3_core_pytorch``
(written here, not copied): the input zero-padded, InternImage's reference points and grid in
normalised coordinates of the padded input, the grid scaled by offset_scale, ``grid_sample`` with
``align_corners=False`` and zeros, the mask's weighted sum over points."""

from __future__ import annotations

import numpy as np
import pytest

from cudcn.functional import dcnv3
from cudcn.ops import dcnv3_backward

from .cases import Case, make_inputs

pytestmark = pytest.mark.torch

CASES = [
    Case("basic"),
    Case("stride_dilation", height=7, stride=(2, 2), padding=(0, 0), dilation=(2, 1)),
    Case("remove_center_scaled", remove_center=True, offset_scale=0.7, group=1, depth=4),
    Case("kernel_5", kernel=(5, 5), padding=(2, 2), height=4, width=4, offset_scale=2.0),
    Case("even", kernel=(4, 4), padding=(1, 1), height=6, width=6, group=3, depth=1),
]


def internimage_dcnv3(torch, x, offset, mask, case: Case):
    """InternImage's PyTorch formulation (equal padding on both axes, as its modules use)."""
    functional = torch.nn.functional
    (kh, kw), (sh, sw), (pad, _), (dh, dw) = case.kernel, case.stride, case.padding, case.dilation
    g, s = case.group, case.offset_scale
    n, h, w, c = x.shape
    xp = functional.pad(x, (0, 0, pad, pad, pad, pad))
    hp, wp = h + 2 * pad, w + 2 * pad
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    ch, cw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    # Reference points: pixel centres of the grid's centre, normalised by the padded size.
    ref_y = (ch + 0.5 + sh * torch.arange(ho, dtype=x.dtype)) / hp
    ref_x = (cw + 0.5 + sw * torch.arange(wo, dtype=x.dtype)) / wp
    taps = [(i, j) for i in range(kw) for j in range(kh)]  # x-major
    if case.remove_center:
        taps.remove((kw // 2, kh // 2))
    grid_x = torch.tensor([(i * dw - cw) / wp for i, _ in taps], dtype=x.dtype)
    grid_y = torch.tensor([(j * dh - ch) / hp for _, j in taps], dtype=x.dtype)
    points = len(taps)
    off = offset.reshape(n, ho, wo, g, points, 2)
    loc_x = ref_x[None, None, :, None, None] + grid_x * s + off[..., 0] * s / wp
    loc_y = ref_y[None, :, None, None, None] + grid_y * s + off[..., 1] * s / hp
    grid = torch.stack((2 * loc_x - 1, 2 * loc_y - 1), dim=-1)
    grid = grid.reshape(n, ho * wo, g, points, 2).transpose(1, 2).reshape(n * g, ho * wo, points, 2)
    d = c // g
    planes = xp.reshape(n, hp * wp, g, d).permute(0, 2, 3, 1).reshape(n * g, d, hp, wp)
    samples = functional.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    weights = mask.reshape(n, ho * wo, g, points).transpose(1, 2).reshape(n * g, 1, ho * wo, points)
    out = (samples * weights).sum(-1).reshape(n, g * d, ho * wo)
    return out.transpose(1, 2).reshape(n, ho, wo, c)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_internimage_pytorch_logic(case):
    torch = pytest.importorskip("torch", reason="torch not installed")
    x, offset, mask = make_inputs(case, np.float64, 20261222 + CASES.index(case), reach=3.0)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, offset, mask)]
    want = internimage_dcnv3(torch, *tensors, case)
    grad = np.random.default_rng(5).standard_normal(tuple(want.shape))
    want.backward(torch.tensor(grad))
    got = dcnv3(x, offset, mask, *case.args())
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-12)
    grads = dcnv3_backward(grad, x, offset, mask, *case.args())
    for name, g, t in zip(("input", "offset", "mask"), grads, tensors, strict=True):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-11, atol=1e-11, err_msg=name)
