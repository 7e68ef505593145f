"""Use cudcn's deform_conv2d from JAX: a ``jax.custom_vjp`` around the array-level pair
``cudcn.ops.deform_conv2d_forward`` / ``deform_conv2d_backward``, called through ``jax.pure_callback``.

The callbacks receive NumPy arrays on the host and run cudcn's CPU backend; cudcn keeps no state
between forward and backward (the backward recomputes what it needs from the saved inputs), so the
residuals are just the inputs. The script checks the reverse-mode gradients with
``jax.test_util.check_grads`` in float64, under ``jax.jit`` too, compares the forward with cudcn's
own, and checks float16 and bfloat16 (JAX's bfloat16 is ``ml_dtypes.bfloat16``, which cudcn takes)
against float64 within cudcn's derived 16-bit tolerance. Without JAX it prints why it skipped and
exits 0.

Run: python examples/jax_custom_vjp.py   (needs: pip install jax)
"""

import functools
import sys

try:
    import jax
except ImportError:
    print("skipped: jax not installed (pip install jax to run this example)")
    sys.exit(0)

import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

import cudcn
from cudcn.testing import assert_allclose_to_reference

jax.config.update("jax_enable_x64", True)


def _out_shape(x, offset, weight):
    """(B, C_out, H_out, W_out): the offset already has the output's spatial size."""
    return jax.ShapeDtypeStruct((x.shape[0], weight.shape[0], *offset.shape[2:]), x.dtype)


def _host(*arrays):
    return [np.asarray(a) for a in arrays]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def deform_conv2d(x, offset, weight, bias, mask, stride=1, padding=0, dilation=1):
    """torchvision's deform_conv2d (with bias and mask) computed by cudcn; differentiable in JAX."""

    def forward(*arrays):
        x, offset, weight, bias, mask = _host(*arrays)
        return cudcn.ops.deform_conv2d_forward(x, offset, weight, bias, stride, padding, dilation, mask)

    return jax.pure_callback(forward, _out_shape(x, offset, weight), x, offset, weight, bias, mask)


def _fwd(x, offset, weight, bias, mask, stride, padding, dilation):
    out = deform_conv2d(x, offset, weight, bias, mask, stride, padding, dilation)
    return out, (x, offset, weight, bias, mask)


def _bwd(stride, padding, dilation, saved, grad_out):
    def backward(grad_out, *arrays):
        x, offset, weight, bias, mask = _host(*arrays)
        return tuple(
            cudcn.ops.deform_conv2d_backward(
                np.asarray(grad_out), x, offset, weight, bias, stride, padding, dilation, mask
            )
        )

    shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in saved)
    return jax.pure_callback(backward, shapes, grad_out, *saved)


deform_conv2d.defvjp(_fwd, _bwd)


def main() -> None:
    rng = np.random.default_rng(0)
    b, cin, cout, h, w = 2, 4, 3, 5, 6
    stride, padding, dilation = 1, 1, 1
    x = rng.standard_normal((b, cin, h, w))
    # offsets with fractional parts in [0.2, 0.8]: no sample sits within the finite-difference step
    # of an integer, where bilinear interpolation has a kink
    whole = rng.integers(-2, 2, (b, 2 * 9, h, w))
    offset = whole + rng.uniform(0.2, 0.8, whole.shape) * rng.choice([-1, 1], whole.shape)
    weight = rng.standard_normal((cout, cin, 3, 3))
    bias = rng.standard_normal(cout)
    mask = rng.uniform(0.0, 1.0, (b, 9, h, w))
    args = tuple(jnp.asarray(a) for a in (x, offset, weight, bias, mask))

    def f(*a):
        return deform_conv2d(*a, stride, padding, dilation)

    ours = cudcn.functional.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    diff = float(np.abs(np.asarray(jax.jit(f)(*args)) - ours).max())
    print(f"jax {jax.__version__}, float64; forward equals cudcn's: largest difference {diff:.1e}")
    check_grads(f, args, order=1, modes=["rev"])
    print("jax.test_util.check_grads (reverse mode, float64) passed: True")
    check_grads(jax.jit(f), args, order=1, modes=["rev"])
    print("the same under jax.jit passed: True")
    loss = jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2, 3, 4))
    grads = [np.asarray(g) for g in loss(*args)]
    out_tape = cudcn.Tensor(x, requires_grad=True)
    tape = cudcn.functional.deform_conv2d(out_tape, offset, weight, bias, stride, padding, dilation, mask)
    (tape**2).sum().backward()
    print(f"input gradient equals cudcn's tape: {np.allclose(grads[0], out_tape.grad, rtol=1e-12)}")
    for dtype in (jnp.float16, jnp.bfloat16):
        check_half_precision(f, args, dtype)


def check_half_precision(f, args, dtype) -> None:
    """``f``'s output and the gradients of ``sum(f)`` in ``dtype``, under ``jax.jit``, against float64
    on the same rounded inputs, within cudcn's tolerance for a 16-bit result."""
    low = tuple(a.astype(dtype) for a in args)
    wide = tuple(a.astype(jnp.float64) for a in low)
    argnums = tuple(range(len(args)))
    names = ("output", "grad input", "grad offset", "grad weight", "grad bias", "grad mask")
    results = []
    for inputs in (low, wide):
        grads = jax.jit(jax.grad(lambda *a: f(*a).sum(), argnums))(*inputs)
        results.append([np.asarray(jax.jit(f)(*inputs)), *(np.asarray(g) for g in grads)])
    for name, got, want in zip(names, *results, strict=True):
        assert got.dtype == np.dtype(dtype), (name, got.dtype)
        assert_allclose_to_reference(got.astype(np.float64), want, got.dtype, name=name)
    print(f"{np.dtype(dtype).name}: output and gradients within the derived tolerance of float64")


if __name__ == "__main__":
    main()
