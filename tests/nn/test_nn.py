"""cudcn.nn: layer shapes and initialisations, mmcv/torchvision names, state dicts and checkpoints,
train/eval behaviour, devices and dtypes, and a training smoke test whose loss falls."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import cudcn
import cudcn.functional as F
from cudcn import nn
from cudcn.autograd import Tensor
from cudcn.nn import checkpoint
from cudcn.testing import gradcheck

SEED = 4242


@pytest.fixture
def rng() -> np.random.Generator:
    print(f"seed={SEED}")
    return np.random.default_rng(SEED)


def images(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------------- shapes
def test_layer_output_shapes(rng):
    x = images(rng, 2, 3, 9, 8)
    assert nn.Conv2d(3, 5, 3)(x).shape == (2, 5, 7, 6)
    assert nn.Conv2d(3, 6, (3, 1), stride=(2, 1), padding=(1, 0), groups=3)(x).shape == (2, 6, 5, 8)
    assert nn.BatchNorm2d(3)(x).shape == x.shape
    assert nn.ReLU()(x).shape == x.shape
    assert nn.MaxPool2d(2)(x).shape == (2, 3, 4, 4)
    assert nn.AvgPool2d(3, 2, 1)(x).shape == (2, 3, 5, 4)
    assert nn.AdaptiveAvgPool2d((2, 3))(x).shape == (2, 3, 2, 3)
    assert nn.GlobalAvgPool2d()(x).shape == (2, 3)
    assert nn.Flatten()(x).shape == (2, 3 * 9 * 8)
    assert nn.Linear(8, 4)(x).shape == (2, 3, 9, 4)
    assert nn.Dropout(0.5)(x).shape == x.shape
    assert nn.DeformConv2dPack(3, 4, 3, padding=1, deform_groups=3)(x).shape == (2, 4, 9, 8)
    assert nn.ModulatedDeformConv2dPack(3, 4, 3, stride=2)(x).shape == (2, 4, 4, 3)
    offset = np.zeros((2, 2 * 9, 9, 8), np.float32)
    assert nn.DeformConv2d(3, 4, 3, padding=1)(x, offset).shape == (2, 4, 9, 8)


# ----------------------------------------------------------------------------------- initialisation
def check_uniform(array, bound):
    """Inside [-bound, bound] and spread over it: for n draws of U(-b, b) the largest |value| is
    below b (1 - 5 / n) with probability e^-5 and |mean| exceeds 4 b / sqrt(3 n) with less."""
    n = array.size
    assert np.abs(array).max() <= bound
    assert np.abs(array).max() > bound * (1 - 5 / n)
    assert abs(float(array.mean())) < 4 * bound / math.sqrt(3 * n)


def test_torch_style_initialisations():
    nn.init.manual_seed(SEED)
    conv = nn.Conv2d(16, 32, 3, groups=2)
    fan_in = 8 * 9
    check_uniform(conv.weight.data, 1 / math.sqrt(fan_in))
    check_uniform(conv.bias.data, 1 / math.sqrt(fan_in))
    linear = nn.Linear(50, 40)
    check_uniform(linear.weight.data, 1 / math.sqrt(50))
    check_uniform(linear.bias.data, 1 / math.sqrt(50))
    deform = nn.DeformConv2d(16, 32, 3)  # torchvision: as Conv2d
    check_uniform(deform.weight.data, 1 / math.sqrt(16 * 9))
    check_uniform(deform.bias.data, 1 / math.sqrt(16 * 9))
    bn = nn.BatchNorm2d(4)
    np.testing.assert_array_equal(bn.weight.data, 1)
    np.testing.assert_array_equal(bn.bias.data, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert conv.weight.dtype == np.float32


def test_mmcv_initialisations_and_parameter_names():
    nn.init.manual_seed(SEED)
    pack = nn.DeformConv2dPack(16, 32, 3, padding=1, deform_groups=2)
    assert [n for n, _ in pack.named_parameters()] == [
        "weight",
        "conv_offset.weight",
        "conv_offset.bias",
    ]
    check_uniform(pack.weight.data, math.sqrt(6 / (16 * 9)))  # kaiming_uniform, relu gain
    assert pack.conv_offset.weight.shape == (2 * 2 * 9, 16, 3, 3)
    assert (pack.conv_offset.padding, pack.conv_offset.stride) == ((1, 1), (1, 1))
    np.testing.assert_array_equal(pack.conv_offset.weight.data, 0)
    np.testing.assert_array_equal(pack.conv_offset.bias.data, 0)

    mod = nn.ModulatedDeformConv2dPack(16, 32, 3, dilation=2, groups=2, deform_groups=2)
    assert list(mod.state_dict()) == [
        "weight",
        "bias",
        "conv_offset.weight",
        "conv_offset.bias",
    ]
    check_uniform(mod.weight.data, 1 / math.sqrt(16 * 9))  # mmcv: in_channels * k * k
    np.testing.assert_array_equal(mod.bias.data, 0)
    assert mod.conv_offset.weight.shape == (3 * 2 * 9, 16, 3, 3)
    assert mod.conv_offset.dilation == (2, 2)

    roi = nn.ModulatedDeformRoIPoolPack(2, 3, deform_fc_channels=8)
    assert list(roi.state_dict()) == [
        f"{branch}.{i}.{kind}"
        for branch, layers in (("offset_fc", (0, 2, 4)), ("mask_fc", (0, 2)))
        for i in layers
        for kind in ("weight", "bias")
    ]
    np.testing.assert_array_equal(roi.offset_fc[4].weight.data, 0)
    np.testing.assert_array_equal(roi.mask_fc[2].bias.data, 0)


def test_manual_seed_makes_construction_reproducible():
    nn.init.manual_seed(3)
    a = nn.Conv2d(2, 3, 3).weight.data
    nn.init.manual_seed(3)
    np.testing.assert_array_equal(nn.Conv2d(2, 3, 3).weight.data, a)
    assert not np.array_equal(nn.Conv2d(2, 3, 3).weight.data, a)


# ----------------------------------------------------------------------------------- deformable packs
def test_packs_start_as_plain_convolutions(rng):
    x = images(rng, 2, 4, 7, 7)
    pack = nn.DeformConv2dPack(4, 6, 3, padding=1, bias=True)
    pack.bias.data[...] = rng.standard_normal(6)
    expected = F.conv2d(x, pack.weight.data, pack.bias.data, padding=1)
    np.testing.assert_allclose(pack(x).data, expected, rtol=1e-4, atol=1e-5)
    mod = nn.ModulatedDeformConv2dPack(4, 6, 3, padding=1)
    expected = 0.5 * F.conv2d(x, mod.weight.data, None, padding=1) + mod.bias.data[:, None, None]
    np.testing.assert_allclose(mod(x).data, expected, rtol=1e-4, atol=1e-5)


def test_modulated_pack_splits_offsets_then_mask(rng):
    x = images(rng, 1, 2, 6, 6)
    mod = nn.ModulatedDeformConv2dPack(2, 3, 3, padding=1, deform_groups=2)
    mod.conv_offset.bias.data[...] = rng.uniform(-1, 1, 3 * 2 * 9)
    raw = mod.conv_offset.bias.data[:, None, None] * np.ones((1, 6, 6), np.float32)
    offset, mask = raw[None, :36], 1 / (1 + np.exp(-raw[None, 36:]))
    expected = F.deform_conv2d(x, offset, mod.weight.data, mod.bias.data, 1, 1, 1, mask)
    np.testing.assert_allclose(mod(x).data, expected, rtol=1e-4, atol=1e-5)


def test_roi_pool_packs_start_as_roi_align_and_train_their_offsets(rng):
    x = images(rng, 2, 3, 9, 9)
    rois = np.array([[0, 1.0, 1.5, 6.0, 7.0], [1, 0.0, 2.0, 8.5, 8.0]], np.float32)
    expected = F.roi_align(x, rois, 2, aligned=True)
    pack = nn.DeformRoIPoolPack(2, 3, deform_fc_channels=8)
    np.testing.assert_allclose(pack(x, rois).data, expected, rtol=1e-6)
    mod = nn.ModulatedDeformRoIPoolPack(2, 3, deform_fc_channels=8)
    out = mod(x, rois)
    np.testing.assert_allclose(out.data, 0.5 * expected, rtol=1e-6)
    out.sum().backward()
    assert np.abs(mod.offset_fc[4].weight.grad).max() > 0
    assert np.abs(mod.mask_fc[2].weight.grad).max() > 0
    with pytest.raises(ValueError, match="output_channels = 3"):
        pack(images(rng, 1, 2, 9, 9), rois[:1])


def test_deform_conv2d_module_passes_offset_and_mask(rng):
    x = images(rng, 1, 2, 5, 5)
    layer = nn.DeformConv2d(2, 3, 3, padding=1)
    offset = rng.uniform(-1, 1, (1, 18, 5, 5)).astype(np.float32)
    mask = rng.uniform(0, 1, (1, 9, 5, 5)).astype(np.float32)
    expected = F.deform_conv2d(x, offset, layer.weight.data, layer.bias.data, 1, 1, 1, mask)
    np.testing.assert_allclose(layer(x, offset, mask).data, expected, rtol=1e-6)


def test_module_gradcheck_float64(rng):
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.ModulatedDeformConv2dPack(3, 2, 3, padding=1),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 2),
    ).to(np.float64)
    net[3].conv_offset.weight.data[...] = rng.uniform(-0.1, 0.1, net[3].conv_offset.weight.shape)
    x = rng.standard_normal((2, 2, 4, 4))
    slots = [(m, name) for m in net.modules() for name, p in m._parameters.items() if p is not None]
    running = [b.copy() for b in net.buffers()]

    def fn(x, *weights):
        for (module, name), w in zip(slots, weights, strict=True):
            module._parameters[name] = w  # the tape must see gradcheck's own tensors
        for b, saved in zip(net.buffers(), running, strict=True):
            b[...] = saved  # gradcheck evaluates fn many times: start from the same statistics
        return net(x)

    weights = [m._parameters[name].data.copy() for m, name in slots]
    assert gradcheck(fn, [x, *weights], seed=SEED)


# ----------------------------------------------------------------------------------- state
def small_net(seed: int) -> nn.Module:
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.DeformConv2dPack(4, 4, 3, padding=1, rng=rng),
        nn.GlobalAvgPool2d(),
        nn.Linear(4, 3, rng=rng),
    )


def test_state_dict_round_trip(rng, tmp_path):
    a, b = small_net(1), small_net(2)
    a(images(rng, 4, 1, 6, 6))  # training step: running stats and the batch counter change
    state = a.state_dict()
    assert list(state)[:7] == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert int(state["1.num_batches_tracked"]) == 1
    state["0.weight"][...] = 0  # a copy: the module is untouched
    assert np.abs(a[0].weight.data).max() > 0
    path = tmp_path / "net.npz"
    nn.save_checkpoint(a, path)
    loaded = nn.load_checkpoint(path)
    assert list(loaded) == list(a.state_dict())
    result = b.load_state_dict(loaded)
    assert result.missing_keys == [] and result.unexpected_keys == []
    a.eval(), b.eval()
    x = images(rng, 2, 1, 6, 6)
    np.testing.assert_array_equal(a(x).data, b(x).data)
    assert set(np.load(path).files) == set(loaded)  # a plain numpy .npz


def test_failed_checkpoint_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    nn.save_checkpoint({"w": np.arange(3.0)}, path)

    def broken_write(file, arrays):
        file.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write_npz", broken_write)
    with pytest.raises(OSError, match="disk full"):
        nn.save_checkpoint({"w": np.zeros(3)}, path)
    np.testing.assert_array_equal(nn.load_checkpoint(path)["w"], np.arange(3.0))
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # the temporary file is gone


def test_load_state_dict_names_every_bad_key():
    net = small_net(1)
    state = net.state_dict()
    del state["0.bias"], state["3.conv_offset.weight"]
    state["5.weight"] = np.zeros((3, 5), np.float32)
    state["extra.weight"] = np.zeros(2)
    before = net[5].weight.data.copy()
    state["0.weight"] = np.zeros_like(state["0.weight"])
    with pytest.raises(ValueError) as info:
        net.load_state_dict(state)
    message = str(info.value)
    for text in (
        "missing: 0.bias",
        "missing: 3.conv_offset.weight",
        "unexpected: extra.weight",
        "wrong shape: 5.weight: expected (3, 4), got (3, 5)",
    ):
        assert text in message
    np.testing.assert_array_equal(net[5].weight.data, before)  # nothing loaded
    assert np.abs(net[0].weight.data).max() > 0
    del state["5.weight"]
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["0.bias", "3.conv_offset.weight", "5.weight"]
    assert result.unexpected_keys == ["extra.weight"]
    np.testing.assert_array_equal(net[0].weight.data, 0)


# ----------------------------------------------------------------------------------- modes
def test_batchnorm_train_and_eval(rng):
    bn = nn.BatchNorm2d(3, momentum=0.5)
    x = images(rng, 4, 3, 5, 5) * 3 + 2
    out = bn(x).data
    np.testing.assert_allclose(out.mean((0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean, 0.5 * x.mean((0, 2, 3)), rtol=1e-5)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    assert not bn.training
    stats = bn.running_mean.copy()
    out = bn(x).data
    expected = (x - stats[:, None, None]) / np.sqrt(bn.running_var[:, None, None] + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bn.running_mean, stats)  # eval does not update
    assert int(bn.num_batches_tracked) == 1


def test_batchnorm_cumulative_average_and_1d(rng):
    bn = nn.BatchNorm1d(4, momentum=None)
    a, b = images(rng, 5, 4) + 1, images(rng, 7, 4) - 2
    bn(a), bn(b)
    np.testing.assert_allclose(bn.running_mean, (a.mean(0) + b.mean(0)) / 2, rtol=1e-5)
    assert bn(images(rng, 3, 4, 6)).shape == (3, 4, 6)
    with pytest.raises(ValueError, match="BatchNorm1d expects a 2 or 3-D input"):
        bn(images(rng, 3, 4, 6, 6))


def test_train_eval_propagate_and_dropout(rng):
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    x = np.ones((50, 4), np.float32)
    assert (net(x).data == 0).any()
    assert net.eval() is net and not net[1].training
    np.testing.assert_array_equal(net(x).data, net[0](x).data)
    net.train()
    assert all(m.training for m in net.modules())


def test_zero_grad_requires_grad_and_dtype(rng):
    net = small_net(0)
    F.cross_entropy(net(images(rng, 2, 1, 5, 5)), np.array([0, 2])).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())
    net.to(np.float64)
    assert net[0].weight.dtype == np.float64 and net[1].running_var.dtype == np.float64
    assert net[1].num_batches_tracked.dtype == np.int64
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        net.to("tpu")


@pytest.mark.gpu
def test_to_cuda_and_back():
    net = small_net(0).to("cuda")
    assert type(net[1].running_mean).__module__.startswith("cupy")
    net.to("cpu")
    assert isinstance(net[0].weight.data, np.ndarray)


# ----------------------------------------------------------------------------------- training
def test_training_smoke_loss_falls():
    """A tiny CNN with a deformable layer on synthetic data (the class is which quadrant holds a
    bright square); cross-entropy falls by more than half in 40 SGD steps."""
    data_rng = np.random.default_rng(SEED)
    n = 64
    labels = data_rng.integers(0, 4, n)
    x = data_rng.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        x[i, 0, 4 * r + 1 : 4 * r + 3, 4 * c + 1 : 4 * c + 3] += 2.0
    nn.init.manual_seed(SEED)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.DeformConv2dPack(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 16, 4),
    )
    offsets = list(net[3].conv_offset.parameters())
    others = [p for p in net.parameters() if all(p is not q for q in offsets)]
    opt = cudcn.optim.SGD([{"params": others}, {"params": offsets, "lr": 0.01}], lr=0.1, momentum=0.9)
    losses = []
    for step in range(40):
        batch = slice((step * 16) % n, (step * 16) % n + 16)
        loss = F.cross_entropy(net(x[batch]), labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print("losses", [round(v, 3) for v in losses[:3]], "...", [round(v, 3) for v in losses[-3:]])
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert np.abs(net[3].conv_offset.weight.data).max() > 0  # the offsets were trained
    net.eval()
    accuracy = (net(x).data.argmax(1) == labels).mean()
    assert accuracy > 0.8


def test_tensor_inputs_work_and_plain_array_parameters_stay_parameters(rng):
    layer = nn.Conv2d(1, 2, 3)
    out = layer(Tensor(images(rng, 1, 1, 4, 4), requires_grad=True))
    assert isinstance(out, Tensor) and out.requires_grad
    with pytest.raises(TypeError, match="weight must be a Parameter or None"):
        layer.weight = np.zeros((2, 1, 3, 3))


def test_batchnorm_without_running_stats_uses_batch_statistics_in_eval() -> None:
    """track_running_stats=False keeps no buffers: eval mode normalises with the batch's own
    statistics, as PyTorch does (it used to look for running_mean and fail)."""
    x = np.random.default_rng(SEED).standard_normal((4, 3, 5, 5)).astype(np.float32)
    bn = nn.BatchNorm2d(3, track_running_stats=False)
    train_out = bn(x)
    eval_out = bn.eval()(x)
    np.testing.assert_array_equal(eval_out.data, train_out.data)
    assert "running_mean" not in bn.state_dict()
