"""A layer given input of the wrong channel count says so in its own terms, not in those of the hidden
offset convolution inside it."""

from __future__ import annotations

import numpy as np
import pytest

from cudcn import nn


@pytest.mark.parametrize("layer", [nn.DeformConv2dPack, nn.ModulatedDeformConv2dPack])
def test_wrong_input_channels_name_the_layer(layer) -> None:
    m = layer(3, 4, 3, padding=1)
    assert m(np.zeros((1, 3, 5, 5), np.float32)).shape == (1, 4, 5, 5)
    with pytest.raises(
        ValueError,
        match=rf"^{layer.__name__}\(3, 4, .*takes input of shape \(B, 3, H, W\), got \(1, 2, 5, 5\)$",
    ):
        m(np.zeros((1, 2, 5, 5), np.float32))
