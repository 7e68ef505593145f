"""Tape nodes: the ``Function`` base class, grad mode, and the backward walk.

A ``Function`` subclass defines ``forward`` on plain arrays and ``backward`` returning one gradient per
positional input. ``MyFunction.apply(*inputs, **params)`` runs ``forward`` on the inputs' arrays and, when
recording, returns a :class:`~cudcn.autograd.Tensor` whose ``grad_fn`` is the ``Function`` instance: the
instance *is* the tape node. Nodes get a global, increasing sequence number when recorded; an input is
always recorded before whatever consumes it, so creation order is a topological order and
:func:`run_backward` is a loop over the reachable nodes by decreasing sequence number, never a recursion.

Export trace mode (:class:`Trace`, used by :func:`cudcn.onnx.export`) records every call that has a
Tensor input, whether or not anything requires grad: the node keeps its positional inputs (Tensors by
identity, arrays and scalars as given) in ``_trace_inputs``, its keyword parameters in
``_trace_params`` and the dotted path of the innermost calling module (stamped by ``Module.__call__``)
in ``_trace_module``; its output Tensor links back to it through ``grad_fn`` as on the tape.

Names used by the tape on every instance (do not reuse them in subclasses): ``saved``,
``needs_input_grad``, ``_seq``, ``_edges``, ``_input_meta``, ``_trace_inputs``, ``_trace_params``,
``_trace_module``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np

from cudcn.arrays import Array, array_module
from cudcn.autograd.tensor import Tensor
from cudcn.dtypes import compute_dtype, narrow, widen

F = TypeVar("F", bound=Callable[..., Any])

_grad_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("cudcn_grad", default=True)
_sequence = itertools.count()


class Trace:
    """Export trace mode: ``with Trace(model_names): out = model(x)`` records every ``Function.apply``
    that has a Tensor input (see the module docstring), each node stamped with the module path.

    Args:
        module_names: ``id(module) -> dotted path`` (``Module.named_modules``); a module not in it is
            named after its class inside the enclosing path.
    """

    def __init__(self, module_names: dict[int, str]) -> None:
        self.module_names = module_names
        self.scope: list[tuple[str, str]] = [("", "")]  # (dotted path, class name), innermost last
        self.first_seq = next(_sequence)
        self._token: contextvars.Token[Trace | None] | None = None

    def recorded(self, node: Any) -> bool:
        """True for a node this trace recorded."""
        return hasattr(node, "_trace_inputs") and node._seq > self.first_seq

    def __enter__(self) -> Trace:
        self._token = _trace.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None, "Trace.__exit__ without __enter__"
        _trace.reset(self._token)

    @contextlib.contextmanager
    def module_scope(self, module: Any) -> Iterator[None]:
        """Stamp the nodes recorded inside the block with ``module``'s path."""
        name = self.module_names.get(id(module))
        if name is None:
            parent = self.scope[-1][0]
            name = f"{parent}.<{type(module).__name__}>" if parent else f"<{type(module).__name__}>"
        self.scope.append((name, type(module).__name__))
        try:
            yield
        finally:
            self.scope.pop()


_trace: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("cudcn_trace", default=None)


def current_trace() -> Trace | None:
    """The active export :class:`Trace`, or None outside export."""
    return _trace.get()


def is_grad_enabled() -> bool:
    """True when differentiable calls are recorded on the tape (the default; per thread)."""
    return _grad_enabled.get()


class _GradMode:
    """Context manager and function decorator that sets grad mode inside its block."""

    enabled = True

    def __init__(self) -> None:
        self._tokens: list[contextvars.Token[bool]] = []

    def __enter__(self) -> None:
        self._tokens.append(_grad_enabled.set(self.enabled))

    def __exit__(self, *exc: object) -> None:
        _grad_enabled.reset(self._tokens.pop())

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with type(self)():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class no_grad(_GradMode):
    """Turn recording off: ``with no_grad(): ...`` or ``@no_grad()`` on a function.

    Inside, ``Function.apply`` still computes its result but records nothing, and the result does not
    require grad.
    """

    enabled = False


class enable_grad(_GradMode):
    """Turn recording back on inside a ``no_grad`` block (context manager or decorator)."""

    enabled = True


class Function:
    """Base class of differentiable operations; subclass it and call ``MyFunction.apply``.

    ``forward(self, *inputs, **params) -> array`` receives plain arrays (or ``None``/Python scalars
    where those were passed) and keyword parameters; it may call ``self.save_for_backward(*arrays)``
    and set other attributes for backward. ``backward(self, grad_out) -> tuple`` receives the gradient
    of the output (an array of the output's shape) and returns one entry per positional input: an
    array of that input's shape, or ``None`` (no gradient, e.g. where ``self.needs_input_grad[i]`` is
    False). A single input may return a bare array. ``backward`` must not modify ``grad_out`` in
    place: the same array may be handed to several nodes.

    Example::

        class Square(Function):
            def forward(self, x):
                self.save_for_backward(x)
                return x * x

            def backward(self, grad_out):
                (x,) = self.saved
                return (2 * x * grad_out,)

        y = Square.apply(Tensor(np.ones(3), requires_grad=True))
    """

    saved: tuple[Any, ...] = ()
    needs_input_grad: tuple[bool, ...] = ()
    # Set by ``apply`` on the nodes it records; declared here without values, so an unrecorded node
    # still lacks them (``Trace.recorded`` tests ``hasattr``).
    _seq: int  # creation order: backward runs nodes by decreasing _seq
    _edges: tuple[Function | Tensor | None, ...] | None  # per input; None once released
    _input_meta: tuple[tuple[tuple[int, ...], Any] | None, ...]  # (shape, dtype) per input
    _saved_versions: tuple[tuple[Tensor, int], ...]  # inputs whose data backward reads, and versions
    _trace_inputs: tuple[Any, ...]  # export trace mode: the inputs, parameters, module scope
    _trace_params: dict[str, Any]
    _trace_module: tuple[str, str]

    def forward(self, *inputs: Any, **params: Any) -> Array:
        raise NotImplementedError(f"{type(self).__name__} must define forward")

    def backward(self, grad_out: Array) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define backward")

    def save_for_backward(self, *arrays: Any) -> None:
        """Keep ``arrays`` for ``backward`` (read back as ``self.saved``)."""
        self.saved = arrays

    @classmethod
    def apply(cls, *inputs: Any, **params: Any) -> Any:
        """Run ``forward`` on ``inputs`` (Tensors, plain arrays, Python scalars or None).

        Returns a plain array when no input is a Tensor. Otherwise returns a Tensor, recorded on the
        tape when grad mode is on and some input requires grad (else a Tensor without history), and
        always recorded in export trace mode (for export only: ``requires_grad`` stays as above).
        """
        fn = cls()
        arrays = []
        edges: list[Function | Tensor | None] = []  # where each input's gradient goes
        meta: list[tuple[tuple[int, ...], Any] | None] = []  # (shape, dtype) of those inputs
        any_tensor = record = False
        for x in inputs:
            if isinstance(x, Tensor):
                any_tensor = True
                data = x.data
                arrays.append(data)
                if x.requires_grad:
                    record = True
                    edges.append(x if x.grad_fn is None else x.grad_fn)
                    meta.append((data.shape, data.dtype))
                    continue
            else:
                arrays.append(x)
            edges.append(None)
            meta.append(None)
        record = record and _grad_enabled.get()
        if record:
            fn.needs_input_grad = tuple([edge is not None for edge in edges])
        else:
            fn.needs_input_grad = (False,) * len(inputs)
        out = fn.forward(*arrays, **params)
        trace = _trace.get()
        if not any_tensor:
            return out
        if not record and trace is None:
            return Tensor(out)
        fn._seq = next(_sequence)
        if record:
            fn._edges = tuple(edges)
            fn._input_meta = tuple(meta)
            saved = {id(a) for a in getattr(fn, "saved", ())}
            fn._saved_versions = tuple(
                (x, x._version) for x in inputs if isinstance(x, Tensor) and id(x.data) in saved
            )
        result = Tensor._from_node(out, fn)
        if trace is not None:
            fn._trace_inputs, fn._trace_params, fn._trace_module = inputs, params, trace.scope[-1]
            result.requires_grad = record
        return result


def _release(node: Function) -> None:
    """Drop everything a consumed node holds (saved arrays, edges) so memory is freed; keep the
    sequence number so that a later backward reaching it can report the freed graph."""
    seq = node._seq
    node.__dict__.clear()
    node._seq = seq
    node._edges = None


def run_backward(root: Tensor, grad: Array, retain_graph: bool) -> None:
    """Propagate ``grad`` (the gradient of ``root``, same shape and dtype) through the tape.

    Nodes are processed by decreasing sequence number from a heap; a node's incoming gradients are
    summed in a dict before it runs (fan-out). Leaves that require grad receive the sum of their
    gradients in ``.grad`` (added to an existing ``.grad``). Consumed nodes are released unless
    ``retain_graph``. For float16/bfloat16 tensors the sums run in float32 and each node receives
    its gradient rounded once to its output's dtype.
    """
    node = root.grad_fn
    if node is None:
        _accumulate_leaf(root, grad)
        return
    pending: dict[Function, tuple[Array, Any]] = {node: (grad, grad.dtype)}  # (sum, dtype)
    heap: list[tuple[int, Function]] = [(-node._seq, node)]
    leaf_grads: dict[Tensor, Array] = {}
    while heap:
        _, node = heapq.heappop(heap)
        total, dtype = pending.pop(node)
        grad_out = narrow(total, dtype)
        edges = node._edges
        if edges is None:
            raise RuntimeError(
                f"backward through a freed graph ({type(node).__name__} was already consumed by an "
                "earlier backward); call backward(retain_graph=True) the first time to keep it"
            )
        _check_versions(node)
        grads = node.backward(grad_out)
        if not isinstance(grads, (tuple, list)):
            grads = (grads,)
        if len(grads) != len(edges):
            raise RuntimeError(
                f"{type(node).__name__}.backward returned {len(grads)} gradients for {len(edges)} inputs"
            )
        for i, (edge, g, meta) in enumerate(zip(edges, grads, node._input_meta, strict=True)):
            if edge is None or g is None:
                continue
            assert meta is not None  # apply records a (shape, dtype) with every edge
            g = _check_grad(node, i, g, meta)
            if isinstance(edge, Tensor):
                prev = leaf_grads.get(edge)
                leaf_grads[edge] = g if prev is None else widen(prev) + widen(g)
            elif edge in pending:
                pending[edge] = (widen(pending[edge][0]) + widen(g), meta[1])
            else:
                pending[edge] = (g, meta[1])
                heapq.heappush(heap, (-edge._seq, edge))
        if not retain_graph:
            _release(node)
    for leaf, g in leaf_grads.items():
        _accumulate_leaf(leaf, g)


def _check_versions(node: Function) -> None:
    """Refuse to run ``node.backward`` when an input whose data it saved was modified in place since
    the forward (its backward would silently use the new values)."""
    for tensor, version in node._saved_versions:
        if tensor._version != version:
            raise RuntimeError(
                f"{type(node).__name__}.backward needs the values of an input of shape "
                f"{tuple(tensor.shape)} as they were in the forward, but its data was modified in "
                f"place since (version {version} then, {tensor._version} now); recompute the "
                "forward after changing it, or change a copy"
            )


def _check_grad(node: Function, i: int, g: Any, meta: tuple[tuple[int, ...], Any]) -> Array:
    """Input ``i``'s gradient from ``node.backward``, checked for shape and cast to the input dtype
    (a 16-bit input's gradient may stay float32 until it is summed and handed on)."""
    shape, dtype = meta
    if getattr(g, "shape", None) != shape:
        raise RuntimeError(
            f"{type(node).__name__}.backward: gradient {i} must be an array of shape {shape}, "
            f"got {type(g).__name__} of shape {getattr(g, 'shape', None)}"
        )
    if g.dtype is dtype:
        return g
    return g if g.dtype in (dtype, compute_dtype(dtype)) else g.astype(dtype)


def _accumulate_leaf(leaf: Tensor, g: Array) -> None:
    """Add ``g`` into ``leaf.grad``, which keeps its dtype (16-bit sums run in float32); a new
    ``.grad`` is a fresh C-contiguous array of the leaf's dtype owned by the leaf."""
    xp = array_module(leaf.data)
    if leaf.grad is None:
        data = leaf.data
        if type(g) is np.ndarray and g.dtype is data.dtype:
            leaf.grad = g.copy()  # C order, the common case without array()'s argument handling
        else:
            leaf.grad = xp.array(g, dtype=data.dtype, order="C", copy=True)
    else:
        leaf.grad = xp.asarray(narrow(widen(leaf.grad) + widen(g), leaf.grad.dtype))
