"""InternImage's ``DCNv3`` and DCNv4's ``DCNv4`` layers, with their parameter names, shapes and
initialisation, so that their state_dicts load after a NumPy conversion
(``{k: v.numpy() for k, v in torch_state_dict.items()}``; see examples/dcnv3_from_internimage.py).

Both take channels-last features. Parameters (C = ``channels``, G = ``group``, P = kh·kw, less one
with ``remove_center``):

- DCNv3: ``dw_conv.0`` (depthwise ``dw_kernel_size`` Conv2d), ``dw_conv.1.1`` (LayerNorm, eps 1e-6)
  or ``dw_conv.1.0`` (BatchNorm2d), then GELU / ReLU / SiLU; ``offset`` Linear(C, G·P·2), ``mask``
  Linear(C, G·P) (softmax over the P points of each group), ``input_proj`` and ``output_proj``
  Linear(C, C); with ``center_feature_scale``, ``center_feature_scale_proj_weight`` (G, C) and
  ``center_feature_scale_proj_bias`` (G,).
- DCNv4: ``offset_mask_dw`` (depthwise Conv2d, only with ``dw_kernel_size``), ``offset_mask``
  Linear(C, ceil(G·P·3 / 8)·8) (DCNv4's packing, no softmax), ``value_proj`` and ``output_proj``
  (unless ``without_pointwise``), and the same center-feature-scale pair.
"""

from __future__ import annotations

import math

import numpy as np

from cudcn.arrays import Array
from cudcn.autograd import add, exp, mul, reshape, sigmoid, sub, transpose
from cudcn.nn import init
from cudcn.nn.channels_last import GELU, LayerNorm, SiLU, ToChannelsLast
from cudcn.nn.containers import Sequential
from cudcn.nn.layers import BatchNorm2d, Conv2d, Linear, ReLU
from cudcn.nn.module import Module, Parameter
from cudcn.ops._checks import check_bool, finite_float, positive_int
from cudcn.ops.activation import log_softmax
from cudcn.ops.dcnv3 import dcnv3
from cudcn.ops.dcnv4 import dcnv4, packed_width
from cudcn.ops.linear import linear

__all__ = ["DCNv3", "DCNv4"]


def _build_act(act_layer: str) -> Module:
    acts: dict[str, type[Module]] = {"GELU": GELU, "ReLU": ReLU, "SiLU": SiLU}
    if act_layer not in acts:
        raise ValueError(f"act_layer must be one of {sorted(acts)}, got {act_layer!r}")
    return acts[act_layer]()


def _build_norm(channels: int, norm_layer: str) -> Sequential:
    """InternImage's norm from channels-first to channels-last: BN then permute, or permute then LN."""
    if norm_layer == "BN":
        return Sequential(BatchNorm2d(channels), ToChannelsLast())
    if norm_layer == "LN":
        return Sequential(ToChannelsLast(), LayerNorm(channels, eps=1e-6))
    raise ValueError(f"norm_layer must be 'LN' or 'BN', got {norm_layer!r}")


class _Common(Module):
    """The hyper-parameters both layers share, checked, and the center-feature-scale pair."""

    def _setup(
        self,
        channels: int,
        kernel_size: int,
        stride: int,
        pad: int,
        dilation: int,
        group: int,
        offset_scale: float,
        center_feature_scale: bool,
        remove_center: bool,
    ) -> None:
        self.channels = positive_int("channels", channels)
        self.group = positive_int("group", group)
        if channels % group:
            raise ValueError(f"channels must be divisible by group, got {channels} and {group}")
        self.group_channels = channels // group
        self.kernel_size = positive_int("kernel_size", kernel_size)
        self.stride = positive_int("stride", stride)
        self.pad = positive_int("pad", pad, 0)
        self.dilation = positive_int("dilation", dilation)
        self.offset_scale = finite_float("offset_scale", offset_scale)
        self.center_feature_scale = check_bool("center_feature_scale", center_feature_scale)
        self.remove_center = int(check_bool("remove_center", remove_center))
        if self.remove_center and kernel_size % 2 == 0:
            raise ValueError("remove_center is only compatible with odd kernel size")
        self.points = kernel_size * kernel_size - self.remove_center
        if self.center_feature_scale:
            self.center_feature_scale_proj_weight = Parameter(np.zeros((group, channels), np.float32))
            self.center_feature_scale_proj_bias = Parameter(np.zeros(group, np.float32))

    def _op_args(self) -> tuple:
        k, s, p, d = self.kernel_size, self.stride, self.pad, self.dilation
        return (k, s, p, d, self.group, self.offset_scale, bool(self.remove_center))

    def _blend(self, x: Array, x_proj: Array, features: Array) -> Array:
        """``x·(1 − scale) + x_proj·scale``, scale = sigmoid(features @ W.T + b) per group,
        broadcast over the group's channels; x, x_proj (..., C)."""
        scale = sigmoid(
            linear(features, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias)
        )
        shape = tuple(x.shape[:-1])
        grouped = (*shape, self.group, self.group_channels)
        scale = reshape(scale, (*shape, self.group, 1))
        x, x_proj = reshape(x, grouped), reshape(x_proj, grouped)
        return reshape(add(mul(x, sub(1.0, scale)), mul(x_proj, scale)), (*shape, self.channels))

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"pad={self.pad}, dilation={self.dilation}, group={self.group}, "
            f"offset_scale={self.offset_scale}, remove_center={bool(self.remove_center)}"
        )


class DCNv3(_Common):
    """InternImage's ``DCNv3`` module: ``forward(input)`` on (N, H, W, C) -> (N, H, W, C) (for the
    stride and pad that keep the size, as InternImage uses it: the offsets and mask come from
    the input's resolution).

    ``x = input_proj(input)``; ``x1 = dw_conv(input)`` (depthwise conv, norm, activation);
    ``offset = offset(x1)``; ``mask = softmax over the P points of each group of mask(x1)``;
    ``out = output_proj(dcnv3(x, offset, mask, ...))`` (blended with ``x`` first under
    ``center_feature_scale``). Initialisation (InternImage's): ``offset`` and ``mask`` weights and
    biases 0, the projections' weights Glorot-uniform with biases 0, ``dw_conv`` PyTorch's
    defaults.
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        dw_kernel_size: int | None = None,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        act_layer: str = "GELU",
        norm_layer: str = "LN",
        center_feature_scale: bool = False,
        remove_center: bool = False,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        dw = kernel_size if dw_kernel_size is None else positive_int("dw_kernel_size", dw_kernel_size)
        self.dw_kernel_size = dw
        c = channels
        self.dw_conv = Sequential(
            Conv2d(c, c, dw, padding=(dw - 1) // 2, groups=c, rng=rng),
            _build_norm(c, norm_layer),
            _build_act(act_layer),
        )
        self._setup(
            c, kernel_size, stride, pad, dilation, group, offset_scale, center_feature_scale, remove_center
        )
        self.offset = Linear(c, group * self.points * 2, rng=rng)
        self.mask = Linear(c, group * self.points, rng=rng)
        self.input_proj = Linear(c, c, rng=rng)
        self.output_proj = Linear(c, c, rng=rng)
        for linear_layer in (self.offset, self.mask):
            init.zeros_(linear_layer.weight)
            init.zeros_(linear_layer.bias)
        for linear_layer in (self.input_proj, self.output_proj):
            init.xavier_uniform_(linear_layer.weight, rng=rng)
            init.zeros_(linear_layer.bias)

    def forward(self, input: Array) -> Array:
        n, h, w, _ = input.shape
        x = self.input_proj(input)
        x1 = self.dw_conv(transpose(input, (0, 3, 1, 2)))
        offset = self.offset(x1)
        logits = reshape(self.mask(x1), (n, h, w, self.group, self.points))
        mask = reshape(exp(log_softmax(logits, -1)), (n, h, w, self.group * self.points))
        out = dcnv3(x, offset, mask, *self._op_args())
        if self.center_feature_scale:
            out = self._blend(out, x, x1)
        return self.output_proj(out)


class DCNv4(_Common):
    """DCNv4's ``DCNv4`` module: ``forward(input, shape=None)`` on (N, L, C) with L = H·W
    (``shape = (H, W)``, square when None) -> (N, L, C).

    ``x = value_proj(input)``; ``offset_mask = offset_mask(offset_mask_dw(input) or input)``,
    width ``ceil(G·P·3 / 8)·8`` in DCNv4's packing, no softmax; ``out = output_proj(dcnv4(x,
    offset_mask, ...))`` (blended with ``x`` first under ``center_feature_scale``, from the
    aggregated features as DCNv4 does). Initialisation: ``offset_mask`` 0, projections
    Glorot-uniform with biases 0. None of DCNv4's limits (3x3, channels per group % 16).
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        dw_kernel_size: int | None = None,
        center_feature_scale: bool = False,
        remove_center: bool = False,
        output_bias: bool = True,
        without_pointwise: bool = False,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self._setup(
            channels,
            kernel_size,
            stride,
            pad,
            dilation,
            group,
            offset_scale,
            center_feature_scale,
            remove_center,
        )
        c = channels
        self.dw_kernel_size = (
            None if dw_kernel_size is None else positive_int("dw_kernel_size", dw_kernel_size)
        )
        self.without_pointwise = check_bool("without_pointwise", without_pointwise)
        if self.dw_kernel_size is not None:
            dw = self.dw_kernel_size
            self.offset_mask_dw = Conv2d(c, c, dw, padding=(dw - 1) // 2, groups=c, rng=rng)
        self.offset_mask = Linear(c, packed_width(group, self.points), rng=rng)
        init.zeros_(self.offset_mask.weight)
        init.zeros_(self.offset_mask.bias)
        if not self.without_pointwise:
            self.value_proj = Linear(c, c, rng=rng)
            self.output_proj = Linear(c, c, bias=check_bool("output_bias", output_bias), rng=rng)
            for layer in (self.value_proj, self.output_proj):
                init.xavier_uniform_(layer.weight, rng=rng)
                if layer.bias is not None:
                    init.zeros_(layer.bias)

    def forward(self, input: Array, shape: tuple[int, int] | None = None) -> Array:
        n, length, c = input.shape
        h, w = shape if shape is not None else (math.isqrt(length), math.isqrt(length))
        x = input if self.without_pointwise else self.value_proj(input)
        x = reshape(x, (n, h, w, c))
        om_input = input
        if self.dw_kernel_size is not None:
            grid = transpose(reshape(input, (n, h, w, c)), (0, 3, 1, 2))
            om_input = reshape(transpose(self.offset_mask_dw(grid), (0, 2, 3, 1)), (n, length, c))
        offset_mask = reshape(self.offset_mask(om_input), (n, h, w, -1))
        out = dcnv4(x, offset_mask, *self._op_args())
        if self.center_feature_scale:
            out = self._blend(out, x, out)
        out = reshape(out, (n, length, -1))
        return out if self.without_pointwise else self.output_proj(out)
