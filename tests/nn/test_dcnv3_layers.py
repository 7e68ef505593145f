"""cudcn.nn.DCNv3 / DCNv4: InternImage's and DCNv4's parameter names and shapes, their
initialisation, and the layers against a NumPy composition over the float64 reference with random
parameters (the torch comparison is examples/dcnv3_from_internimage.py, run by tests/cli)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
from scipy.signal import correlate

from cudcn import nn, reference
from cudcn.autograd import Tensor
from cudcn.ops.dcnv3 import DCNv3Params

SEED = 20261224


def dcnv3_names(norm: str, cfs: bool) -> dict[str, tuple[int, ...]]:
    """InternImage's DCNv3(channels=8, group=2, kernel_size=3) state_dict: names and shapes."""
    names = (
        {"center_feature_scale_proj_weight": (2, 8), "center_feature_scale_proj_bias": (2,)} if cfs else {}
    )
    names |= {"dw_conv.0.weight": (8, 1, 3, 3), "dw_conv.0.bias": (8,)}
    if norm == "LN":
        names |= {"dw_conv.1.1.weight": (8,), "dw_conv.1.1.bias": (8,)}
    else:
        names |= {f"dw_conv.1.0.{k}": (8,) for k in ("weight", "bias", "running_mean", "running_var")}
        names["dw_conv.1.0.num_batches_tracked"] = ()
    names |= {"offset.weight": (36, 8), "offset.bias": (36,), "mask.weight": (18, 8), "mask.bias": (18,)}
    for proj in ("input_proj", "output_proj"):
        names |= {f"{proj}.weight": (8, 8), f"{proj}.bias": (8,)}
    return names


@pytest.mark.parametrize(("norm", "cfs"), [("LN", False), ("BN", True)])
def test_dcnv3_state_dict_is_internimages(norm, cfs):
    layer = nn.DCNv3(8, group=2, norm_layer=norm, center_feature_scale=cfs)
    state = layer.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == dcnv3_names(norm, cfs)
    assert list(state) == list(dcnv3_names(norm, cfs))  # PyTorch's order: own parameters first
    for name in ("offset.weight", "offset.bias", "mask.weight", "mask.bias", "input_proj.bias"):
        assert not state[name].any(), name
    bound = np.sqrt(6 / 16)  # Glorot-uniform projections
    assert 0 < np.abs(state["input_proj.weight"]).max() <= bound


def test_dcnv4_state_dict_is_dcnv4s():
    layer = nn.DCNv4(16, group=2, dw_kernel_size=3, center_feature_scale=True, output_bias=False)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "center_feature_scale_proj_weight": (2, 16),
        "center_feature_scale_proj_bias": (2,),
        "offset_mask_dw.weight": (16, 1, 3, 3),
        "offset_mask_dw.bias": (16,),
        "offset_mask.weight": (56, 16),  # G·P·3 = 54, padded to 56
        "offset_mask.bias": (56,),
        "value_proj.weight": (16, 16),
        "value_proj.bias": (16,),
        "output_proj.weight": (16, 16),
    }
    assert set(nn.DCNv4(16, group=2, without_pointwise=True).state_dict()) == {
        "offset_mask.weight",
        "offset_mask.bias",
    }


def randomize(layer: nn.Module, seed: int) -> dict[str, np.ndarray]:
    """Load random float64 parameters (positive variances) into ``layer``; return them."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, value in layer.state_dict().items():
        array = rng.standard_normal(value.shape) * 0.5
        state[name] = np.abs(array) + 0.5 if "running_var" in name else array
        if name.endswith("num_batches_tracked"):
            state[name] = np.array(0, np.int64)
    layer.to(np.float64)
    layer.load_state_dict(state)
    return state


def depthwise(x_nchw: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Depthwise 'same' convolution (odd kernel), per channel with scipy."""
    k = w.shape[2]
    padded = np.pad(x_nchw, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    out = np.empty_like(x_nchw)
    for n in range(x_nchw.shape[0]):
        for c in range(x_nchw.shape[1]):
            out[n, c] = correlate(padded[n, c], w[c, 0], mode="valid") + b[c]
    return out


def dense(x, s, name):
    return x @ s[f"{name}.weight"].T + s[f"{name}.bias"]


def blend(out, x_proj, features, s, group):
    scale = scipy.special.expit(
        features @ s["center_feature_scale_proj_weight"].T + s["center_feature_scale_proj_bias"]
    )
    scale = np.repeat(scale, out.shape[-1] // group, axis=-1)
    return out * (1 - scale) + x_proj * scale


@pytest.mark.parametrize(("norm", "cfs", "remove_center"), [("LN", True, False), ("BN", False, True)])
def test_dcnv3_layer_matches_numpy_composition(norm, cfs, remove_center):
    layer = nn.DCNv3(8, group=2, norm_layer=norm, center_feature_scale=cfs, remove_center=remove_center)
    s = randomize(layer, SEED)
    layer.eval()
    x = np.random.default_rng(SEED + 1).standard_normal((2, 5, 4, 8))
    x_proj = dense(x, s, "input_proj")
    x1 = depthwise(x.transpose(0, 3, 1, 2), s["dw_conv.0.weight"], s["dw_conv.0.bias"])
    if norm == "BN":
        stats = [
            s[f"dw_conv.1.0.{k}"][:, None, None] for k in ("running_mean", "running_var", "weight", "bias")
        ]
        x1 = ((x1 - stats[0]) / np.sqrt(stats[1] + 1e-5) * stats[2] + stats[3]).transpose(0, 2, 3, 1)
    else:
        x1 = x1.transpose(0, 2, 3, 1)
        x1 = (x1 - x1.mean(-1, keepdims=True)) / np.sqrt(x1.var(-1, keepdims=True) + 1e-6)
        x1 = x1 * s["dw_conv.1.1.weight"] + s["dw_conv.1.1.bias"]
    x1 = x1 * 0.5 * (1 + scipy.special.erf(x1 / np.sqrt(2)))
    points = 9 - int(remove_center)
    mask = scipy.special.softmax(dense(x1, s, "mask").reshape(2, 5, 4, 2, points), axis=-1).reshape(
        2, 5, 4, -1
    )
    p = DCNv3Params.build(x_proj, 3, 1, 1, 1, 2, 1.0, remove_center)
    out = reference.dcnv3_forward(x_proj, dense(x1, s, "offset"), mask, p)
    if cfs:
        out = blend(out, x_proj, x1, s, 2)
    np.testing.assert_allclose(layer(x).data, dense(out, s, "output_proj"), rtol=1e-10, atol=1e-10)


def test_dcnv4_layer_matches_numpy_composition():
    layer = nn.DCNv4(8, group=2, dw_kernel_size=3, center_feature_scale=True, offset_scale=0.5)
    s = randomize(layer, SEED + 2)
    x = np.random.default_rng(SEED + 3).standard_normal((2, 16, 8))
    v = dense(x, s, "value_proj").reshape(2, 4, 4, 8)
    om_in = depthwise(
        x.reshape(2, 4, 4, 8).transpose(0, 3, 1, 2), s["offset_mask_dw.weight"], s["offset_mask_dw.bias"]
    )
    om = dense(om_in.transpose(0, 2, 3, 1), s, "offset_mask")
    p = DCNv3Params.build(v, 3, 1, 1, 1, 2, 0.5, False)
    out = reference.dcnv4_forward(v, om, p)
    out = blend(out, v, out, s, 2).reshape(2, 16, 8)
    np.testing.assert_allclose(layer(x).data, dense(out, s, "output_proj"), rtol=1e-10, atol=1e-10)
    assert layer(x, shape=(2, 8)).shape == (2, 16, 8)  # L = H·W, any (H, W)


def test_layers_train():
    """Every parameter gets a finite gradient through the tape (float32)."""
    for layer, x in (
        (nn.DCNv3(8, group=2, center_feature_scale=True), np.ones((1, 4, 4, 8), np.float32)),
        (nn.DCNv4(8, group=2, dw_kernel_size=3), np.ones((1, 16, 8), np.float32)),
    ):
        randomize(layer, SEED + 4)
        layer.to(np.float32)
        out = layer(Tensor(np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)))
        (out * out).sum().backward()
        for name, param in layer.named_parameters():
            assert param.grad is not None and np.isfinite(param.grad).all() and param.grad.any(), name


def test_layer_arguments():
    with pytest.raises(ValueError, match="channels must be divisible by group"):
        nn.DCNv3(10, group=4)
    with pytest.raises(ValueError, match="remove_center is only compatible with odd kernel size"):
        nn.DCNv4(8, kernel_size=4, remove_center=True)
    with pytest.raises(ValueError, match="norm_layer must be 'LN' or 'BN'"):
        nn.DCNv3(8, norm_layer="GN")
    with pytest.raises(ValueError, match=r"act_layer must be one of \['GELU', 'ReLU', 'SiLU'\]"):
        nn.DCNv3(8, act_layer="Tanh")
