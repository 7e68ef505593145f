"""Composite sampling points and sampling radius of the stacked deformable layers.

For the deform-variant net (``cudcn.demo.models``) the two deformable layers work on the 7 x 7 map
after the second max-pool; map position p sits at image pixel ``4 p + 1.5`` (two 2 x 2 poolings over
stride-1 convolutions), so the centre unit (3, 3) sits exactly at the image centre 13.5.

Composite points (the paper's Figure 5, for two layers): the output unit q of the last layer samples
its 9 taps at ``q - 1 + (i, j) + offset_last(q)`` on the map; each of these points t is an output
position of the layer before, which samples at ``t - 1 + (i', j') + offset_prev(t)``, the offsets at
the fractional t interpolated bilinearly from that layer's offset map (positions clamped to the map).
That gives 81 points per unit. The **radius** is their mean distance, in image pixels, from the unit's
own position; the unit is the one nearest the digit's centre. With zero offsets it is
:func:`regular_radius` (about 5.8 px).

The same geometry holds for any two stacked 3 x 3 deformable layers (stride 1, padding 1) on a map at
stride 4 after two 2 x 2 poolings, of any size: ``cudcn demo background`` measures the radius of its
segmenter's units (:func:`unit_radius`), the map size read from the offsets' shape.
"""

from __future__ import annotations

import numpy as np

import cudcn
from cudcn import functional as F
from cudcn import nn
from cudcn.demo.data import SIDE
from cudcn.demo.models import DEFORM_LAYERS
from cudcn.demo.train import Device

STRIDE, ORIGIN = 4.0, 1.5  # image pixel of map position p: STRIDE * p + ORIGIN
MAP = 7
_TAPS = np.array([(i, j) for i in (-1.0, 0.0, 1.0) for j in (-1.0, 0.0, 1.0)])  # (9, 2) kernel taps


def predict_with_offsets(
    net: nn.Sequential,
    images: np.ndarray,
    device: Device,
    batch: int = 500,
    layers: tuple[int, ...] = DEFORM_LAYERS,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Predictions (the argmax over axis 1 of ``net``'s output) in eval mode, and the offsets
    (N, 18, H, W) of its deformable ``layers`` (indices in ``net``), first layer first."""
    net.eval()
    preds: list[np.ndarray] = []
    offsets: list[list[np.ndarray]] = [[] for _ in layers]
    with cudcn.no_grad():
        for i in range(0, images.shape[0], batch):
            x = device.put(images[i : i + batch])
            for index, layer in enumerate(net):
                if index in layers:
                    off = layer.conv_offset(x)
                    offsets[layers.index(index)].append(device.get(off.data))
                    geometry = (layer.stride, layer.padding, layer.dilation)
                    x = F.deform_conv2d(x, off, layer.weight, layer.bias, *geometry)
                else:
                    x = layer(x)
            preds.append(device.get(x.data.argmax(axis=1)))
    return np.concatenate(preds), [np.concatenate(o) for o in offsets]


def _offsets_at(offset: np.ndarray, points: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``offset`` (B, 18, H, W) of image ``images`` (N,) at ``points``
    (N, P, 2) map positions, clamped to the map; returns (N, P, 9, 2) = per tap (dy, dx)."""
    n, p = points.shape[:2]
    size = np.array(offset.shape[2:])
    pos = np.clip(points, 0, size - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), size - 2)
    frac = pos - lo
    field = offset.reshape(offset.shape[0], 9, 2, *offset.shape[2:])
    rows = images[:, None]
    out = np.zeros((n, p, 9, 2))
    for dy in (0, 1):
        for dx in (0, 1):
            wy = frac[..., 0] if dy else 1 - frac[..., 0]
            wx = frac[..., 1] if dx else 1 - frac[..., 1]
            value = field[rows, :, :, lo[..., 0] + dy, lo[..., 1] + dx]  # (N, P, 9, 2)
            out += (wy * wx)[..., None, None] * value
    return out


def centre_units(centres: np.ndarray, size: int = MAP) -> np.ndarray:
    """The map position (N, 2) of the unit nearest each digit centre (N, 2) in image pixels, on a
    ``size`` x ``size`` map."""
    return np.clip(np.rint((centres - ORIGIN) / STRIDE), 0, size - 1)


def composite_points(
    offsets: list[np.ndarray], units: np.ndarray, images: np.ndarray | None = None
) -> np.ndarray:
    """The 81 composite sampling points (N, 81, 2) in image pixels (y, x) of the units (N, 2) (map
    positions), from the offsets (B, 18, H, W) of the two stacked layers (first layer first); unit
    n is on image ``images[n]`` (default: image n)."""
    first, last = offsets
    n = units.shape[0]
    rows = np.arange(n) if images is None else np.asarray(images)
    uy, ux = units[:, 0].astype(np.int64), units[:, 1].astype(np.int64)
    own = last.reshape(last.shape[0], 9, 2, *last.shape[2:])[rows, :, :, uy, ux]
    mid = units[:, None, :] + _TAPS[None] + own  # (N, 9, 2) points on the map
    prev = _offsets_at(first, mid, rows)  # (N, 9, 9, 2)
    pts = mid[:, :, None, :] + _TAPS[None, None] + prev
    return STRIDE * pts.reshape(n, 81, 2) + ORIGIN


def unit_radius(offsets: list[np.ndarray], units: np.ndarray, images: np.ndarray | None = None) -> np.ndarray:
    """Radius (N,) in image pixels: mean distance of the composite points of each unit (N, 2) (map
    positions, on image ``images[n]``) from that unit's image position."""
    pts = composite_points(offsets, units, images)
    unit_px = STRIDE * units + ORIGIN
    return np.linalg.norm(pts - unit_px[:, None, :], axis=2).mean(axis=1)


def sampling_radius(offsets: list[np.ndarray], centres: np.ndarray) -> np.ndarray:
    """Radius (N,) in image pixels of the unit nearest each digit centre (N, 2) (:func:`unit_radius`)."""
    return unit_radius(offsets, centre_units(centres, offsets[0].shape[-1]))


def regular_radius() -> float:
    """The radius with all offsets zero (the plain 3 x 3 over 3 x 3 grid)."""
    zero = [np.zeros((1, 18, MAP, MAP))] * 2
    return float(sampling_radius(zero, np.full((1, 2), (SIDE - 1) / 2))[0])


def digit_centres(shift: np.ndarray) -> np.ndarray:
    """Image position (N, 2) of each zoomed digit's centre: the image centre moved by ``shift``."""
    return (SIDE - 1) / 2 + shift
