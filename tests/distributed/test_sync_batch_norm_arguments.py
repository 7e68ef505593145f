"""sync_batch_norm's ``training`` is a bool, as batch_norm's: "no" would otherwise read as True and
start a collective on one rank only."""

from __future__ import annotations

import numpy as np
import pytest

from cudcn.distributed.batchnorm import sync_batch_norm
from cudcn.distributed.comm import default_communicator


@pytest.mark.parametrize("value", ["no", 0, None])
def test_training_must_be_a_bool(value) -> None:
    x = np.zeros((2, 3), np.float32)
    assert sync_batch_norm(x, None, None, comm=default_communicator(), training=True).shape == (2, 3)
    with pytest.raises(TypeError, match=r"training must be a bool"):
        sync_batch_norm(x, None, None, comm=default_communicator(), training=value)
