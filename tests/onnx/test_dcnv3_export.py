"""dcnv3 / dcnv4 export: the core's gather-based subgraph on pixel-unit locations (no GridSample),
run in ONNX Runtime at batch sizes other than the traced one, against the float64 reference; the
DCNv3 and DCNv4 layers (LayerNormalization, Erf-based GELU, softmax, the projections) against cudcn.

Tolerance: the op's derived per-element scale (tests/ops/dcnv3/cases.py: the sum of |terms| plus
the position rounding) with a factor of the products one output sums, 4 corners times P points.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cudcn import nn, reference
from cudcn.functional import dcnv3, dcnv4
from cudcn.ops import dcnv3_to_dcnv4
from cudcn.testing import assert_allclose_to_reference
from tests.ops.dcnv3.cases import Case, make_inputs, scales

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install 'cudcn[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (cudcn[onnx])")
import cudcn.onnx  # noqa: E402 - after the skips

SEED = 20261225
CASE = Case(
    "export", batch=2, height=5, width=6, stride=(1, 2), dilation=(2, 1), padding=(2, 1), offset_scale=0.7
)
CENTRE = Case("export_rc", batch=2, remove_center=True, kernel=(3, 5), padding=(1, 2), group=3, depth=2)


class Op(nn.Module):
    """The functional op alone, its geometry held by the model."""

    def __init__(self, case: Case, packed: bool) -> None:
        super().__init__()
        self.case, self.packed = case, packed

    def forward(self, *arrays):
        return (dcnv4 if self.packed else dcnv3)(*arrays, *self.case.args())


def randomize(layer: nn.Module, rng: np.random.Generator) -> None:
    """Random weights (the layers start with zero offsets and masks): every parameter matters."""
    state = layer.state_dict()
    layer.load_state_dict({k: (rng.standard_normal(v.shape) * 0.5).astype(v.dtype) for k, v in state.items()})
    assert layer.state_dict()[next(k for k in state if "offset" in k)].any()


def run(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]


def inputs_for(case: Case, dtype, seed: int, packed: bool) -> dict[str, np.ndarray]:
    x, offset, mask = make_inputs(case, dtype, seed)
    if packed:
        return {"x": x, "om": dcnv3_to_dcnv4(offset, mask, case.kernel, case.group, case.remove_center)}
    return {"x": x, "offset": offset, "mask": mask}


@pytest.mark.parametrize("packed", [False, True], ids=["dcnv3", "dcnv4"])
@pytest.mark.parametrize("case", [CASE, CENTRE], ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=lambda d: np.dtype(d).name)
def test_matches_reference_at_other_batch_sizes(case, dtype, packed):
    example = inputs_for(case, dtype, SEED, packed)
    model = cudcn.onnx.export(Op(case, packed), tuple(example.values()), None, input_names=list(example))
    ops = {n.op_type for n in model.graph.node}
    assert "GatherND" in ops and "GridSample" not in ops
    for batch in (3, 1):
        c = dataclasses.replace(case, batch=batch)
        x, offset, mask = make_inputs(c, dtype, SEED + batch)
        feed = inputs_for(c, dtype, SEED + batch, packed)
        got = run(model, feed)
        assert got.dtype == dtype and got.shape == (batch, *c.params().output_size, x.shape[3])
        ref = reference.dcnv3_forward(x, offset, mask, c.params())
        grad = np.ones_like(ref)
        scale = scales(x, offset, mask, grad, c.params())[0]
        factor = 4 * c.params().points
        assert_allclose_to_reference(got, ref, dtype, scale=scale, factor=factor, name=f"batch {batch}")


@pytest.mark.parametrize("cfs", [False, True])
def test_dcnv3_layer(cfs):
    layer = nn.DCNv3(8, group=2, center_feature_scale=cfs, offset_scale=0.8, rng=np.random.default_rng(0))
    rng = np.random.default_rng(SEED)
    randomize(layer, rng)
    x = rng.standard_normal((2, 5, 6, 8)).astype(np.float32)
    model = cudcn.onnx.export(layer, x, None)
    ops = {n.op_type for n in model.graph.node}
    assert {"LayerNormalization", "Erf", "GatherND", "Conv"} <= ops
    x3 = rng.standard_normal((3, 5, 6, 8)).astype(np.float32)
    want = layer(x3).data
    np.testing.assert_allclose(run(model, {"input": x3}), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_dcnv4_layer():
    layer = nn.DCNv4(8, group=2, dw_kernel_size=3, rng=np.random.default_rng(1))
    rng = np.random.default_rng(SEED + 1)
    randomize(layer, rng)
    x = rng.standard_normal((2, 16, 8)).astype(np.float32)
    model = cudcn.onnx.export(layer, x, None)
    x3 = rng.standard_normal((3, 16, 8)).astype(np.float32)
    want = layer(x3).data
    np.testing.assert_allclose(run(model, {"input": x3}), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
