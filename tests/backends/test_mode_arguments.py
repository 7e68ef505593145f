"""cudcn.deterministic takes a bool: a string such as "no" would otherwise read as True."""

from __future__ import annotations

import pytest

import cudcn
from cudcn.backends import deterministic_enabled


@pytest.mark.parametrize("value", ["no", "0", 0, 1, None])
def test_deterministic_refuses_a_non_bool(value) -> None:
    with pytest.raises(TypeError, match=r"deterministic\(enabled\) takes True or False"):
        with cudcn.deterministic(value):
            pass


def test_deterministic_takes_bools() -> None:
    with cudcn.deterministic(False):
        assert not deterministic_enabled()
    with cudcn.deterministic():
        assert deterministic_enabled()
