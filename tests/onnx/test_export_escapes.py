"""Values that escape the tape during export: a constant computed from the input outside the recorded
ops is refused by name (ONNX would bake in the example's value), control flow on the input's values
is refused, and ``astype`` exports as a Cast."""

from __future__ import annotations

import numpy as np
import pytest

import cudcn
from cudcn import nn

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install 'cudcn[onnx]')")
from cudcn.onnx import ExportError  # noqa: E402

SEED = 2026_12_06


class Scaled(nn.Module):
    """conv(x) times a value computed by ``how`` from x outside the tape (or not)."""

    def __init__(self, how) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.how = how

    def forward(self, x):
        return self.conv(x) * self.how(x)


def _example() -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal((1, 2, 5, 5)).astype(np.float32)


@pytest.mark.parametrize(
    "how",
    [lambda x: cudcn.Tensor(x.data.mean()), lambda x: float(x.data.max()), lambda x: x.data.std()],
    ids=["tensor-of-mean", "python-float", "numpy-scalar"],
)
def test_a_value_computed_from_the_input_outside_the_tape_is_refused(how) -> None:
    with pytest.raises(
        ExportError,
        match=r"cannot export Mul in the model \(Scaled\): its operand 1 is a value computed from",
    ):
        cudcn.onnx.export(Scaled(how), (_example(),), None)


@pytest.mark.parametrize(
    "how",
    [lambda x: 2.0, lambda x: cudcn.Tensor(np.full((1, 2, 1, 1), 0.5, np.float32))],
    ids=["scalar", "tensor"],
)
def test_true_constants_still_export(how) -> None:
    proto = cudcn.onnx.export(Scaled(how), (_example(),), None)
    assert [n.op_type for n in proto.graph.node].count("Mul") == 1


class Branchy(nn.Module):
    def forward(self, x):
        return x * 2.0 if float(x.data.sum()) > 0.5 else (x * 2.0).sum()


def test_control_flow_on_the_input_values_is_refused() -> None:
    x = np.full((1, 2, 2, 2), 0.0625, np.float32)  # sum 0.5: the nudged input takes the other branch
    with pytest.raises(ExportError, match=r"records different ops for another input"):
        cudcn.onnx.export(Branchy(), (x,), None)


class Widened(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x).astype(np.float64) * 3.0


def test_astype_exports_as_cast_and_runs() -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    model, x = Widened(), _example()
    proto = cudcn.onnx.export(model, (x,), None)
    assert "Cast" in [n.op_type for n in proto.graph.node]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x})
    want = model.eval()(cudcn.Tensor(x)).data
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
