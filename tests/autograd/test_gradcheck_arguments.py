"""gradcheck's step and tolerances are checked before any work: eps = 0 would divide by zero."""

from __future__ import annotations

import numpy as np
import pytest

import cudcn


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.0}, r"eps must be a positive finite number, got 0.0"),
        ({"eps": -1e-6}, r"eps must be a positive finite number"),
        ({"eps": float("nan")}, r"eps must be a positive finite number"),
        ({"atol": -1.0}, r"atol must be a finite number >= 0"),
        ({"rtol": float("inf")}, r"rtol must be a finite number >= 0"),
    ],
)
def test_bad_step_or_tolerance_is_a_value_error(kwargs, match) -> None:
    x = np.linspace(0.5, 1.5, 4)
    assert cudcn.gradcheck(lambda t: (t * t).sum(), [cudcn.Tensor(x, requires_grad=True)])
    with pytest.raises(ValueError, match=match):
        cudcn.gradcheck(lambda t: (t * t).sum(), [cudcn.Tensor(x, requires_grad=True)], **kwargs)
