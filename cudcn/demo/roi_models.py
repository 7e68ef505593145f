"""The RoI demo's detector: a small backbone and one of two heads over pooled RoIs.

    conv3x3(1 -> 16)  BN ReLU  maxpool2     48 -> 24
    conv3x3(16 -> 32) BN ReLU  maxpool2     24 -> 12    (stride 4)
    conv3x3(32 -> 32) BN ReLU               <- DeformConv2dPack in the "dcn-" variants
    conv3x3(32 -> 32) BN ReLU               <- DeformConv2dPack in the "dcn-" variants; 12 x 12 map
    head "fc" (Faster R-CNN style): RoI pooling 7 x 7 (spatial_scale 1/4), fc(32 * 49 -> h) ReLU
        fc(h -> h) ReLU -> 11 class logits (10 digits + background), 4 box deltas
    head "rfcn" (R-FCN): conv1x1(32 -> 128) ReLU, conv1x1 to 11 * k * k class and 4 * k * k box
        position-sensitive score maps, PS RoI pooling k x k (``deform_psroi_pool``, k = ``GROUP``
        = 3: a digit spans about 3 x 4 units), mean over the bins -> 11 class logits, 4 box deltas

Variants (``VARIANTS``): "roialign" (``DeformRoIPool`` without offsets, i.e. RoIAlign with
aligned=True), "deform" (``DeformRoIPoolPack``, gamma 0.1, offset fc of ``OFFSET_FC`` channels, last
layer zero: it starts as RoIAlign), "modulated" (``ModulatedDeformRoIPoolPack``), the two controls
"wide" (RoIAlign, h = 512, more parameters than "deform") and "context" (RoIAlign on each proposal
enlarged 1.5x about its centre; the box deltas stay relative to the proposal), h = 256 otherwise;
"dcn-roialign" and "dcn-deform" (the backbone's last two convolutions deformable, zero offsets at the
start); "rfcn" (PS RoI pooling, no offsets) and "rfcn-deform" (deformable PS RoI pooling: a zero-
initialised 1 x 1 convolution makes 2 k k offset maps, PS RoI pooled into one (x, y) offset per bin,
``trans_std`` 0.1, shared by the class and box maps: it starts as "rfcn"). Under one seed every
variant draws its backbone and then its head from the same generator in the same order, so variants
with the same head start from identical weights (all but "wide" among the fc ones) and the same
function (the deformable parts start at zero offsets).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cudcn import functional as F
from cudcn import nn
from cudcn.backends import array_module
from cudcn.demo.models import late_layers, swap_deformable, trunk

FIRST, WIDTH, POOLED, SCALE = 16, 32, 7, 0.25
GROUP = 3  # R-FCN's k: k x k position-sensitive bins (a digit spans about 3 x 4 units)
HIDDEN, WIDE_HIDDEN, OFFSET_FC, RFCN_WIDTH = 256, 512, 256, 128
CONTEXT, GAMMA, CLASSES = 1.5, 0.1, 11
BACKBONE_DEFORM = late_layers(2)  # the backbone's last two convolutions
VARIANTS = (
    "roialign",
    "deform",
    "modulated",
    "wide",
    "context",
    "dcn-roialign",
    "dcn-deform",
    "rfcn",
    "rfcn-deform",
)
DEFORMABLE = ("deform", "modulated", "dcn-deform", "rfcn-deform")  # deformable RoI pooling


def backbone(rng: np.random.Generator, deformable: bool = False) -> nn.Sequential:
    """The 4-conv backbone above: (B, 1, 48, 48) -> (B, 32, 12, 12); with ``deformable`` its last two
    convolutions are DeformConv2dPack holding the weights drawn here (zero offsets)."""
    net = nn.Sequential(*trunk(WIDTH, rng, depth=2, first=FIRST))
    return swap_deformable(net, BACKBONE_DEFORM) if deformable else net


def enlarge(rois: Any, factor: float) -> Any:
    """``rois`` (R, 5) with each box scaled by ``factor`` about its centre."""
    out = rois.copy()
    centre = (rois[:, 1:3] + rois[:, 3:5]) / 2
    half = (rois[:, 3:5] - rois[:, 1:3]) * (factor / 2)
    out[:, 1:3], out[:, 3:5] = centre - half, centre + half
    return out


class FCHead(nn.Module):
    """Faster R-CNN style: RoI pooling (RoIAlign or a deformable pack), two fc layers, class and box."""

    def __init__(self, variant: str, rng: np.random.Generator) -> None:
        super().__init__()
        self.variant = variant
        hidden = WIDE_HIDDEN if variant == "wide" else HIDDEN
        self.fc = nn.Sequential(
            nn.Linear(WIDTH * POOLED * POOLED, hidden, rng=rng),
            nn.ReLU(),
            nn.Linear(hidden, hidden, rng=rng),
            nn.ReLU(),
        )
        self.cls = nn.Linear(hidden, CLASSES, rng=rng)
        self.box = nn.Linear(hidden, 4, rng=rng)
        if variant in DEFORMABLE:
            pack = nn.ModulatedDeformRoIPoolPack if variant == "modulated" else nn.DeformRoIPoolPack
            self.pool: nn.DeformRoIPool = pack(POOLED, WIDTH, OFFSET_FC, spatial_scale=SCALE, gamma=GAMMA)
            branch_rng = np.random.default_rng(rng.integers(2**63))  # after the shared draws
            for branch in ("offset_fc", "mask_fc"):
                layers = [m for m in getattr(self.pool, branch, []) if isinstance(m, nn.Linear)]
                for m in layers[:-1]:
                    m.reset_parameters(branch_rng)
        else:
            self.pool = nn.DeformRoIPool(POOLED, spatial_scale=SCALE)

    def forward(self, features: Any, rois: Any) -> tuple[Any, Any]:
        h = self.pool(features, enlarge(rois, CONTEXT) if self.variant == "context" else rois)
        h = self.fc(h.reshape(h.shape[0], -1))
        return self.cls(h), self.box(h)

    def offsets(self, features: Any, rois: Any) -> Any:
        """The learned bin offsets (R, 2, 7, 7): (x, y) in units of gamma times the RoI size."""
        return self.pool._offset(self.pool._pool(features, rois, None))


class RFCNHead(nn.Module):
    """R-FCN: position-sensitive score maps, (deformable) PS RoI pooling, a vote over the bins."""

    def __init__(self, deformable: bool, rng: np.random.Generator) -> None:
        super().__init__()
        self.deformable = deformable
        bins = GROUP * GROUP
        self.conv = nn.Conv2d(WIDTH, RFCN_WIDTH, 1, rng=rng)
        self.cls_maps = nn.Conv2d(RFCN_WIDTH, CLASSES * bins, 1, rng=rng)
        self.box_maps = nn.Conv2d(RFCN_WIDTH, 4 * bins, 1, rng=rng)
        if deformable:
            self.offset_maps = nn.Conv2d(RFCN_WIDTH, 2 * bins, 1)
            nn.init.zeros_(self.offset_maps.weight)
            nn.init.zeros_(self.offset_maps.bias)

    def _pool(self, maps: Any, rois: Any, trans: Any, channels: int) -> Any:
        return F.deform_psroi_pool(
            maps,
            rois,
            trans,
            spatial_scale=SCALE,
            output_dim=channels,
            group_size=GROUP,
            pooled_size=GROUP,
            sample_per_part=2,
            trans_std=GAMMA,
        )

    def _trans(self, h: Any, rois: Any) -> Any:
        return self._pool(self.offset_maps(h), rois, None, 2) if self.deformable else None

    def forward(self, features: Any, rois: Any) -> tuple[Any, Any]:
        h = F.relu(self.conv(features))
        trans = self._trans(h, rois)
        logits = self._pool(self.cls_maps(h), rois, trans, CLASSES).mean(axis=(2, 3))
        return logits, self._pool(self.box_maps(h), rois, trans, 4).mean(axis=(2, 3))

    def offsets(self, features: Any, rois: Any) -> Any:
        """The learned bin offsets (R, 2, 7, 7): (x, y) in units of trans_std times the RoI size."""
        return self._trans(F.relu(self.conv(features)), rois)


class Detector(nn.Module):
    """``forward(images (B, 1, 48, 48), rois (R, 5)) -> (logits (R, 11), deltas (R, 4))``;
    rois in canvas pixels, (canvas index, x1, y1, x2, y2)."""

    def __init__(self, variant: str, rng: np.random.Generator) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.backbone = backbone(rng, variant.startswith("dcn-"))
        if variant.startswith("rfcn"):
            self.head: FCHead | RFCNHead = RFCNHead(variant == "rfcn-deform", rng)
        else:
            self.head = FCHead(variant.removeprefix("dcn-"), rng)

    def forward(self, images: Any, rois: Any) -> tuple[Any, Any]:
        return self.head(self.backbone(images), rois)

    def bin_shifts(self, images: Any, rois: Any) -> Any:
        """The learned shift of every bin in canvas pixels, (R, 2, 7, 7) with channel 0 x and 1 y, as
        an array, for the variants in ``DEFORMABLE``; call under ``cudcn.no_grad()``."""
        offset = self.head.offsets(self.backbone(images), rois).data
        xp = array_module(offset)
        box = rois[:, 1:]
        if isinstance(self.head, RFCNHead):  # deform_psroi_pool's RoI size: rounded corners, + 1
            box = xp.sign(box) * xp.floor(xp.abs(box) + 0.5) + xp.asarray([0, 0, 1, 1], box.dtype)
        size = box[:, 2:] - box[:, :2]  # (w, h)
        return offset * GAMMA * size[:, :, None, None]


def count_parameters(net: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(int(p.data.size) for p in net.parameters())
