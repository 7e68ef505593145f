"""Deformable RoI pooling layers with mmcv's names, constructors and initialisations.

* :class:`DeformRoIPool` — ``forward(input, rois, offset=None)`` around
  :func:`cudcn.functional.deform_roi_pool`.
* :class:`DeformRoIPoolPack` — the offsets are predicted from a first, undeformed pooling by
  ``offset_fc`` (Linear-ReLU-Linear-ReLU-Linear), whose last layer starts at zero.
* :class:`ModulatedDeformRoIPoolPack` — also ``mask_fc`` (Linear-ReLU-Linear-Sigmoid, last Linear
  zero-initialised, so the mask starts at 0.5) scaling the pooled output.

RoI offsets are (R, 2, ph, pw) with **channel 0 x and channel 1 y** (mmcv's order, the opposite of
the convolution offsets), in units of ``gamma`` times the RoI size.
"""

from __future__ import annotations

from cudcn.arrays import Array
from cudcn.functional import deform_roi_pool
from cudcn.nn import init
from cudcn.nn.containers import Sequential
from cudcn.nn.layers import Linear, ReLU, Sigmoid
from cudcn.nn.module import Module
from cudcn.ops._checks import int_pair, positive_int

__all__ = ["DeformRoIPool", "DeformRoIPoolPack", "ModulatedDeformRoIPoolPack"]


class DeformRoIPool(Module):
    """mmcv's ``DeformRoIPool``: (B, C, H, W) features and (R, 5) rois -> (R, C, ph, pw)."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        self.output_size = int_pair("output_size", output_size, 1)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.gamma = float(gamma)

    def _pool(self, input: Array, rois: Array, offset: Array | None) -> Array:
        return deform_roi_pool(
            input,
            rois,
            offset,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.gamma,
        )

    def forward(self, input: Array, rois: Array, offset: Array | None = None) -> Array:
        return self._pool(input, rois, offset)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}"
        )


def _zero_last_linear(branch: Sequential) -> None:
    last = [m for m in branch if isinstance(m, Linear)][-1]
    init.zeros_(last.weight)
    init.zeros_(last.bias)


class DeformRoIPoolPack(DeformRoIPool):
    """mmcv's ``DeformRoIPoolPack``: ``forward(input, rois)``.

    ``offset_fc`` = Linear(ph * pw * output_channels, deform_fc_channels), ReLU,
    Linear(deform_fc_channels, deform_fc_channels), ReLU, Linear(deform_fc_channels, ph * pw * 2)
    (state-dict keys ``offset_fc.0/2/4.weight/bias``). The Linear layers start with PyTorch's default
    initialisation, except the last one, whose weight and bias are 0 (so the layer starts as
    RoIAlign).
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        output_channels: int,
        deform_fc_channels: int = 1024,
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        gamma: float = 0.1,
    ) -> None:
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
        self.output_channels = positive_int("output_channels", output_channels)
        self.deform_fc_channels = positive_int("deform_fc_channels", deform_fc_channels)
        bins = self.output_size[0] * self.output_size[1]
        fc = self.deform_fc_channels
        self.offset_fc = Sequential(
            Linear(bins * self.output_channels, fc),
            ReLU(),
            Linear(fc, fc),
            ReLU(),
            Linear(fc, bins * 2),
        )
        _zero_last_linear(self.offset_fc)

    def _check_channels(self, input: Array) -> None:
        if input.shape[1] != self.output_channels:
            raise ValueError(
                f"input must have output_channels = {self.output_channels} channels, "
                f"got shape {tuple(input.shape)}"
            )

    def _offset(self, pooled: Array) -> Array:
        """(R, 2, ph, pw) offsets from the undeformed pooling (R, C, ph, pw)."""
        flat = pooled.reshape(pooled.shape[0], -1)
        return self.offset_fc(flat).reshape(pooled.shape[0], 2, *self.output_size)

    def forward(self, input: Array, rois: Array) -> Array:  # type: ignore[override]
        """input (B, output_channels, H, W), rois (R, 5) -> (R, output_channels, ph, pw)."""
        self._check_channels(input)
        return self._pool(input, rois, self._offset(self._pool(input, rois, None)))


class ModulatedDeformRoIPoolPack(DeformRoIPoolPack):
    """mmcv's ``ModulatedDeformRoIPoolPack``: ``offset_fc`` as in :class:`DeformRoIPoolPack`, plus
    ``mask_fc`` = Linear(ph * pw * output_channels, deform_fc_channels), ReLU,
    Linear(deform_fc_channels, ph * pw), Sigmoid (keys ``mask_fc.0/2.weight/bias``; the last Linear
    starts at 0, so the mask starts at 0.5). Output: the deformed pooling times the (R, 1, ph, pw)
    mask."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        output_channels: int,
        deform_fc_channels: int = 1024,
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        gamma: float = 0.1,
    ) -> None:
        super().__init__(
            output_size, output_channels, deform_fc_channels, spatial_scale, sampling_ratio, gamma
        )
        bins = self.output_size[0] * self.output_size[1]
        self.mask_fc = Sequential(
            Linear(bins * self.output_channels, self.deform_fc_channels),
            ReLU(),
            Linear(self.deform_fc_channels, bins),
            Sigmoid(),
        )
        _zero_last_linear(self.mask_fc)

    def forward(self, input: Array, rois: Array) -> Array:  # type: ignore[override]
        """input (B, output_channels, H, W), rois (R, 5) -> (R, output_channels, ph, pw)."""
        self._check_channels(input)
        pooled = self._pool(input, rois, None)
        mask = self.mask_fc(pooled.reshape(pooled.shape[0], -1))
        mask = mask.reshape(pooled.shape[0], 1, *self.output_size)
        return self._pool(input, rois, self._offset(pooled)) * mask
