"""The demo's networks: one small CNN in three variants.

    conv3x3(1 -> c1) BN ReLU  maxpool2      28 -> 14
    conv3x3(c1 -> c) BN ReLU  maxpool2      14 -> 7
    conv3x3(c -> c)  BN ReLU                 7      <- DeformConv2dPack in the "deform" variant
    conv3x3(c -> c)  BN ReLU                 7      <- DeformConv2dPack in the "deform" variant
    global average pool, linear(c -> 10)

Convolutions have no bias (BatchNorm follows). "plain" uses c1, c = 8, 32; "deform" the same widths
plus the two offset convolutions (mmcv's ``conv_offset``, zero-initialised); "wide" is the plain net
with c widened until its parameter count is the closest to the deformable net's.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from cudcn import nn
from cudcn.backends import is_cupy_array

C1, C = 8, 32
DEFORM_LAYERS = (8, 11)  # indices in the Sequential of the two last convolutions
KINDS = ("plain", "wide", "deform")


def _build(width: int, deform: bool, rng: np.random.Generator) -> nn.Sequential:
    def conv(cin: int, cout: int, deformable: bool = False) -> nn.Module:
        if deformable:
            return nn.DeformConv2dPack(cin, cout, 3, padding=1, bias=False, rng=rng)
        return nn.Conv2d(cin, cout, 3, padding=1, bias=False, rng=rng)

    c = width
    return nn.Sequential(
        conv(1, C1),
        nn.BatchNorm2d(C1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        conv(C1, c),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.MaxPool2d(2),
        conv(c, c, deform),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        conv(c, c, deform),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.GlobalAvgPool2d(),
        nn.Linear(c, 10, rng=rng),
    )


def digit_net(kind: str, rng: np.random.Generator) -> nn.Sequential:
    """The CNN above, kind "plain", "wide" or "deform", initialised from ``rng`` with PyTorch's
    default rules. The deform net starts as the plain net drawn from the same ``rng`` plus zero
    offset convolutions, so at step 0 the two compute the same function."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "wide":
        return _build(wide_width(), False, rng)
    plain = _build(C, False, rng)
    return deformable_from_plain(plain) if kind == "deform" else plain


def count_parameters(net: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(int(p.data.size) for p in net.parameters())


def _count(width: int, deform: bool) -> int:
    return count_parameters(_build(width, deform, np.random.default_rng(0)))


def wide_width() -> int:
    """The width c of the plain net whose parameter count is closest to the deformable net's."""
    target = _count(C, True)
    return min(range(C, 2 * C), key=lambda w: abs(_count(w, False) - target))


def deformable_from_plain(plain: nn.Sequential) -> nn.Sequential:
    """A net with DeformConv2dPack in the two last convolutions holding ``plain``'s weights and
    BatchNorm statistics; only the zero-initialised offset convolutions are new, so it computes exactly
    what ``plain`` computes (on the array library of ``plain``'s weights)."""
    width = plain[DEFORM_LAYERS[0]].out_channels
    net = _build(width, True, np.random.default_rng(0))  # every weight is overwritten below
    if is_cupy_array(plain[0].weight.data):
        net.to("cuda")
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    new = {f"{i}.conv_offset.{p}" for i in DEFORM_LAYERS for p in ("weight", "bias")}
    if set(missing) != new or unexpected:
        raise RuntimeError(f"unexpected key mismatch: missing {missing}, unexpected {unexpected}")
    return net


def offset_parameters(net: nn.Sequential) -> list[nn.Parameter]:
    """The offset convolutions' parameters of a deform-variant net."""
    return [p for i in DEFORM_LAYERS for p in net[i].conv_offset.parameters()]


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
