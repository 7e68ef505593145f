"""Quick start: deformable convolution on NumPy arrays — forward, gradients, and a gradient check.

Run: python examples/quick_start.py
"""

import numpy as np

import cudcn
from cudcn import functional as F

rng = np.random.default_rng(0)
B, C_in, C_out, H, W = 2, 4, 6, 8, 8
x = rng.standard_normal((B, C_in, H, W), dtype=np.float32)
weight = rng.standard_normal((C_out, C_in, 3, 3), dtype=np.float32) / 6
bias = np.zeros(C_out, np.float32)
# One (dy, dx) pair per kernel tap and output position: channel 2k is dy (rows), 2k + 1 is dx
# (columns) for tap k = i * 3 + j; the mask (DCNv2) scales each tap's sample.
offset = rng.uniform(-1.5, 1.5, (B, 2 * 9, H, W)).astype(np.float32)
mask = rng.uniform(0.0, 1.0, (B, 9, H, W)).astype(np.float32)

# 1. Plain arrays in, a plain array out (nothing recorded).
out = F.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
print("output", out.shape, out.dtype)

# With zero offsets and no mask it is an ordinary convolution.
zero = np.zeros_like(offset)
same = F.deform_conv2d(x, zero, weight, bias, padding=1)
print("zero offsets == conv2d:", np.allclose(same, F.conv2d(x, weight, bias, padding=1), atol=1e-5))

# 2. Gradients through the tape: wrap the inputs that need one in Tensors.
xt = cudcn.Tensor(x, requires_grad=True)
ot = cudcn.Tensor(offset, requires_grad=True)
wt = cudcn.Tensor(weight, requires_grad=True)
loss = (F.deform_conv2d(xt, ot, wt, bias, padding=1, mask=mask) ** 2).mean()
loss.backward()
print(f"loss {float(loss.data):.4f}; grads:", xt.grad.shape, ot.grad.shape, wt.grad.shape)

# 3. The same gradients without the tape: the array-level pair, for wiring into other frameworks.
grad_out = 2 * out / out.size
g_input, g_offset, g_weight, g_bias, g_mask = cudcn.ops.deform_conv2d_backward(
    grad_out, x, offset, weight, bias, padding=1, mask=mask
)
print("array-level grad matches tape:", np.allclose(g_offset, ot.grad, rtol=1e-4, atol=1e-6))

# 4. Check the gradients against central finite differences (float64).
x64, off64, w64, m64 = (
    a.astype(np.float64)
    for a in (x[:1, :2, :5, :5], offset[:1, :, :5, :5], weight[:3, :2], mask[:1, :, :5, :5])
)
ok = cudcn.gradcheck(lambda a, o, w, m: F.deform_conv2d(a, o, w, padding=1, mask=m), [x64, off64, w64, m64])
print("gradcheck passed:", ok)
