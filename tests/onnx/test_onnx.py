"""ONNX export against a real runtime: each model is exported, checked with
``onnx.checker.check_model(full_check=True)`` (inside ``export``) and run in ONNX Runtime's CPU
provider, at the example's batch size and others (dynamic batch).

Tolerance: the reference is cudcn's eval forward of a float64 copy of the model. A float32 sum of n
terms is within n * eps(float32) of the exact sum relative to its magnitude (Higham's gamma_n), and
every accumulating layer on the way adds its own: the allowed error is ``sum_l n_l`` * eps(float32) *
max|reference| (``terms`` below lists n_l per layer; a bilinear sample adds 4 terms). Both cudcn's own
float32 forward and ONNX Runtime's must pass it. (ONNX Runtime's CPU provider has no float64 Conv, so
float32 is what it runs.)
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cudcn import Tensor, nn
from cudcn.demo import models
from cudcn.functional import batch_norm, deform_psroi_pool, log_softmax, roi_align
from cudcn.testing import assert_allclose_to_reference

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install 'cudcn[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (cudcn[onnx])")
import cudcn.onnx  # noqa: E402 - after the skips

ROOT = Path(__file__).resolve().parents[2]
SEED = 20261201


def randomise(net: nn.Module, rng: np.random.Generator, offset_scale: float = 0.3) -> nn.Module:
    """Random weights (offset convolutions too, so offsets are far from zero) and BatchNorm
    statistics, so that no layer is an identity."""
    for name, p in net.named_parameters():
        scale = offset_scale if "offset" in name else 0.5
        p.data[...] = rng.standard_normal(p.shape) * scale
    for name, b in net.named_buffers():
        if name.endswith("running_mean"):
            b[...] = rng.standard_normal(b.shape) * 0.1
        elif name.endswith("running_var"):
            b[...] = rng.uniform(0.5, 2.0, b.shape)
    return net


def session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def check_against_runtime(net, inputs, terms, names=("input",)) -> None:
    """ONNX Runtime's and cudcn's float32 outputs both within the derived tolerance of cudcn's
    float64 eval forward."""
    net64 = copy.deepcopy(net).to(np.float64).eval()
    ref = net64(*(a.astype(np.float64) for a in inputs)).data
    sess = session(cudcn.onnx.export(net, tuple(inputs), None, input_names=list(names)))
    got = sess.run(None, dict(zip(names, inputs, strict=True)))[0]
    factor = float(sum(terms))
    assert_allclose_to_reference(got, ref, np.float32, factor=factor, name="onnxruntime")
    assert_allclose_to_reference(net(*inputs).data, ref, np.float32, factor=factor, name="cudcn")


def digit_terms(deform: bool) -> list[int]:
    conv = [9, 8 * 9] + ([32 * 9, 32 * 9 * 4] * 2 if deform else [32 * 9] * 2)
    return [*conv, 49, 32]  # convolutions, global average pool over 7 x 7, linear


@pytest.mark.parametrize("kind", ["plain", "deform"])
def test_demo_nets_match_onnxruntime_at_several_batch_sizes(kind):
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    net = randomise(models.digit_net(kind, np.random.default_rng(SEED)), rng).eval()
    model = cudcn.onnx.export(net, rng.uniform(0, 1, (2, 1, 28, 28)).astype(np.float32), None)
    ops = {n.op_type for n in model.graph.node}
    assert ("DeformConv" in ops) == (kind == "deform") and {"Conv", "BatchNormalization"} <= ops
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 3):
        check_against_runtime(
            net, [rng.uniform(0, 1, (batch, 1, 28, 28)).astype(np.float32)], digit_terms(kind == "deform")
        )


class ModulatedNet(nn.Module):
    """DCNv2 pack with offset groups 2, weight groups 2, stride 2, dilation 2, then the rest of a
    small classifier (average pool, flatten, linear, log_softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.dcn = nn.ModulatedDeformConv2dPack(
            4, 6, 3, stride=2, padding=2, dilation=2, groups=2, deform_groups=2
        )
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.AvgPool2d(2, padding=1, count_include_pad=False)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        y = self.pool(self.bn(self.dcn(x)).relu())
        return log_softmax(self.fc(y.flatten(1)), axis=1)


def test_modulated_pack_with_groups_stride_dilation():
    rng = np.random.default_rng(SEED + 1)
    net = randomise(ModulatedNet(), rng, offset_scale=0.2).eval()
    model = cudcn.onnx.export(net, rng.standard_normal((2, 4, 11, 13)).astype(np.float32), None)
    (dcn,) = [n for n in model.graph.node if n.op_type == "DeformConv"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in dcn.attribute}
    assert attrs["group"] == 2 and attrs["offset_group"] == 2 and list(attrs["strides"]) == [2, 2]
    assert list(attrs["dilations"]) == [2, 2] and len(dcn.input) == 5  # with bias and mask
    assert {"Slice", "Sigmoid", "Reshape", "Gemm", "LogSoftmax"} <= {n.op_type for n in model.graph.node}
    terms = [4 * 9, 2 * 9 * 4, 4, 6 * 4 * 4, 5]  # offset conv, DCN, pool, linear, log_softmax
    for batch in (2, 3):
        check_against_runtime(net, [rng.standard_normal((batch, 4, 11, 13)).astype(np.float32)], terms)


class Shapes(nn.Module):
    """Reshapes that keep or change axis 0, basic indexing (an int, a negative step, negative
    bounds), transpose, reductions, elementwise math, a matmul with a constant; two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = np.random.default_rng(SEED).standard_normal((3, 2)).astype(np.float32)

    def forward(self, x):  # x (B, 3, 4, 5)
        rows = x.reshape(-1, 5)  # (B * 12, 5): axis 0 changes, exported as -1
        y = (rows * 2.0 - 1).relu().reshape(x.shape[0], -1)  # (B, 60): -1 again
        z = x[:, 1, ::-1, -3:]  # (B, 4, 3)
        a = y.max(axis=1, keepdims=True) + z.mean(axis=(1, 2)).reshape(-1, 1)  # (B, 1): 0
        b = (x.transpose(0, 2, 3, 1) @ self.mix).tanh().sum(axis=(1, 2))  # (B, 2)
        c = (b**2 + 1).log() - (-b).exp() * 0.5 / (1 + a * a)
        return a + c, z


def test_shapes_indexing_and_math_at_other_batch_sizes():
    rng = np.random.default_rng(SEED + 5)
    net = Shapes()
    model = cudcn.onnx.export(net, rng.standard_normal((2, 3, 4, 5)).astype(np.float32), None)
    shapes = [
        onnx.numpy_helper.to_array(i).tolist()
        for i in model.graph.initializer
        if any(n.op_type == "Reshape" and n.input[1] == i.name for n in model.graph.node)
    ]
    assert shapes == [[-1, 5], [-1, 60], [0, 1]]
    sess = session(model)
    for batch in (1, 4):
        x = rng.standard_normal((batch, 3, 4, 5)).astype(np.float32)
        refs = [t.data for t in net(Tensor(x.astype(np.float64)))]
        for got, ref in zip(sess.run(None, {"input": x}), refs, strict=True):
            # sums of 3 (matmul), 12 and 20 terms, then elementwise math on them
            assert_allclose_to_reference(got, ref, np.float32, factor=3 + 12 + 20 + 8)


class RoIHead(nn.Module):
    """A convolution, then torchvision-style roi_align (aligned=False, adaptive sampling) and an
    offset-free DeformRoIPool (half-pixel, 2 x 2 samples), summed, flattened, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.DeformRoIPool((2, 3), spatial_scale=0.5, sampling_ratio=2)
        self.fc = nn.Linear(4 * 2 * 3, 2)

    def forward(self, features, rois):
        f = self.conv(features)
        pooled = roi_align(f, rois, (2, 3), 0.5, -1, aligned=False) + self.pool(f, rois)
        return self.fc(pooled.reshape(pooled.shape[0], -1))


def make_rois(rng: np.random.Generator, count: int, batch: int) -> np.ndarray:
    """Random boxes in a 2x feature map's image plus the corner cases: tiny (forced to 1 pixel by
    aligned=False), empty, inverted, and sticking out of the image."""
    x1, y1 = rng.uniform(-2, 16, count), rng.uniform(-2, 12, count)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0, 8, count), y1 + rng.uniform(0, 8, count)], 1)
    corner = np.array([[3, 3, 3.4, 3.2], [5, 5, 5, 5], [6, 6, 2, 3], [-6, -4, 30, 25]])
    rows = np.concatenate([corner, boxes])
    index = rng.integers(0, batch, len(rows)).astype(float)
    return np.concatenate([index[:, None], rows], 1).astype(np.float32)


def test_roi_head_matches_onnxruntime_with_other_roi_counts():
    rng = np.random.default_rng(SEED + 2)
    net = randomise(RoIHead(), rng).eval()
    features = rng.standard_normal((2, 3, 8, 10)).astype(np.float32)
    names = ("features", "rois")
    model = cudcn.onnx.export(net, (features, make_rois(rng, 2, 2)), None, input_names=list(names))
    modes = {
        onnx.helper.get_attribute_value(a).decode()
        for n in model.graph.node
        if n.op_type == "RoiAlign"
        for a in n.attribute
        if a.name == "coordinate_transformation_mode"
    }
    assert modes == {"half_pixel", "output_half_pixel"}
    assert model.graph.input[1].type.tensor_type.shape.dim[0].dim_param == "rois_axis0"
    terms = [3 * 9, 8 * 4 * 2, 4 * 2 * 3]  # conv, up to 8 x 8 adaptive samples of 4 terms, linear
    for count, batch in ((3, 2), (9, 3)):
        features = rng.standard_normal((batch, 3, 8, 10)).astype(np.float32)
        check_against_runtime(net, [features, make_rois(rng, count, batch)], terms, names)


def test_onnxruntime_forces_tiny_rois_to_one_pixel_like_torchvision():
    """torchvision's aligned=False rule (RoI sizes at least 1) is what ONNX Runtime's
    output_half_pixel mode does; half_pixel (aligned=True) does not force."""
    rng = np.random.default_rng(SEED + 3)
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    rois = np.array([[0, 2.0, 2.0, 2.3, 2.1], [0, 1.0, 3.0, 1.0, 3.6]], np.float32)
    for aligned in (False, True):

        def head(f, r, aligned=aligned):
            return roi_align(f, r, 2, 1.0, 0, aligned=aligned)

        got = session(cudcn.onnx.export(head, (x, rois), None)).run(None, {"input_0": x, "input_1": rois})[0]
        np.testing.assert_allclose(got, roi_align(x, rois, 2, 1.0, 0, aligned), atol=1e-6)
    # the rule matters for these RoIs: unforced sizes (aligned=True on RoIs shifted by half a pixel)
    unforced = roi_align(x, rois + np.array([0, 0.5, 0.5, 0.5, 0.5], np.float32), 2, 1.0, 0, aligned=True)
    assert np.abs(unforced - roi_align(x, rois, 2, 1.0, 0, aligned=False)).max() > 1e-2


def test_file_round_trip_and_fixed_batch(tmp_path):
    rng = np.random.default_rng(SEED + 4)
    net = randomise(nn.Sequential(nn.DeformConv2dPack(2, 3, 3, padding=1), nn.ReLU()), rng)
    x = rng.standard_normal((2, 2, 5, 6)).astype(np.float32)
    path = tmp_path / "net.onnx"
    returned = cudcn.onnx.export(net, x, path, dynamic_batch=False, output_names=["y"])
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.SerializeToString() == returned.SerializeToString()
    assert sorted(i.name for i in loaded.graph.initializer) == sorted(net.state_dict())
    buffer = io.BytesIO()
    cudcn.onnx.export(net, x, buffer, dynamic_batch=False, output_names=["y"])
    assert buffer.getvalue() == path.read_bytes()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(["y"], {"input": x})[0], net(x).data, atol=1e-5)
    assert loaded.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        sess.run(None, {"input": x[:1]})


class Pooled(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.roi_head = nn.Sequential(head)

    def forward(self, features, rois):
        return self.roi_head[0](features, rois)


class PSHead(nn.Module):
    def forward(self, features, rois):
        return deform_psroi_pool(
            features, rois, None, spatial_scale=1.0, output_dim=2, group_size=2, pooled_size=2
        )


@pytest.mark.parametrize(
    "head, op, where",
    [
        (
            nn.DeformRoIPoolPack(2, 8, deform_fc_channels=4),
            "deform_roi_pool with offsets",
            "module 'roi_head.0' (DeformRoIPoolPack)",
        ),
        (PSHead(), "deform_psroi_pool", "module 'roi_head.0' (PSHead)"),
    ],
)
def test_ops_without_standard_onnx_raise_naming_op_and_module(head, op, where):
    features = np.ones((1, 8, 6, 6), np.float32)
    rois = np.array([[0, 1, 1, 4, 4]], np.float32)
    with pytest.raises(cudcn.onnx.ExportError) as info:
        cudcn.onnx.export(Pooled(head), (features, rois), None)
    assert f"cannot export {op} in {where}" in str(info.value)


def test_bad_exports_are_clear_errors():
    x = np.ones((1, 2, 4, 4), np.float32)
    with pytest.raises(cudcn.onnx.ExportError, match="output 0 of the model was not produced"):
        cudcn.onnx.export(lambda t: t, x, None)
    with pytest.raises(cudcn.onnx.ExportError, match="output 0 of the model is a ndarray"):
        cudcn.onnx.export(lambda t: t.data * 2, x, None)
    with pytest.raises(ValueError, match="opset must be an int in \\[19"):
        cudcn.onnx.export(nn.ReLU(), x, None, opset=17)
    with pytest.raises(TypeError, match="example_inputs\\[0\\] must be a NumPy or CuPy array"):
        cudcn.onnx.export(nn.ReLU(), [[1.0]], None)
    with pytest.raises(cudcn.onnx.ExportError, match="cannot export batch_norm with batch stat"):
        cudcn.onnx.export(lambda t: batch_norm(t, None, None, training=True), x, None)


def test_export_restores_modes_and_keeps_float64():
    net = nn.Sequential(nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2)).to(np.float64)
    net[1].eval()
    model = cudcn.onnx.export(net, np.ones((1, 2, 5, 5)), None)
    assert net.training and not net[1].training and net[0].training
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE


def test_import_cudcn_does_not_import_onnx():
    code = "import sys, cudcn, cudcn.onnx; print(sorted({'onnx', 'onnxruntime'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_onnx_export_names_the_extra_and_the_demo_skips_its_file(tmp_path):
    code = f"""
import sys
sys.modules["onnx"] = None  # as if onnx were not installed
import numpy as np
import cudcn.onnx
from cudcn.demo import models
try:
    cudcn.onnx.export(cudcn.nn.ReLU(), np.ones((1, 2), np.float32), None)
except ImportError as exc:
    print("export:", exc)
net = models.digit_net("deform", np.random.default_rng(0))
print("demo:", models.save_trained(net, __import__("pathlib").Path({str(tmp_path)!r})))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "export: cudcn.onnx.export needs the onnx package: pip install 'cudcn[onnx]'" in result.stdout
    assert "skipped deformable_cnn.onnx: cudcn.onnx.export needs the onnx package" in result.stdout
    assert (tmp_path / "deformable_cnn.npz").exists() and not (tmp_path / "deformable_cnn.onnx").exists()


def half_net(dtype, rng: np.random.Generator) -> nn.Module:
    """A small deformable net (offset conv, deformable conv, BatchNorm, ReLU, max pool, conv) in
    ``dtype``; its BatchNorm statistics stay float32."""
    net = nn.Sequential(
        nn.DeformConv2dPack(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 3, padding=1),
    )
    return randomise(net, rng).eval().to(dtype)


HALF_TERMS = 27 + 27 * 4 + 1 + 72  # offset conv; deformable conv (4 bilinear taps); BatchNorm; conv


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_models_export_and_run(dtype):
    """A float16 model exports at the default opset and runs in ONNX Runtime; a bfloat16 one needs
    opset 22 (a clear ExportError below it) and runs in ONNX's reference evaluator (ONNX Runtime's
    CPU provider has no bfloat16 Conv). Both stay within a bound for arithmetic done entirely in the
    dtype, ``terms · eps · max|ref|``, of the float64 net on the same rounded weights and input.
    That worst-case bound is loose (measured 0.004 of 2.3 in float16, 0.22 of 18 in bfloat16); the
    graph's semantics are pinned by the float32 tests, through the same dtype-agnostic translation."""
    from onnx.reference import ReferenceEvaluator

    dt = np.dtype(dtype) if dtype == "float16" else cudcn.dtypes.bfloat16
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    net = half_net(dt, rng)
    x = rng.standard_normal((2, 3, 8, 8)).astype(dt)
    ref = copy.deepcopy(net).to(np.float64)(x.astype(np.float64)).data
    allowed = HALF_TERMS * cudcn.dtypes.eps(dt) * np.abs(ref).max()
    if dtype == "float16":
        model = cudcn.onnx.export(net, x, None)
        got = session(model).run(None, {"input": x})[0]
    else:
        needs_22 = "bfloat16 from opset 22: export with opset=22"
        with pytest.raises(cudcn.onnx.ExportError, match=needs_22):
            cudcn.onnx.export(net, x, None)
        model = cudcn.onnx.export(net, x, None, opset=22)
        got = ReferenceEvaluator(model).run(None, {"input": x})[0]
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt))
    assert model.graph.input[0].type.tensor_type.elem_type == elem and got.dtype == dt
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    exported, weight = weights["0.weight"], net[0].weight.data
    assert exported.dtype == dt and exported.tobytes() == weight.tobytes()  # bit for bit
    assert weights["1.running_var"].dtype == np.float32  # BatchNorm statistics stay float32
    worst = np.abs(got.astype(np.float64) - ref).max()
    print(f"{dtype}: worst error {worst:.3g}, allowed {allowed:.3g}")
    assert worst <= allowed
    assert np.abs(net(x).data.astype(np.float64) - ref).max() <= allowed  # cudcn itself
