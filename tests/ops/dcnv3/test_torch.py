"""dcnv3 against a PyTorch re-implementation of the logic of InternImage's ``dcnv3_core_pytorch``
(``torch_peer.py``), forward and the three gradients in float64."""

from __future__ import annotations

import numpy as np
import pytest

from cudcn.functional import dcnv3
from cudcn.ops import dcnv3_backward

from .cases import Case, make_inputs
from .torch_peer import internimage_dcnv3

pytestmark = pytest.mark.torch

CASES = [
    Case("basic"),
    Case("stride_dilation", height=7, stride=(2, 2), padding=(0, 0), dilation=(2, 1)),
    Case("remove_center_scaled", remove_center=True, offset_scale=0.7, group=1, depth=4),
    Case("kernel_5", kernel=(5, 5), padding=(2, 2), height=4, width=4, offset_scale=2.0),
    Case("even", kernel=(4, 4), padding=(1, 1), height=6, width=6, group=3, depth=1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_internimage_pytorch_logic(case):
    torch = pytest.importorskip("torch", reason="torch not installed")
    x, offset, mask = make_inputs(case, np.float64, 20261222 + CASES.index(case), reach=3.0)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, offset, mask)]
    want = internimage_dcnv3(*tensors, *case.args())
    grad = np.random.default_rng(5).standard_normal(tuple(want.shape))
    want.backward(torch.tensor(grad))
    got = dcnv3(x, offset, mask, *case.args())
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-12)
    grads = dcnv3_backward(grad, x, offset, mask, *case.args())
    for name, g, t in zip(("input", "offset", "mask"), grads, tensors, strict=True):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-11, atol=1e-11, err_msg=name)
