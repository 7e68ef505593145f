"""Use cudcn's deform_conv2d inside PyTorch: a ``torch.autograd.Function`` around the array-level pair
``cudcn.ops.deform_conv2d_forward`` / ``deform_conv2d_backward``.

The backward recomputes what it needs from the saved inputs (cudcn keeps no hidden state), so the
wrapper is a dozen lines. CPU tensors become NumPy arrays (Numba backend); CUDA tensors become CuPy
arrays through DLPack without a copy (CUDA backend; needs CuPy). float16 and bfloat16 tensors go
through too: NumPy has no bfloat16 of its own, so a CPU bfloat16 tensor is viewed as
``ml_dtypes.bfloat16`` (its bits, no copy). The script checks the wrapper with
``torch.autograd.gradcheck`` in float64, checks float16 and bfloat16 against the float64 result
within cudcn's derived tolerance, and, when torchvision is present, compares it with
``torchvision.ops.deform_conv2d``. Without torch it prints why it skipped and exits 0.

Run: python examples/torch_autograd_function.py
"""

import sys

import numpy as np

try:
    import torch
except ImportError:
    print("skipped: torch not installed (pip install torch to run this example)")
    sys.exit(0)

import cudcn
from cudcn.testing import assert_allclose_to_reference


def _to_array(t):
    """A torch tensor as a NumPy (CPU) or CuPy (CUDA) array sharing its memory; None stays None."""
    if t is None:
        return None
    t = t.detach().contiguous()
    if t.is_cuda:
        import cupy

        return cupy.from_dlpack(t)  # bfloat16 needs a CuPy with the dtype (cudcn info says)
    if t.dtype == torch.bfloat16:  # torch's .numpy() refuses bfloat16: reinterpret the bits
        return t.view(torch.int16).numpy().view(cudcn.dtypes.bfloat16)
    return t.numpy()


def _to_tensor(a, like):
    """The cudcn result ``a`` as a tensor on ``like``'s device (sharing memory where it can)."""
    if a is None:
        return None
    if isinstance(a, np.ndarray) and cudcn.dtypes.is_bfloat16(a.dtype):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(like.device)
    return torch.as_tensor(a, device=like.device)


class DeformConv2dFunction(torch.autograd.Function):
    """deform_conv2d(input, offset, weight, bias, mask, stride, padding, dilation) with cudcn."""

    @staticmethod
    def forward(ctx, input, offset, weight, bias, mask, stride, padding, dilation):
        ctx.save_for_backward(input, offset, weight, bias, mask)
        ctx.geometry = (stride, padding, dilation)
        arrays = [_to_array(t) for t in (input, offset, weight, bias)]
        out = cudcn.ops.deform_conv2d_forward(*arrays, stride, padding, dilation, _to_array(mask))
        return _to_tensor(out, input)

    @staticmethod
    def backward(ctx, grad_out):
        saved = [_to_array(t) for t in ctx.saved_tensors]
        input, offset, weight, bias, mask = saved
        grads = cudcn.ops.deform_conv2d_backward(
            _to_array(grad_out), input, offset, weight, bias, *ctx.geometry, mask
        )
        # one gradient per forward argument: five tensors, then None for the three geometry ones
        return (*(_to_tensor(g, grad_out) for g in grads), None, None, None)


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """torchvision's signature, computed by cudcn."""
    return DeformConv2dFunction.apply(input, offset, weight, bias, mask, stride, padding, dilation)


if __name__ == "__main__":
    gen = torch.Generator().manual_seed(0)
    B, C_in, C_out, H, W = 2, 3, 4, 5, 6

    def rand(*shape, low=-1.0, high=1.0):
        values = torch.rand(*shape, generator=gen, dtype=torch.float64) * (high - low) + low
        return values.requires_grad_()

    x = rand(B, C_in, H, W)
    offset = rand(B, 18, H, W, low=-2.0, high=2.0)
    weight = rand(C_out, C_in, 3, 3)
    bias = rand(C_out)
    mask = rand(B, 9, H, W, low=0.0, high=1.0)

    def fn(*args):
        return deform_conv2d(*args[:4], padding=1, mask=args[4])

    ok = torch.autograd.gradcheck(fn, (x, offset, weight, bias, mask), eps=1e-6, atol=1e-5)
    print("torch.autograd.gradcheck through cudcn:", ok)

    # float16 and bfloat16: output and gradients against float64 on the same rounded inputs, within
    # cudcn's tolerance for a 16-bit result (float32 work, one rounding at the end)
    for dtype, name in ((torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        low = [t.detach().to(dtype).requires_grad_() for t in (x, offset, weight, bias, mask)]
        wide = [t.detach().double().requires_grad_() for t in low]
        out_low, out_wide = fn(*low), fn(*wide)
        out_low.sum().backward()
        out_wide.sum().backward()
        assert out_low.dtype == dtype and all(t.grad.dtype == dtype for t in low)
        names = ("input", "offset", "weight", "bias", "mask")
        pairs = [("output", out_low, out_wide)] + [
            (f"grad {n}", a.grad, b.grad) for n, a, b in zip(names, low, wide, strict=True)
        ]
        for what, a, b in pairs:
            got = a.detach().float().numpy()  # exact: every 16-bit value is a float32
            want = b.detach().numpy()
            assert_allclose_to_reference(got, want, _to_array(a).dtype, name=f"{name} {what}")
        print(f"{name} through cudcn: output and gradients within the derived tolerance")

    try:
        from torchvision.ops import deform_conv2d as tv_deform_conv2d
    except ImportError:
        print("torchvision not installed: comparison skipped")
    else:
        ours = fn(x, offset, weight, bias, mask)
        theirs = tv_deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
        g_ours = torch.autograd.grad(ours.sum(), (x, offset, weight, mask))
        g_theirs = torch.autograd.grad(theirs.sum(), (x, offset, weight, mask))
        err = max(
            [(ours - theirs).abs().max().item()]
            + [(a - b).abs().max().item() for a, b in zip(g_ours, g_theirs, strict=True)]
        )
        print(f"largest difference to torchvision (output and gradients): {err:.2e}")
        if err > 1e-9:
            sys.exit(f"cudcn and torchvision differ by {err:.2e}")
