"""A PyTorch re-implementation of the logic of InternImage's ``dcnv3_core_pytorch`` (written here,
not copied): the input zero-padded, InternImage's reference points and x-major kernel grid in
normalised coordinates of the padded input, the grid scaled by offset_scale around its centre,
``grid_sample(align_corners=False, padding_mode="zeros")``, the mask's weighted sum over points.
Used by test_torch.py and benchmarks/bench_dcnv3_cpu.py; needs torch, which cudcn never imports."""

from __future__ import annotations

from typing import Any


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def internimage_dcnv3(
    x: Any,
    offset: Any,
    mask: Any,
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> Any:
    """dcnv3 with cudcn's signature (input (N, H, W, G·D), offset (N, H_out, W_out, G·P·2), mask
    (N, H_out, W_out, G·P)), computed InternImage's way. Unlike its ``F.pad`` call, which pads W by
    pad_h and H by pad_w, pad_h pads H here (the same for the equal pads its modules use)."""
    import torch
    from torch.nn import functional

    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (_pair(v) for v in (kernel_size, stride, padding, dilation))
    g, s = group, offset_scale
    n, h, w, c = x.shape
    xp = functional.pad(x, (0, 0, pw, pw, ph, ph))
    hp, wp = h + 2 * ph, w + 2 * pw
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    ch, cw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    # Reference points: the pixel centre of each output's grid centre, normalised by the padded size.
    ref_y = (ch + 0.5 + sh * torch.arange(ho, dtype=x.dtype)) / hp
    ref_x = (cw + 0.5 + sw * torch.arange(wo, dtype=x.dtype)) / wp
    taps = [(i, j) for i in range(kw) for j in range(kh)]  # x-major
    if remove_center:
        taps.remove((kw // 2, kh // 2))
    grid_x = torch.tensor([(i * dw - cw) / wp for i, _ in taps], dtype=x.dtype)
    grid_y = torch.tensor([(j * dh - ch) / hp for _, j in taps], dtype=x.dtype)
    points = len(taps)
    off = offset.reshape(n, ho, wo, g, points, 2)
    loc_x = ref_x[None, None, :, None, None] + grid_x * s + off[..., 0] * s / wp
    loc_y = ref_y[None, :, None, None, None] + grid_y * s + off[..., 1] * s / hp
    grid = torch.stack((2 * loc_x - 1, 2 * loc_y - 1), dim=-1)
    grid = grid.reshape(n, ho * wo, g, points, 2).transpose(1, 2).reshape(n * g, ho * wo, points, 2)
    d = c // g
    planes = xp.reshape(n, hp * wp, g, d).permute(0, 2, 3, 1).reshape(n * g, d, hp, wp)
    samples = functional.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    weights = mask.reshape(n, ho * wo, g, points).transpose(1, 2).reshape(n * g, 1, ho * wo, points)
    out = (samples * weights).sum(-1).reshape(n, g * d, ho * wo)
    return out.transpose(1, 2).reshape(n, ho, wo, c)
