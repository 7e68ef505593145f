"""In-place changes of a tensor's data between a forward and a (retained) backward: the backward that
needs the old values refuses to run instead of returning gradients of a function nobody computed."""

from __future__ import annotations

import numpy as np
import pytest

import cudcn
from cudcn import functional as F
from cudcn import nn, optim

SEED = 2026_12_06


def _conv_graph(rng: np.random.Generator):
    x = cudcn.Tensor(rng.standard_normal((1, 2, 5, 5)), requires_grad=True)
    w = cudcn.Tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    offset = rng.standard_normal((1, 18, 5, 5))
    return x, w, F.deform_conv2d(x, offset, w, padding=1).sum()


def test_in_place_change_through_the_attribute_is_refused() -> None:
    _, w, loss = _conv_graph(np.random.default_rng(SEED))
    loss.backward(retain_graph=True)
    w.data *= 2  # Python runs this as w.data = w.data.__imul__(2): the same array, changed
    with pytest.raises(RuntimeError, match=r"DeformConv2dFunction.*modified in place"):
        loss.backward()


def test_change_announced_with_mark_modified_is_refused() -> None:
    _, w, loss = _conv_graph(np.random.default_rng(SEED + 1))
    w.data[...] = 0.0  # bypasses the attribute: the caller says so
    w.mark_modified()
    with pytest.raises(RuntimeError, match=r"modified in place"):
        loss.backward()


def test_optimizer_step_counts_as_a_change() -> None:
    _, w, loss = _conv_graph(np.random.default_rng(SEED + 2))
    loss.backward(retain_graph=True)
    optim.SGD([w], lr=0.1).step()
    with pytest.raises(RuntimeError, match=r"modified in place"):
        loss.backward()


def test_a_new_array_or_an_unsaved_input_is_not_a_change() -> None:
    rng = np.random.default_rng(SEED + 3)
    x, w, loss = _conv_graph(rng)
    loss.backward(retain_graph=True)
    first = x.grad.copy()
    w.data = w.data * 2  # a new array: the graph still holds the old one, its gradients stay right
    x.grad = None
    loss.backward()
    np.testing.assert_array_equal(x.grad, first)
    a = cudcn.Tensor(rng.standard_normal(3), requires_grad=True)
    total = (a + 1.0).sum()  # add saves nothing of a
    a.data *= 2
    total.backward()
    np.testing.assert_array_equal(a.grad, np.ones(3))


def test_optimizer_refuses_a_gradient_of_another_shape() -> None:
    p = nn.Parameter(np.ones(3))
    p.grad = np.ones(1)  # would broadcast onto all three entries
    with pytest.raises(
        ValueError, match=r"parameter 0 of group 0 has shape \(3,\) but its \.grad has shape \(1,\)"
    ):
        optim.SGD([p], lr=0.1).step()
    np.testing.assert_array_equal(p.data, np.ones(3))
