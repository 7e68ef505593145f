"""The export: run the model under a trace, walk the recorded nodes, assemble and check the graph.

:class:`GraphBuilder` holds the graph under construction: the ONNX name of every Tensor (by identity),
the initializers (parameters and buffers under their ``state_dict`` names, other arrays as
``const_<k>``), the nodes, and which values depend on the model's inputs (their axis 0 is the
symbolic batch under ``dynamic_batch``). The per-op translations are in :mod:`cudcn.onnx.translate`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

import cudcn
from cudcn.arrays import is_cupy_array
from cudcn.autograd import Tensor, no_grad
from cudcn.autograd.function import Function, Trace
from cudcn.onnx import ExportError
from cudcn.testing import to_numpy

FIRST_OPSET = 19  # DeformConv
BFLOAT16_OPSET = 22  # Conv, DeformConv, MaxPool, AveragePool, RoiAlign take bfloat16 from here


def describe(node: Function) -> str:
    """Where a recorded node was called: ``module 'layer1.conv' (Conv2d)`` or ``the model (Net)``."""
    path, kind = node._trace_module
    return f"module '{path}' ({kind})" if path else f"the model ({kind or 'a function'})"


class GraphBuilder:
    """The ONNX graph under construction (see the module docstring)."""

    def __init__(self, state_names: dict[int, str], dynamic_batch: bool) -> None:
        self.state_names = state_names
        self.dynamic_batch = dynamic_batch
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: dict[int, str] = {}  # id(Tensor) -> value name
        self.batched: set[str] = set()
        self._sources: dict[int, tuple[str, np.dtype]] = {}  # id(array or leaf) -> initializer
        self._casts: dict[tuple[str, str], str] = {}
        self._count = 0
        self.scope = "model"

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.scope}/{hint}_{self._count}"

    def node(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        """Append one node with a single output; returns the output's name."""
        out = self.fresh(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        if any(name in self.batched for name in inputs):
            self.batched.add(out)
        return out

    def const(self, array: Any, name: str | None = None) -> str:
        """A new initializer holding ``array`` (a host copy)."""
        name = name or self.fresh("const")
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def ints(self, values: Any) -> str:
        """An int64 1-D constant."""
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1))

    def source(self, x: Any) -> tuple[str, np.dtype]:
        """The value name and dtype of an operand: a traced Tensor, a leaf Tensor (parameter or
        constant) or an array / Python scalar (a constant; a buffer under its state name)."""
        if isinstance(x, Tensor):
            if id(x) in self.names:
                return self.names[id(x)], np.dtype(x.dtype)
            data, key = x.data, id(x)
        else:
            data, key = x, id(x)
        if key not in self._sources:
            array = to_numpy(data)  # a host copy of a CuPy array; scalars through numpy.asarray
            self._sources[key] = (self.const(array, self.state_names.get(key)), array.dtype)
        return self._sources[key]

    def value(self, x: Any, dtype: Any = None) -> str:
        """The name of operand ``x`` as ``dtype`` (a Cast node, or a cast constant, when it differs;
        as it is when ``dtype`` is None); ``""`` for None (an absent optional input)."""
        if x is None:
            return ""
        if dtype is not None and not isinstance(x, (Tensor, np.ndarray)) and not is_cupy_array(x):
            return self.const(np.asarray(x, dtype=dtype))  # a Python scalar takes the op's dtype
        name, have = self.source(x)
        if dtype is None or np.dtype(dtype) == have:
            return name
        key = (name, np.dtype(dtype).str)
        if key not in self._casts:
            to = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
            self._casts[key] = self.node("Cast", [name], to=to)
        return self._casts[key]

    def is_batched(self, x: Any) -> bool:
        """True when ``x`` is computed from the model's inputs (axis 0 is the batch)."""
        return isinstance(x, Tensor) and self.names.get(id(x)) in self.batched


def _example_arrays(example_inputs: Any) -> list[Any]:
    items = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    arrays = []
    for i, a in enumerate(items):
        a = a.data if isinstance(a, Tensor) else a
        if not (isinstance(a, np.ndarray) or is_cupy_array(a)):
            raise TypeError(f"example_inputs[{i}] must be a NumPy or CuPy array, got {type(a).__name__}")
        arrays.append(a)
    if not arrays:
        raise ValueError("example_inputs must hold at least one array, got none")
    return arrays


def _names(given: list[str] | None, count: int, stem: str, what: str) -> list[str]:
    if given is None:
        return [stem] if count == 1 else [f"{stem}_{i}" for i in range(count)]
    names = list(given)
    if len(names) != count or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{what} must be {count} non-empty strings, got {given!r}")
    return names


def _run_traced(model: Any, tensors: list[Tensor], names: dict[int, str]) -> tuple[Trace, Any]:
    """``model(*tensors)`` in eval mode under a Trace; the modules' previous modes are restored."""
    modes = [(m, m.training) for m in model.modules()] if hasattr(model, "modules") else []
    if hasattr(model, "eval"):
        model.eval()
    try:
        with no_grad(), Trace(names) as trace:
            outputs = model(*tensors)
    finally:
        for module, training in modes:
            object.__setattr__(module, "training", training)
    return trace, outputs


def _recorded(outputs: Any, trace: Trace) -> list[tuple[Function, Tensor]]:
    """The recorded nodes that the outputs depend on, with their output Tensors, in tape order."""
    produced: dict[Function, Tensor] = {}
    stack = list(outputs)
    while stack:
        t = stack.pop()
        node = t.grad_fn
        if node is None or node in produced or not trace.recorded(node):
            continue
        produced[node] = t
        stack.extend(x for x in node._trace_inputs if isinstance(x, Tensor))
    return sorted(produced.items(), key=lambda item: item[0]._seq)


NUDGE = 1.0 + 2.0**-7  # the second trace's inputs: the example's floats times this


def _check_constants(
    model: Any,
    inputs: list[Tensor],
    module_names: dict[int, str],
    nodes: list[tuple[Function, Tensor]],
    state: dict[int, str],
) -> None:
    """Refuse a graph that would bake in a value computed from the example input outside the tape
    (``x * Tensor(x.data.mean())``, ``x * float(x.data.max())``): trace the model again on the
    example's floats times :data:`NUDGE` and compare every constant operand of every node; one that
    changed was computed from the input. Skipped when the nudged input is not one the model accepts
    (integer-valued inputs such as RoI batch indices)."""
    arrays = [t.data for t in inputs]
    nudged = [a * a.dtype.type(NUDGE) if a.dtype.kind in "fV" else a for a in arrays]
    variables = {id(t) for t in inputs}
    try:
        trace, outputs = _run_traced(model, [Tensor(a) for a in nudged], module_names)
        again = _recorded(_check_outputs(outputs, trace), trace)
    except (ValueError, TypeError):
        return
    if [type(node) for node, _ in again] != [type(node) for node, _ in nodes]:
        raise ExportError(
            "the model records different ops for another input of the same shape (control flow that "
            "depends on the input's values): one ONNX graph cannot describe it"
        )
    for (node, _), (other, _) in zip(nodes, again, strict=True):
        for i, (x, y) in enumerate(zip(node._trace_inputs, other._trace_inputs, strict=True)):
            constant = not isinstance(x, Tensor) or (
                x.grad_fn is None and id(x) not in state and id(x) not in variables
            )
            if constant and not _same_value(x, y):
                raise ExportError(
                    f"cannot export {type(node).__name__} in {describe(node)}: its operand {i} is a "
                    "value computed from the model's input outside the recorded ops (it changed when "
                    "the input did), which ONNX would bake in as the example's constant; compute it "
                    "with cudcn ops on the Tensor instead"
                )


def _same_value(x: Any, y: Any) -> bool:
    """Whether two constant operands (arrays, leaf Tensors, scalars, None) hold the same values."""
    if x is None or y is None:
        return x is y
    a, b = (to_numpy(v.data if isinstance(v, Tensor) else v) for v in (x, y))
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def _check_outputs(outputs: Any, trace: Trace) -> list[Tensor]:
    items = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
    for i, out in enumerate(items):
        if not isinstance(out, Tensor):
            raise ExportError(
                f"output {i} of the model is a {type(out).__name__}, not a Tensor computed by cudcn "
                "ops from the inputs: only recorded ops can be exported"
            )
        if out.grad_fn is None or not trace.recorded(out.grad_fn):
            raise ExportError(
                f"output {i} of the model was not produced by ops recorded during export (it is an "
                "input, a parameter or a tensor computed before export): nothing to export for it"
            )
    return items


def _value_info(name: str, array: Any, symbolic: str | None) -> onnx.ValueInfoProto:
    shape: list[Any] = list(array.shape)
    if symbolic is not None and shape:
        shape[0] = symbolic
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(array.dtype))
    return helper.make_tensor_value_info(name, elem, shape)


def export_model(
    model: Any,
    example_inputs: Any,
    opset: int,
    input_names: list[str] | None,
    output_names: list[str] | None,
    dynamic_batch: bool,
) -> onnx.ModelProto:
    """The checked ONNX model of ``model`` (see :func:`cudcn.onnx.export`)."""
    from cudcn.onnx.translate import translate

    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not FIRST_OPSET <= opset <= latest:
        raise ValueError(
            f"opset must be an int in [{FIRST_OPSET}, {latest}] (DeformConv needs {FIRST_OPSET}; "
            f"the installed onnx knows up to {latest}), got {opset!r}"
        )
    arrays = _example_arrays(example_inputs)
    in_names = _names(input_names, len(arrays), "input", "input_names")
    tensors = [Tensor(a) for a in arrays]
    modules = dict(model.named_modules()) if hasattr(model, "named_modules") else {}
    state = {}
    if hasattr(model, "named_parameters"):
        state.update({id(p): n for n, p in model.named_parameters()})
        state.update({id(b): n for n, b in model.named_buffers()})
    module_names = {id(m): n for n, m in modules.items()}
    trace, outputs = _run_traced(model, tensors, module_names)
    outs = _check_outputs(outputs, trace)
    _check_constants(model, tensors, module_names, _recorded(outs, trace), state)
    out_names = _names(output_names, len(outs), "output", "output_names")
    if len(set(in_names + out_names)) != len(in_names) + len(out_names):
        raise ValueError(f"input and output names must be distinct, got {in_names + out_names}")
    b = GraphBuilder(state, dynamic_batch)
    for t, name in zip(tensors, in_names, strict=True):
        b.names[id(t)] = name
        b.batched.add(name)
    for node, out in _recorded(outs, trace):
        b.scope = node._trace_module[0] or "model"
        b.names[id(out)] = translate(b, node, out)
    b.scope = "model"
    for t, name in zip(outs, out_names, strict=True):
        b.nodes.append(helper.make_node("Identity", [b.names[id(t)]], [name], name=name))

    def symbol(i: int, name: str, batched: bool) -> str | None:
        if not (dynamic_batch and batched):
            return None
        return "batch" if i == 0 else f"{name}_axis0"

    inputs = [
        _value_info(n, a, symbol(i, n, True)) for i, (n, a) in enumerate(zip(in_names, arrays, strict=True))
    ]
    outputs = [
        _value_info(n, t.data, symbol(1, n, b.names[id(t)] in b.batched))
        for n, t in zip(out_names, outs, strict=True)
    ]
    graph = helper.make_graph(b.nodes, type(model).__name__, inputs, outputs, b.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="cudcn",
        producer_version=cudcn.__version__,
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    _check(proto, opset)
    return proto


def _check(proto: onnx.ModelProto, opset: int) -> None:
    """``onnx.checker.check_model(full_check=True)``; its failure as an ExportError that says what to
    do when it is the common one: bfloat16 below the opset whose operators take bfloat16."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        bfloat16 = onnx.TensorProto.BFLOAT16
        types = [v.type.tensor_type.elem_type for v in proto.graph.input]
        types += [t.data_type for t in proto.graph.initializer]
        hint = ""
        if bfloat16 in types and opset < BFLOAT16_OPSET:
            hint = (
                f" ONNX's Conv, DeformConv, MaxPool, AveragePool and RoiAlign take bfloat16 from "
                f"opset {BFLOAT16_OPSET}: export with opset={BFLOAT16_OPSET}, or export a float32 "
                f"copy (copy.deepcopy(model).float())."
            )
        raise ExportError(f"the exported graph fails ONNX's checker ({exc}).{hint}") from exc
