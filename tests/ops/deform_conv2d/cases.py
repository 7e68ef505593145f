"""The configuration table and input makers shared by the deform_conv2d tests of every backend."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cudcn.ops.deform_conv2d import DeformConv2dParams


@dataclass(frozen=True)
class Case:
    """One deform_conv2d configuration."""

    id: str
    batch: int = 2
    in_channels: int = 4
    out_channels: int = 6
    height: int = 6
    width: int = 7
    kernel: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    mask: bool = True
    bias: bool = True

    def params(self) -> DeformConv2dParams:
        """The parameters object the reference and the backends take."""
        return DeformConv2dParams(self.stride, self.padding, self.dilation, self.groups, self.offset_groups)

    def out_size(self) -> tuple[int, int]:
        kh, kw = self.kernel
        oh = (self.height + 2 * self.padding[0] - (self.dilation[0] * (kh - 1) + 1)) // self.stride[0]
        ow = (self.width + 2 * self.padding[1] - (self.dilation[1] * (kw - 1) + 1)) // self.stride[1]
        return oh + 1, ow + 1


CASES = [
    Case("basic"),
    Case("crossing_groups", in_channels=6, out_channels=4, groups=2, offset_groups=3),
    Case("non_square_kernel", kernel=(2, 3), padding=(0, 1)),
    Case("stride_pad_dil", stride=(2, 1), padding=(1, 0), dilation=(2, 1), height=8, width=7),
    Case("no_mask_no_bias", mask=False, bias=False, groups=2, offset_groups=2),
    Case("batch_33", batch=33, in_channels=2, out_channels=3, height=4, width=3),
    Case("one_by_one", kernel=(1, 1), padding=(0, 0), offset_groups=4),
]


def make_inputs(
    case: Case, dtype, seed: int, offset_scale: float = 3.0, avoid_kinks: bool = False
) -> dict[str, np.ndarray | None]:
    """Random host inputs for ``case``. Offsets reach several pixels so samples leave the image;
    with ``avoid_kinks`` their fractional parts stay in [0.1, 0.9] so finite differences see a
    smooth function."""
    rng = np.random.default_rng(seed)
    kh, kw = case.kernel
    oh, ow = case.out_size()
    taps = kh * kw
    og = case.offset_groups
    shape_off = (case.batch, 2 * og * taps, oh, ow)
    if avoid_kinks:
        whole = rng.integers(-2, 2, size=shape_off)
        offset = whole + rng.uniform(0.1, 0.9, size=shape_off)
    else:
        offset = rng.uniform(-offset_scale, offset_scale, size=shape_off)
    x = rng.standard_normal((case.batch, case.in_channels, case.height, case.width))
    w = rng.standard_normal((case.out_channels, case.in_channels // case.groups, kh, kw)) / np.sqrt(
        taps * case.in_channels / case.groups
    )
    inputs = {
        "input": x,
        "offset": offset,
        "weight": w,
        "bias": rng.standard_normal(case.out_channels) if case.bias else None,
        "mask": rng.uniform(0.1, 1.0, (case.batch, og * taps, oh, ow)) if case.mask else None,
    }
    return {k: None if v is None else v.astype(dtype) for k, v in inputs.items()}
