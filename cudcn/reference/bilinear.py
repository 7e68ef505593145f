"""The bilinear rule of deform_conv2d's sampling (docs/spec.md), in plain NumPy float64."""

from __future__ import annotations

from typing import NamedTuple, overload

import numpy as np


@overload
def as_float64(a: np.ndarray) -> np.ndarray: ...
@overload
def as_float64(a: None) -> None: ...
def as_float64(a: np.ndarray | None) -> np.ndarray | None:
    """``a`` as a float64 array (None stays None): the references compute in float64 always."""
    return None if a is None else np.asarray(a, dtype=np.float64)


class Corner(NamedTuple):
    """One bilinear neighbour of a set of points; every field is an array shaped like the points.

    ``ok``: the neighbour is used (the point is in range and the neighbour inside the image);
    ``row``, ``col``: its pixel (0 where not ok; never read there); ``w``: its bilinear
    weight (0 where not ok); ``dw_dy``, ``dw_dx``: the weight's derivatives with respect to the point.
    """

    ok: np.ndarray
    row: np.ndarray
    col: np.ndarray
    w: np.ndarray
    dw_dy: np.ndarray
    dw_dx: np.ndarray

    def value(self, img: np.ndarray) -> np.ndarray:
        """The neighbour's pixel of ``img`` (C, H, W) for every point, 0 where not ok: (C, *points).
        Only ok neighbours are read (an empty image, H = 0 or W = 0, has none)."""
        out = np.zeros((img.shape[0], *self.ok.shape))
        out[:, self.ok] = img[:, self.row[self.ok], self.col[self.ok]]
        return out

    def scatter(self, target: np.ndarray, grad: np.ndarray) -> None:
        """``target[:, row, col] += grad * w`` for the ok points only: target (C, H, W), grad
        (C, *points). A neighbour that is not used adds nothing, not even ``grad * 0`` (which is
        NaN for a non-finite grad), and an empty image takes nothing."""
        ok = self.ok
        index = (slice(None), self.row[ok], self.col[ok])  # NumPy's stub omits slices here
        np.add.at(target, index, grad[:, ok] * self.w[ok])  # type: ignore[arg-type]


def bilinear_corners(y: np.ndarray, x: np.ndarray, height: int, width: int) -> list[Corner]:
    """The four floor-based neighbours (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1) of ``(y, x)``.

    A neighbour outside the image is not used (it counts as 0). A point with ``y < -1``, ``y >= height``,
    ``x < -1`` or ``x >= width`` (NaN included) uses no neighbour. At ``y = -1`` exactly the formula
    itself gives the value 0 (the only inside neighbour, row 0, has weight 0) and the forward-difference
    gradient ``v(0) − 0``, as torchvision does; so the value is 0 whenever ``y <= -1``. The range is
    checked before any float-to-int conversion, so non-finite points are safe.
    """
    inside = (y >= -1) & (y < height) & (x >= -1) & (x < width)
    ys = np.where(inside, y, 0.0)
    xs = np.where(inside, x, 0.0)
    y0 = np.floor(ys)
    x0 = np.floor(xs)
    ly = ys - y0
    lx = xs - x0
    y0 = y0.astype(np.int64)
    x0 = x0.astype(np.int64)
    corners = []
    for row, wy, dwy in ((y0, 1.0 - ly, -1.0), (y0 + 1, ly, 1.0)):
        for col, wx, dwx in ((x0, 1.0 - lx, -1.0), (x0 + 1, lx, 1.0)):
            ok = inside & (row >= 0) & (row < height) & (col >= 0) & (col < width)
            corners.append(
                Corner(
                    ok,
                    np.where(ok, row, 0),
                    np.where(ok, col, 0),
                    np.where(ok, wy * wx, 0.0),
                    np.where(ok, dwy * wx, 0.0),
                    np.where(ok, wy * dwx, 0.0),
                )
            )
    return corners
