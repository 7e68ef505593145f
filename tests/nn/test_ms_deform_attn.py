"""MultiScaleDeformableAttention: mmcv's parameter names, shapes and initialisation, the forward
against a NumPy composition over the float64 reference op, gradients, state_dict round trips, and
(marked torch) equality with a PyTorch module written here (grid_sample based) holding the same
weights, loaded through the NumPy conversion a user would do.

Seeds are printed (or fixed per test), so a failure is replayed by running the test again.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from cudcn import Tensor, nn, reference
from cudcn.ops.ms_deform_attn import MSDeformAttnParams
from cudcn.testing import assert_allclose_to_reference, gradcheck

SEED = 20261218
SHAPES = [[4, 5], [2, 3], [1, 2]]  # (H_l, W_l)
S = sum(h * w for h, w in SHAPES)


def make_layer(dtype=np.float64, batch_first=True, seed=SEED, **kw) -> nn.MultiScaleDeformableAttention:
    """A small layer with every weight random (the initialisation zeroes the offset and attention
    weights, which would hide their part of the forward)."""
    args = {"embed_dims": 8, "num_heads": 2, "num_levels": len(SHAPES), "num_points": 3, **kw}
    layer = nn.MultiScaleDeformableAttention(**args, dropout=0.0, batch_first=batch_first)
    rng = np.random.default_rng(seed)
    for name, p in layer.named_parameters():
        scale = 2.0 if name.startswith("sampling_offsets") else 0.5
        p.data[...] = rng.standard_normal(p.shape) * scale
    return layer.to(dtype)


def make_inputs(rng, bs=2, nq=5, corners=2, dtype=np.float64):
    query = rng.standard_normal((bs, nq, 8)).astype(dtype)
    value = rng.standard_normal((bs, S, 8)).astype(dtype)
    ref = rng.uniform(0.0, 1.0, (bs, nq, len(SHAPES), corners)).astype(dtype)
    return query, value, ref


def numpy_forward(layer, query, value, ref, mask=None):
    """The layer's forward composed by hand in float64 NumPy around the reference op (batch first,
    no dropout, identity = query)."""
    params = {k: v.astype(np.float64) for k, v in layer.state_dict().items()}

    def lin(x, name):
        return x @ params[f"{name}.weight"].T + params[f"{name}.bias"]

    bs, nq, _ = query.shape
    m, lv, p = layer.num_heads, layer.num_levels, layer.num_points
    v = lin(value, "value_proj")
    if mask is not None:
        v = np.where(mask[..., None], 0.0, v)
    v = v.reshape(bs, S, m, -1)
    off = lin(query, "sampling_offsets").reshape(bs, nq, m, lv, p, 2)
    logits = lin(query, "attention_weights").reshape(bs, nq, m, lv * p)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = (w / w.sum(-1, keepdims=True)).reshape(bs, nq, m, lv, p)
    if ref.shape[-1] == 2:
        loc = ref[:, :, None, :, None, :] + off / np.array([[w_, h_] for h_, w_ in SHAPES])[:, None, :]
    else:
        loc = ref[:, :, None, :, None, :2] + off / p * ref[:, :, None, :, None, 2:] * 0.5
    starts = np.concatenate(([0], np.cumsum([h * w_ for h, w_ in SHAPES])[:-1]))
    params_op = MSDeformAttnParams(tuple(map(tuple, SHAPES)), tuple(int(s) for s in starts))
    out = reference.ms_deform_attn_forward(v, loc, w, params_op).reshape(bs, nq, -1)
    return lin(out, "output_proj") + query


def test_parameter_names_and_shapes_match_mmcv():
    layer = nn.MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=3, num_points=2)
    expected = {
        "sampling_offsets.weight": (4 * 3 * 2 * 2, 32),
        "sampling_offsets.bias": (4 * 3 * 2 * 2,),
        "attention_weights.weight": (4 * 3 * 2, 32),
        "attention_weights.bias": (4 * 3 * 2,),
        "value_proj.weight": (32, 32),
        "value_proj.bias": (32,),
        "output_proj.weight": (32, 32),
        "output_proj.bias": (32,),
    }
    assert {k: v.shape for k, v in layer.state_dict().items()} == expected
    assert list(layer.state_dict()) == list(expected)  # mmcv's registration order
    half = nn.MultiScaleDeformableAttention(32, 4, 3, 2, value_proj_ratio=0.5)
    assert half.value_proj.weight.shape == (16, 32) and half.output_proj.weight.shape == (32, 16)
    assert nn.MultiScaleDeformableAttention().sampling_offsets.weight.shape == (256, 256)  # defaults


def test_initialisation_is_mmcvs():
    m, levels, points = 6, 2, 3
    layer = nn.MultiScaleDeformableAttention(24, m, levels, points)
    bias = layer.sampling_offsets.bias.data.reshape(m, levels, points, 2)
    theta = np.arange(m) * 2 * math.pi / m
    unit = np.stack([np.cos(theta), np.sin(theta)], -1)
    unit /= np.abs(unit).max(-1, keepdims=True)
    want = unit[:, None, None, :] * np.arange(1, points + 1)[None, None, :, None]
    np.testing.assert_allclose(bias, np.broadcast_to(want, bias.shape), atol=1e-6)
    assert not layer.sampling_offsets.weight.data.any()
    assert not layer.attention_weights.weight.data.any() and not layer.attention_weights.bias.data.any()
    for proj in (layer.value_proj, layer.output_proj):
        bound = math.sqrt(6 / sum(proj.weight.shape))
        assert np.abs(proj.weight.data).max() <= bound and np.abs(proj.weight.data).max() > 0.8 * bound
        assert not proj.bias.data.any()


@pytest.mark.parametrize("corners", [2, 4], ids=["points", "boxes"])
def test_forward_matches_numpy_composition(corners):
    rng = np.random.default_rng(SEED + corners)
    layer = make_layer()
    query, value, ref = make_inputs(rng, corners=corners)
    mask = rng.uniform(size=(2, S)) < 0.3
    out = layer(query, value=value, reference_points=ref, spatial_shapes=SHAPES, key_padding_mask=mask)
    want = numpy_forward(layer, query, value, ref, mask)
    assert_allclose_to_reference(out.data, want, np.float64, factor=64)
    out32 = make_layer(np.float32)(
        query.astype(np.float32),
        value=value.astype(np.float32),
        reference_points=ref.astype(np.float32),
        spatial_shapes=np.array(SHAPES),
        key_padding_mask=mask,
    )
    assert out32.dtype == np.float32
    # float32 positions: loc·W rounds by eps·W pixels, times the bilinear slope (≤ 2 max|v|)
    assert_allclose_to_reference(out32.data, want, np.float32, factor=64 * 8)


def test_sequence_first_layout_query_pos_and_identity():
    rng = np.random.default_rng(SEED)
    first, seq = make_layer(batch_first=True), make_layer(batch_first=False)
    query, value, ref = make_inputs(rng)
    pos = rng.standard_normal(query.shape)
    identity = rng.standard_normal(query.shape)
    a = first(query, None, value, identity, pos, reference_points=ref, spatial_shapes=SHAPES)
    t = (1, 0, 2)
    b = seq(
        query.transpose(t),
        value=value.transpose(t),
        identity=identity.transpose(t),
        query_pos=pos.transpose(t),
        reference_points=ref,
        spatial_shapes=SHAPES,
        level_start_index=[0, 20, 26],
    )
    np.testing.assert_array_equal(b.data, a.data.transpose(t))
    plain = first(
        query + pos, value=value, identity=np.zeros_like(query), reference_points=ref, spatial_shapes=SHAPES
    )
    np.testing.assert_allclose(a.data, plain.data + identity, rtol=0, atol=1e-12)


def test_gradients_of_inputs_pass_gradcheck():
    rng = np.random.default_rng(SEED)
    layer = make_layer()
    query, value, ref = make_inputs(rng, bs=1, nq=2, corners=4)

    def fn(q, v, r):
        return layer(q, value=v, reference_points=r, spatial_shapes=SHAPES)

    # reference points keep away from pixel edges, where the bilinear sample has kinks
    assert gradcheck(fn, [query, value, ref], eps=1e-7, atol=1e-6, seed=SEED)


def test_parameters_get_gradients_and_uniform_attention_at_init():
    rng = np.random.default_rng(SEED)
    layer = nn.MultiScaleDeformableAttention(8, 2, len(SHAPES), 3, dropout=0.0, batch_first=True)
    query, value, ref = (a.astype(np.float32) for a in make_inputs(rng))
    out = layer(Tensor(query), value=value, reference_points=ref, spatial_shapes=SHAPES)
    (out * out).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and np.isfinite(p.grad).all() and np.abs(p.grad).sum() > 0, name


def test_state_dict_round_trip(tmp_path):
    rng = np.random.default_rng(SEED)
    layer = make_layer(np.float32)
    query, value, ref = (a.astype(np.float32) for a in make_inputs(rng))
    fresh = nn.MultiScaleDeformableAttention(8, 2, len(SHAPES), 3, dropout=0.0, batch_first=True)
    result = fresh.load_state_dict({k: v.astype(np.float64) for k, v in layer.state_dict().items()})
    assert not result.missing_keys and not result.unexpected_keys
    nn.save_checkpoint(fresh, tmp_path / "msda.npz")
    again = nn.MultiScaleDeformableAttention(8, 2, len(SHAPES), 3, dropout=0.0, batch_first=True)
    again.load_state_dict(nn.load_checkpoint(tmp_path / "msda.npz"))
    outs = [m(query, value=value, reference_points=ref, spatial_shapes=SHAPES).data for m in (layer, again)]
    np.testing.assert_array_equal(outs[0], outs[1])


def test_eval_mode_turns_dropout_off():
    rng = np.random.default_rng(SEED)
    layer = nn.MultiScaleDeformableAttention(8, 2, len(SHAPES), 3, dropout=0.5, batch_first=True)
    query, value, ref = (a.astype(np.float32) for a in make_inputs(rng))
    run = [layer.eval()(query, value=value, reference_points=ref, spatial_shapes=SHAPES).data for _ in "ab"]
    np.testing.assert_array_equal(*run)
    noisy = layer.train()(query, value=value, reference_points=ref, spatial_shapes=SHAPES).data
    assert not np.array_equal(noisy, run[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"query": np.zeros((2, 5, 7))}, "query must be (bs, n, C) with C = embed_dims = 8"),
        ({"value": np.zeros((3, S, 8))}, "same batch size"),
        ({"reference_points": np.zeros((2, 5, 3, 3))}, "reference_points must be (bs, num_query"),
        ({"reference_points": np.zeros((2, 5, 2, 2))}, "reference_points must be (bs, num_query"),
        ({"spatial_shapes": [[4, 5], [2, 3]]}, "spatial_shapes must be (num_levels = 3, 2)"),
        ({"level_start_index": [0, 20, 27]}, "level_start_index must be [0, 20, 26]"),
        ({"value": np.zeros((2, S + 1, 8))}, "value must have S"),
    ],
    ids=["embed_dims", "batch", "corners", "levels", "shapes", "starts", "rows"],
)
def test_bad_arguments_name_the_argument(change, message):
    rng = np.random.default_rng(SEED)
    query, value, ref = make_inputs(rng)
    args = {"query": query, "value": value, "reference_points": ref, "spatial_shapes": SHAPES, **change}
    with pytest.raises(ValueError) as info:
        make_layer()(**args)
    assert message in str(info.value)


def test_constructor_checks():
    with pytest.raises(ValueError, match="multiples of num_heads"):
        nn.MultiScaleDeformableAttention(10, 4)
    with pytest.raises(ValueError, match="num_points"):
        nn.MultiScaleDeformableAttention(8, 2, 1, 0)
    layer = nn.MultiScaleDeformableAttention(16, 2, 1, 1)
    assert "embed_dims=16" in repr(layer) and copy.deepcopy(layer).embed_dims == 16


# ------------------------------------------------------------------------------------ PyTorch


@pytest.mark.torch
@pytest.mark.parametrize("corners", [2, 4], ids=["points", "boxes"])
def test_equals_a_pytorch_module_with_the_same_weights(corners):
    torch = pytest.importorskip("torch", reason="torch not installed (the PyTorch comparison needs it)")
    from tests.nn.torch_msda import TorchMSDA

    seed = SEED + 10 + corners
    print("seed", seed)
    torch.manual_seed(seed)
    theirs = TorchMSDA(8, 2, len(SHAPES), 3).double()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 1.0)
    # the user's step: torch state_dict -> NumPy -> load_state_dict
    state = {k: v.detach().cpu().numpy() for k, v in theirs.state_dict().items()}
    ours = nn.MultiScaleDeformableAttention(8, 2, len(SHAPES), 3, dropout=0.0, batch_first=True).double()
    ours.load_state_dict(state)
    rng = np.random.default_rng(seed)
    query, value, ref = make_inputs(rng, corners=corners)
    mask = rng.uniform(size=(2, S)) < 0.3
    tq, tv, tr = (torch.tensor(a, requires_grad=True) for a in (query, value, ref))
    t_out = theirs(tq, tv, tr, SHAPES, torch.tensor(mask))
    q, v, r = (Tensor(a, requires_grad=True) for a in (query, value, ref))
    out = ours(q, value=v, reference_points=r, spatial_shapes=SHAPES, key_padding_mask=mask)
    assert_allclose_to_reference(out.data, t_out.detach().numpy(), np.float64, factor=64, name="output")
    cot = rng.standard_normal(out.shape)
    t_out.backward(torch.tensor(cot))
    out.backward(cot)
    for name, a, b in (("query", q, tq), ("value", v, tv), ("reference_points", r, tr)):
        assert_allclose_to_reference(a.grad, b.grad.numpy(), np.float64, factor=256, name=name)
    t_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        want = t_params[name].grad.numpy()
        assert_allclose_to_reference(p.grad, want, np.float64, factor=256, name=name)
