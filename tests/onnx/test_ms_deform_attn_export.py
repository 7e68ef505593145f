"""ms_deform_attn's export: the gather-based subgraph (no GridSample) run in ONNX Runtime at batch
sizes other than the traced one, against the float64 reference and cudcn's own forward; the bilinear
rule's edges (x = −1, x = W − 1, just inside and outside, NaN and infinite locations, a NaN pixel the
op never reads); the builder with pixel-unit locations (what dcnv3 reuses); the layer.

Tolerance: each output sums L·P·4 products, and a float32 position ``loc·W − 0.5`` is off by up to
eps·(|x| + 1) pixels, which moves a sample by that much times the bilinear slope (at most 2·max|v|):
``factor = 4·L·P + 2·(max(H, W) + 2)`` times eps(float32) · Σ_{l,p}|w| · max|v| per element.
"""

from __future__ import annotations

import numpy as np
import pytest

from cudcn import nn, reference
from cudcn.functional import ms_deform_attn
from cudcn.ops.ms_deform_attn import MSDeformAttnParams
from cudcn.testing import assert_allclose_to_reference

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install 'cudcn[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (cudcn[onnx])")
import cudcn.onnx  # noqa: E402 - after the skips
from cudcn.onnx.aggregate import deformable_aggregation  # noqa: E402
from cudcn.onnx.graph import GraphBuilder  # noqa: E402

SEED = 20261219
SHAPES = [[4, 8], [2, 2], [1, 4]]  # powers of two: loc·W − 0.5 is exact for the edge cases
STARTS = [0, 32, 36]
S, M, D, Q, P = 40, 2, 3, 6, 2
PARAMS = MSDeformAttnParams(tuple(map(tuple, SHAPES)), tuple(STARTS))


class Attend(nn.Module):
    """The functional op alone, its levels held by the model."""

    def forward(self, value, locations, weights):
        return ms_deform_attn(value, SHAPES, STARTS, locations, weights)


def session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def make_inputs(rng, n, dtype=np.float32):
    value = rng.standard_normal((n, S, M, D))
    locations = rng.uniform(-0.3, 1.3, (n, Q, M, len(SHAPES), P, 2))
    weights = rng.standard_normal((n, Q, M, len(SHAPES), P))
    return value.astype(dtype), locations.astype(dtype), weights.astype(dtype)


def plant_edges(locations: np.ndarray) -> None:
    """Level 0 (4 x 8) points of batch 0 on the edges of the bilinear rule, in place: pixel x = −1,
    a hair below −1, x = W − 1, a hair below W, x = W, y = −1 and y = H − 1 exactly, NaN, inf."""
    h, w = SHAPES[0]
    xs = [-1.0, -1.0 - 2**-10, w - 1.0, w - 2**-10, float(w), 2.0, 3.0, np.nan, np.inf]
    ys = [1.5, 1.0, 2.0, 0.25, 1.0, -1.0, h - 1.0, 1.0, 1.0]
    edge = locations[0, :, :, 0].reshape(-1, 2)  # (Q·M·P, 2) view
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        edge[k] = ((x + 0.5) / w, (y + 0.5) / h)


def check(got, value, locations, weights, dtype, name):
    """``got`` (N, Q, M·D) within the derived tolerance of the reference; NaN where it is NaN."""
    ref = reference.ms_deform_attn_forward(value, locations, weights, PARAMS).reshape(got.shape)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg=f"{name}: NaN positions")
    abs_w = np.abs(weights.astype(np.float64)).sum(axis=(3, 4))  # (N, Q, M)
    scale = np.repeat(abs_w, D, axis=2) * np.nanmax(np.abs(value.astype(np.float64)))
    factor = 4 * len(SHAPES) * P + 2 * (max(max(s) for s in SHAPES) + 2)
    keep = ~nan
    assert_allclose_to_reference(got[keep], ref[keep], dtype, scale=scale[keep], factor=factor, name=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=lambda d: np.dtype(d).name)
def test_matches_reference_and_cudcn_at_other_batch_sizes(dtype):
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    model = cudcn.onnx.export(Attend(), make_inputs(rng, 2, dtype), None, input_names=["v", "loc", "w"])
    ops = {n.op_type for n in model.graph.node}
    assert "GatherND" in ops and "GridSample" not in ops
    assert all(o.domain in ("", "ai.onnx") for o in model.opset_import)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    sess = session(model)
    for n in (1, 3):
        value, locations, weights = make_inputs(rng, n, dtype)
        plant_edges(locations)
        value[-1, STARTS[1]] = np.nan  # level 1's pixel (0, 0): read by some points, not by others
        got = sess.run(None, {"v": value, "loc": locations, "w": weights})[0]
        assert got.dtype == dtype and got.shape == (n, Q, M * D)
        check(got, value, locations, weights, dtype, f"onnxruntime, batch {n}")
        ours = ms_deform_attn(value, SHAPES, STARTS, locations, weights)
        check(ours, value, locations, weights, dtype, f"cudcn, batch {n}")
        agree = np.isnan(ours) == np.isnan(got)
        assert agree.all()


def test_a_nan_pixel_the_op_never_reads_stays_out():
    """Every point out of range or away from pixel (0, 0): the subgraph's unused corners point at row
    0, and its Where keeps that NaN out, as the op never reads it."""
    value = np.ones((1, S, M, D), np.float32)
    value[0, 0] = np.nan
    locations = np.full((1, Q, M, len(SHAPES), P, 2), 0.75, np.float32)
    locations[0, :3, :, 0] = -5.0  # out of range on level 0
    weights = np.ones((1, Q, M, len(SHAPES), P), np.float32)
    got = session(cudcn.onnx.export(Attend(), (value, locations, weights), None)).run(
        None, {"input_0": value, "input_1": locations, "input_2": weights}
    )[0]
    want = ms_deform_attn(value, SHAPES, STARTS, locations, weights)
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("levels", [[(5, 7)], [(3, 4), (2, 5)]], ids=["one_level", "two_levels"])
def test_builder_with_pixel_locations(levels):
    """The core with ``normalized=False`` (dcnv3's pixel (x, y)), built directly, in ORT."""
    rng = np.random.default_rng(SEED + len(levels))
    starts = tuple(int(s) for s in np.cumsum([0] + [h * w for h, w in levels])[:-1])
    p = MSDeformAttnParams(tuple(levels), starts, normalized=False)
    s = sum(h * w for h, w in levels)
    value = rng.standard_normal((2, s, M, D)).astype(np.float32)
    top = max(max(lv) for lv in levels)
    locations = rng.uniform(-2, top + 1, (2, Q, M, len(levels), P, 2)).astype(np.float32)
    locations[0, 0, 0, 0] = [[-1.0, 0.0], [levels[0][1] - 1.0, levels[0][0] - 1.0]]  # exact edges
    weights = rng.standard_normal((2, Q, M, len(levels), P)).astype(np.float32)
    b = GraphBuilder({}, dynamic_batch=True)
    names = ["value", "locations", "weights"]
    b.batched.update(names)
    out = deformable_aggregation(b, *names, p.level_table(), False, (Q, M, len(levels), P, D), np.float32)
    b.nodes.append(onnx.helper.make_node("Identity", [out], ["out"]))

    def info(name, shape):
        return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["n", *shape[1:]])

    arrays = (value, locations, weights)
    graph = onnx.helper.make_graph(
        b.nodes,
        "core",
        [info(n, a.shape) for n, a in zip(names, arrays, strict=True)],
        [info("out", (0, Q, M, D))],
        b.initializers,
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)])
    onnx.checker.check_model(model, full_check=True)
    got = session(model).run(None, dict(zip(names, arrays, strict=True)))[0]
    ref = reference.ms_deform_attn_forward(value, locations, weights, p)
    scale = np.abs(weights).sum(axis=(3, 4))[..., None] * np.abs(value).max()
    factor = 4 * len(levels) * P + 2 * (top + 4)
    assert_allclose_to_reference(got, ref, np.float32, scale=np.broadcast_to(scale, ref.shape), factor=factor)


class Layer(nn.Module):
    """MultiScaleDeformableAttention over fixed levels: (query, value, reference_points) in."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiScaleDeformableAttention(8, M, len(SHAPES), P, dropout=0.1, batch_first=True)

    def forward(self, query, value, reference_points):
        return self.attn(query, value=value, reference_points=reference_points, spatial_shapes=SHAPES)


@pytest.mark.parametrize("corners", [2, 4], ids=["points", "boxes"])
def test_layer_matches_onnxruntime(corners):
    rng = np.random.default_rng(SEED + corners)
    net = Layer().eval()
    for name, p in net.named_parameters():
        p.data[...] = rng.standard_normal(p.shape) * (2.0 if "sampling" in name else 0.5)

    def inputs(n):
        query = rng.standard_normal((n, 5, 8)).astype(np.float32)
        value = rng.standard_normal((n, S, 8)).astype(np.float32)
        ref = rng.uniform(0, 1, (n, 5, len(SHAPES), corners)).astype(np.float32)
        return query, value, ref

    names = ["query", "value", "reference_points"]
    model = cudcn.onnx.export(net, inputs(2), None, input_names=names)
    sess = session(model)
    net64 = Layer().to(np.float64).eval()
    net64.load_state_dict(net.state_dict())
    for n in (1, 3):
        arrays = inputs(n)
        got = sess.run(None, dict(zip(names, arrays, strict=True)))[0]
        ref = net64(*(a.astype(np.float64) for a in arrays)).data
        # value_proj and the offset/weight projections (8 terms), the softmax over L·P, the core
        # (see the module docstring; the layer's float32 locations round as the op's do), output_proj
        terms = [8, 8, len(SHAPES) * P, 4 * len(SHAPES) * P + 2 * (max(max(s) for s in SHAPES) + 2), 8]
        for what, out in (("onnxruntime", got), ("cudcn", net(*arrays).data)):
            assert_allclose_to_reference(out, ref, np.float32, factor=float(sum(terms)), name=what)


def test_levels_from_the_input_are_refused():
    class LevelsIn(nn.Module):
        def forward(self, value, locations, weights, shapes):
            return ms_deform_attn(value, shapes, STARTS, locations, weights)

    rng = np.random.default_rng(SEED)
    arrays = (*make_inputs(rng, 1), np.array(SHAPES, np.int64))
    with pytest.raises(cudcn.onnx.ExportError, match="spatial_shapes is a model input"):
        cudcn.onnx.export(LevelsIn(), arrays, None)
