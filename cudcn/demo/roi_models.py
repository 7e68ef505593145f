"""The RoI demo's detector: a small backbone and a two-fc head over 7 x 7 pooled RoIs.

    conv3x3(1 -> 32)  BN ReLU  maxpool2     64 -> 32
    conv3x3(32 -> 32) BN ReLU  maxpool2     32 -> 16    (stride 4)
    conv3x3(32 -> 32) BN ReLU
    conv3x3(32 -> 32) BN ReLU               16 x 16 feature map
    RoI pooling 7 x 7 (spatial_scale 1/4)   <- the variants differ here
    fc(32 * 49 -> h) ReLU  fc(h -> h) ReLU  -> 11 class logits (10 digits + background), 4 box deltas

Variants (``VARIANTS``): "roialign" (``DeformRoIPool`` without offsets, i.e. RoIAlign with
aligned=True), "deform" (``DeformRoIPoolPack``, gamma 0.1, offset fc of ``OFFSET_FC`` channels, last
layer zero: it starts as RoIAlign), "modulated" (``ModulatedDeformRoIPoolPack``), and the two
controls: "wide" (RoIAlign, h = 512, more parameters than "deform") and "context" (RoIAlign on each
proposal enlarged 1.5x about its centre; the box deltas stay relative to the proposal). h = 256
otherwise. Under one seed every variant draws its backbone and its head from the same generator in
the same order, so all but "wide" start from identical weights (and the deformable ones also from
zero offsets, i.e. the same function as "roialign").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cudcn import nn

WIDTH, POOLED, SCALE = 32, 7, 0.25
HIDDEN, WIDE_HIDDEN, OFFSET_FC = 256, 512, 256
CONTEXT = 1.5
VARIANTS = ("roialign", "deform", "modulated", "wide", "context")
DEFORMABLE = ("deform", "modulated")


def backbone(rng: np.random.Generator) -> nn.Sequential:
    """The 4-conv backbone above: (B, 1, 64, 64) -> (B, 32, 16, 16)."""

    def block(cin: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, WIDTH, 3, padding=1, bias=False, rng=rng),
            nn.BatchNorm2d(WIDTH),
            nn.ReLU(),
        ]

    return nn.Sequential(
        *block(1), nn.MaxPool2d(2), *block(WIDTH), nn.MaxPool2d(2), *block(WIDTH), *block(WIDTH)
    )


def enlarge(rois: Any, factor: float) -> Any:
    """``rois`` (R, 5) with each box scaled by ``factor`` about its centre."""
    out = rois.copy()
    centre = (rois[:, 1:3] + rois[:, 3:5]) / 2
    half = (rois[:, 3:5] - rois[:, 1:3]) * (factor / 2)
    out[:, 1:3], out[:, 3:5] = centre - half, centre + half
    return out


class Detector(nn.Module):
    """``forward(images (B, 1, 64, 64), rois (R, 5)) -> (logits (R, 11), deltas (R, 4))``;
    rois in canvas pixels, (canvas index, x1, y1, x2, y2)."""

    def __init__(self, variant: str, rng: np.random.Generator) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.backbone = backbone(rng)
        hidden = WIDE_HIDDEN if variant == "wide" else HIDDEN
        self.fc = nn.Sequential(
            nn.Linear(WIDTH * POOLED * POOLED, hidden, rng=rng),
            nn.ReLU(),
            nn.Linear(hidden, hidden, rng=rng),
            nn.ReLU(),
        )
        self.cls = nn.Linear(hidden, 11, rng=rng)
        self.box = nn.Linear(hidden, 4, rng=rng)
        if variant in DEFORMABLE:
            pack = nn.DeformRoIPoolPack if variant == "deform" else nn.ModulatedDeformRoIPoolPack
            self.pool: nn.DeformRoIPool = pack(POOLED, WIDTH, OFFSET_FC, spatial_scale=SCALE, gamma=0.1)
            branch_rng = np.random.default_rng(rng.integers(2**63))  # after the shared draws
            for branch in ("offset_fc", "mask_fc"):
                layers = [m for m in getattr(self.pool, branch, []) if isinstance(m, nn.Linear)]
                for m in layers[:-1]:
                    m.reset_parameters(branch_rng)
        else:
            self.pool = nn.DeformRoIPool(POOLED, spatial_scale=SCALE)

    def pooled(self, features: Any, rois: Any) -> Any:
        """The (R, 32, 7, 7) pooled features of ``rois`` on the backbone's ``features``."""
        if self.variant == "context":
            rois = enlarge(rois, CONTEXT)
        return self.pool(features, rois)

    def forward(self, images: Any, rois: Any) -> tuple[Any, Any]:
        h = self.pooled(self.backbone(images), rois)
        h = self.fc(h.reshape(h.shape[0], -1))
        return self.cls(h), self.box(h)

    def bin_offsets(self, images: Any, rois: Any) -> Any:
        """The deformable variants' learned bin offsets (R, 2, 7, 7) (channel 0 x, 1 y, in units of
        gamma times the RoI size), as an array; call under ``cudcn.no_grad()``."""
        features = self.backbone(images)
        offset = self.pool._offset(self.pool._pool(features, rois, None))
        return offset.data


def count_parameters(net: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(int(p.data.size) for p in net.parameters())
