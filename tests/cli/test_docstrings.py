"""The examples in the public docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "cudcn.functional",
    "cudcn.ops.activation",
    "cudcn.ops.dcnv3",
    "cudcn.ops.dcnv3_layout",
    "cudcn.ops.dcnv4",
    "cudcn.ops.layer_norm",
    "cudcn.ops.deform_roi_pool",
    "cudcn.ops.deform_psroi_pool",
    "cudcn.ops.loss",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
