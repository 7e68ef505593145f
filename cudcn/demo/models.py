"""The demo's networks: one small CNN in three variants, and the swap that makes layers deformable.

    conv3x3(1 -> c1) BN ReLU  maxpool2      28 -> 14
    conv3x3(c1 -> c) BN ReLU  maxpool2      14 -> 7
    conv3x3(c -> c)  BN ReLU                 7      <- DeformConv2dPack in the "deform" variant
    conv3x3(c -> c)  BN ReLU                 7      <- DeformConv2dPack in the "deform" variant
    global average pool, linear(c -> 10)

Convolutions have no bias (BatchNorm follows). "plain" uses c1, c = 8, 32; "deform" the same widths
plus the two offset convolutions (mmcv's ``conv_offset``, zero-initialised); "wide" is the plain net
with c widened until its parameter count is the closest to the deformable net's. ``cudcn demo layers``
deepens the net to ``depth`` layers at 7 x 7 (:func:`deep_net`) and makes the last k of them deformable.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from cudcn import nn
from cudcn.backends import is_cupy_array

C1, C = 8, 32
DEPTH = 2  # layers at 7 x 7 in the conv demo's net
KINDS = ("plain", "wide", "deform")


def late_layers(depth: int = DEPTH) -> tuple[int, ...]:
    """Indices in the Sequential of the ``depth`` convolutions at 7 x 7, first to last."""
    return tuple(8 + 3 * i for i in range(depth))


DEFORM_LAYERS = late_layers()  # the conv demo's two deformable layers


def trunk(width: int, rng: np.random.Generator, depth: int = DEPTH, first: int = C1) -> list[nn.Module]:
    """The net's convolutional part, 1 channel in, ``first`` channels after the first convolution,
    ``width`` out at stride 4, with ``depth`` convolutions of width ``width`` after the second
    pooling; drawn from ``rng`` in order, so the first layers' weights do not depend on ``depth``."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(cout), nn.ReLU()]

    layers = [*block(1, first), nn.MaxPool2d(2), *block(first, width), nn.MaxPool2d(2)]
    for _ in range(depth):
        layers += block(width, width)
    return layers


def _build(width: int, rng: np.random.Generator, depth: int = DEPTH) -> nn.Sequential:
    """The plain classifier: the trunk, global average pooling and a linear layer to 10 classes."""
    return nn.Sequential(*trunk(width, rng, depth), nn.GlobalAvgPool2d(), nn.Linear(width, 10, rng=rng))


def digit_net(kind: str, rng: np.random.Generator) -> nn.Sequential:
    """The CNN above, kind "plain", "wide" or "deform", initialised from ``rng`` with PyTorch's
    default rules. The deform net starts as the plain net drawn from the same ``rng`` plus zero
    offset convolutions, so at step 0 the two compute the same function."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "wide":
        return _build(wide_width(), rng)
    plain = _build(C, rng)
    return deformable_from_plain(plain) if kind == "deform" else plain


def deep_net(depth: int, deformable: int, rng: np.random.Generator) -> nn.Sequential:
    """The plain net with ``depth`` layers at 7 x 7 drawn from ``rng``, its last ``deformable`` of
    them swapped for DeformConv2dPack: for one ``rng`` every count starts from the same function."""
    return deformable_from_plain(_build(C, rng, depth), deformable)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(int(p.data.size) for p in net.parameters())


def _count(width: int, deform: bool) -> int:
    net = _build(width, np.random.default_rng(0))
    return count_parameters(deformable_from_plain(net) if deform else net)


def wide_width() -> int:
    """The width c of the plain net whose parameter count is closest to the deformable net's."""
    target = _count(C, True)
    return min(range(C, 2 * C), key=lambda w: abs(_count(w, False) - target))


def swap_deformable(net: nn.Sequential, indices: tuple[int, ...]) -> nn.Sequential:
    """A copy of ``net`` with the convolutions at ``indices`` replaced by DeformConv2dPack layers holding
    their weights; only the zero-initialised offset convolutions are new, so the copy computes exactly
    what ``net`` computes (on the array library of ``net``'s weights)."""
    modules = [copy.deepcopy(m) for m in net]
    for i in indices:
        conv = modules[i]
        shape = (conv.in_channels, conv.out_channels, conv.kernel_size)
        geometry = (conv.stride, conv.padding, conv.dilation, conv.groups)
        layer = nn.DeformConv2dPack(*shape, *geometry, bias=conv.bias is not None)
        if is_cupy_array(conv.weight.data):
            layer.to("cuda")
        missing, unexpected = layer.load_state_dict(conv.state_dict(), strict=False)
        if set(missing) != {"conv_offset.weight", "conv_offset.bias"} or unexpected:
            raise RuntimeError(f"unexpected key mismatch: missing {missing}, unexpected {unexpected}")
        modules[i] = layer
    return nn.Sequential(*modules)


def deformable_from_plain(plain: nn.Sequential, count: int | None = None) -> nn.Sequential:
    """``plain`` (a net of :func:`_build`) with its last ``count`` convolutions at 7 x 7 (all of them
    when None) swapped for DeformConv2dPack (:func:`swap_deformable`)."""
    late = late_layers((len(plain) - 10) // 3)
    count = len(late) if count is None else count
    if not 0 <= count <= len(late):
        raise ValueError(f"count must be in [0, {len(late)}], got {count}")
    return swap_deformable(plain, late[len(late) - count :])


def offset_parameters(net: nn.Sequential) -> list[nn.Parameter]:
    """The offset convolutions' parameters of every DeformConv2dPack in ``net``."""
    return [p for m in net if isinstance(m, nn.DeformConv2dPack) for p in m.conv_offset.parameters()]


def batchnorm_parameters(net: nn.Sequential) -> list[nn.Parameter]:
    """Every BatchNorm weight and bias."""
    return [p for m in net if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]


def save_trained(net: nn.Sequential, out: Path) -> tuple[list[Path], str]:
    """Save ``net`` into the folder ``out`` as the checkpoint ``deformable_cnn.npz`` and as the ONNX
    model ``deformable_cnn.onnx`` (exported from a host copy on one 28 x 28 digit, dynamic batch).
    Returns the paths written and a note: "" or why the ONNX file was skipped."""
    from cudcn import onnx

    out.mkdir(parents=True, exist_ok=True)
    checkpoint, exported = out / "deformable_cnn.npz", out / "deformable_cnn.onnx"
    nn.save_checkpoint(net, checkpoint)
    try:
        onnx.export(copy.deepcopy(net).to("cpu"), np.zeros((1, 1, 28, 28), np.float32), exported)
    except ImportError as exc:
        return [checkpoint], f"skipped {exported.name}: {exc}"
    return [checkpoint, exported], ""
