"""Load an InternImage DCNv3 (and a DCNv4) layer's PyTorch weights into cudcn.

A PyTorch state_dict becomes cudcn's with one NumPy conversion, ``{k: v.numpy() for k, v in
sd.items()}``: ``cudcn.nn.DCNv3`` and ``cudcn.nn.DCNv4`` use InternImage's and DCNv4's parameter
names and shapes. This script builds the two PyTorch modules (written here after InternImage's
``DCNv3_pytorch`` and DCNv4's ``DCNv4``, with a ``grid_sample`` core that follows InternImage's
``dcnv3_core_pytorch`` -- so no CUDA extension is needed), gives them random weights, loads their
state_dicts into cudcn's layers and compares the outputs in float32. Without torch it prints why it
skipped and exits 0.

Run: python examples/dcnv3_from_internimage.py
"""

import sys

import numpy as np

try:
    import torch
    from torch import nn as tnn
    from torch.nn import functional as tf
except ImportError:
    print("skipped: torch not installed (pip install torch to run this example)")
    sys.exit(0)

import cudcn


def core(x, offset, mask, k, pad, group, scale):
    """InternImage's DCNv3 core (stride 1, dilation 1) in PyTorch: the input zero-padded, the
    reference points and the x-major, centred kernel grid (scaled by ``scale``) normalised by the
    padded size, ``grid_sample(align_corners=False)``, the mask's sum over the points."""
    n, h, w, c = x.shape
    xp = tf.pad(x, (0, 0, pad, pad, pad, pad))
    hp, wp = h + 2 * pad, w + 2 * pad
    ho, wo, centre = hp - k + 1, wp - k + 1, (k - 1) // 2
    taps = torch.tensor([(i - centre, j - centre) for i in range(k) for j in range(k)], dtype=x.dtype)
    points = k * k
    ref_x = (centre + 0.5 + torch.arange(wo, dtype=x.dtype)) / wp
    ref_y = (centre + 0.5 + torch.arange(ho, dtype=x.dtype)) / hp
    off = offset.reshape(n, ho, wo, group, points, 2)
    loc_x = ref_x[None, None, :, None, None] + (taps[:, 0] + off[..., 0]) * scale / wp
    loc_y = ref_y[None, :, None, None, None] + (taps[:, 1] + off[..., 1]) * scale / hp
    grid = torch.stack((2 * loc_x - 1, 2 * loc_y - 1), -1).reshape(n, ho * wo, group, points, 2)
    grid = grid.transpose(1, 2).reshape(n * group, ho * wo, points, 2)
    d = c // group
    planes = xp.reshape(n, hp * wp, group, d).permute(0, 2, 3, 1).reshape(n * group, d, hp, wp)
    samples = tf.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    weights = mask.reshape(n, ho * wo, group, points).transpose(1, 2).reshape(n * group, 1, ho * wo, points)
    out = (samples * weights).sum(-1).reshape(n, c, ho * wo)
    return out.transpose(1, 2).reshape(n, ho, wo, c)


class Permute(tnn.Module):
    def __init__(self, *axes):
        super().__init__()
        self.axes = axes

    def forward(self, x):
        return x.permute(*self.axes)


class TorchDCNv3(tnn.Module):
    """InternImage's DCNv3 module structure (LN, GELU, no center feature scale)."""

    def __init__(self, channels=64, kernel_size=3, group=4, offset_scale=1.0):
        super().__init__()
        self.k, self.group, self.scale = kernel_size, group, offset_scale
        c, points = channels, kernel_size * kernel_size
        self.dw_conv = tnn.Sequential(
            tnn.Conv2d(c, c, kernel_size, padding=(kernel_size - 1) // 2, groups=c),
            tnn.Sequential(Permute(0, 2, 3, 1), tnn.LayerNorm(c, eps=1e-6)),
            tnn.GELU(),
        )
        self.offset = tnn.Linear(c, group * points * 2)
        self.mask = tnn.Linear(c, group * points)
        self.input_proj = tnn.Linear(c, c)
        self.output_proj = tnn.Linear(c, c)

    def forward(self, x):
        n, h, w, _ = x.shape
        v = self.input_proj(x)
        x1 = self.dw_conv(x.permute(0, 3, 1, 2))
        mask = tf.softmax(self.mask(x1).reshape(n, h, w, self.group, -1), -1).reshape(n, h, w, -1)
        return self.output_proj(core(v, self.offset(x1), mask, self.k, self.k // 2, self.group, self.scale))


class TorchDCNv4(tnn.Module):
    """DCNv4's module structure: offsets and mask packed in ``offset_mask``, no softmax."""

    def __init__(self, channels=64, kernel_size=3, group=4, offset_scale=1.0):
        super().__init__()
        self.k, self.group, self.scale = kernel_size, group, offset_scale
        self.points = kernel_size * kernel_size
        self.offset_mask = tnn.Linear(channels, -(-group * self.points * 3 // 8) * 8)
        self.value_proj = tnn.Linear(channels, channels)
        self.output_proj = tnn.Linear(channels, channels)

    def forward(self, x, shape):
        (n, length, c), (h, w), p = x.shape, shape, self.points
        v = self.value_proj(x).reshape(n, h, w, c)
        om = self.offset_mask(x)[..., : self.group * 3 * p].reshape(n, h, w, self.group, 3 * p)
        offset, mask = om[..., : 2 * p].reshape(n, h, w, -1), om[..., 2 * p :].reshape(n, h, w, -1)
        out = core(v, offset, mask, self.k, self.k // 2, self.group, self.scale)
        return self.output_proj(out.reshape(n, length, c))


def to_numpy_state(module):
    """The one conversion step: PyTorch tensors to NumPy arrays, same names."""
    return {name: t.detach().cpu().numpy() for name, t in module.state_dict().items()}


def randomize(module, seed):
    """Random weights (the modules start with zero offsets): every parameter matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def compare(name, torch_module, cudcn_layer, x, *shape):
    cudcn_layer.load_state_dict(to_numpy_state(torch_module))
    want = torch_module(torch.from_numpy(x), *shape).detach().numpy()
    got = cudcn_layer(x, *shape).data
    diff = float(np.abs(got - want).max())
    # float32 on both sides, different summation orders: a few ulps of the largest magnitudes.
    ok = diff <= 64 * np.finfo(np.float32).eps * float(np.abs(want).max() + 1)
    print(
        f"{name}: {len(torch_module.state_dict())} tensors loaded; largest difference to the PyTorch "
        f"reference {diff:.2e} (float32), within tolerance: {ok}"
    )
    return ok


def main():
    rng = np.random.default_rng(0)
    torch_v3 = TorchDCNv3(channels=32, group=4, offset_scale=1.0)
    randomize(torch_v3, 1)
    x = rng.standard_normal((2, 9, 11, 32)).astype(np.float32)
    ok = compare("DCNv3", torch_v3, cudcn.nn.DCNv3(channels=32, group=4), x)
    torch_v4 = TorchDCNv4(channels=32, group=2, offset_scale=0.5)
    randomize(torch_v4, 2)
    x4 = rng.standard_normal((2, 9 * 11, 32)).astype(np.float32)
    ok &= compare("DCNv4", torch_v4, cudcn.nn.DCNv4(channels=32, group=2, offset_scale=0.5), x4, (9, 11))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
