"""Use cudcn's multi-scale deformable attention from PyTorch and JAX, and load a PyTorch checkpoint
of the layer into cudcn.

1. PyTorch: a ``torch.autograd.Function`` around the array-level pair
   ``cudcn.ops.ms_deform_attn_forward`` / ``ms_deform_attn_backward`` (mmcv's
   ``MultiScaleDeformableAttnFunction`` contract without ``im2col_step``), checked with
   ``torch.autograd.gradcheck`` in float64 and against a ``grid_sample`` composition (forward and the
   three gradients). CPU tensors become NumPy arrays; CUDA tensors become CuPy arrays through DLPack.
2. The checkpoint: a PyTorch attention module with mmcv's parameter names (``sampling_offsets``,
   ``attention_weights``, ``value_proj``, ``output_proj``), its ``state_dict`` converted to NumPy and
   loaded with ``load_state_dict`` into ``cudcn.nn.MultiScaleDeformableAttention``; the two agree.
   An mmcv or Deformable DETR checkpoint loads the same way (take the attention's entries, strip
   their prefix).
3. JAX: a ``jax.custom_vjp`` whose forward and backward call the same pair through
   ``jax.pure_callback`` (host callbacks, CPU backend), checked with ``jax.test_util.check_grads`` in
   float64, also under ``jax.jit``.

Each part without its framework prints why it skipped; the script exits 0 either way.

Run: python examples/ms_deform_attn_interop.py   (torch and/or jax: pip install torch jax)
"""

import functools

import numpy as np

import cudcn
from cudcn import nn

LEVELS = ((4, 5), (2, 3))  # (H_l, W_l); a tuple of tuples, hashable for JAX's nondiff_argnums
STARTS = (0, 20)  # the running sum of H_l·W_l
S, N, Q, M, D, P = 26, 2, 4, 2, 3, 2


def make_inputs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """value (N, S, M, D), locations (N, Q, M, L, P, 2), weights (N, Q, M, L, P), float64. Each
    location's pixel position has a fractional part in [0.2, 0.8], away from the kinks of bilinear
    interpolation at whole pixels, where finite differences would disagree with any backward."""
    value = rng.standard_normal((N, S, M, D))
    sizes = np.array([[w, h] for h, w in LEVELS], dtype=float)[:, None, :]  # (L, 1, 2) (W, H)
    pixel = rng.integers(-1, 5, (N, Q, M, len(LEVELS), P, 2)) + rng.uniform(0.2, 0.8, (N, Q, M, 2, P, 2))
    locations = (pixel + 0.5) / sizes
    weights = rng.uniform(0.0, 1.0, (N, Q, M, len(LEVELS), P))
    return value, locations, weights


# ------------------------------------------------------------------------------------- PyTorch


def torch_part() -> None:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("PyTorch part skipped: torch not installed (pip install torch)")
        return

    def to_array(t):
        """A tensor as a NumPy (CPU) or CuPy (CUDA) array sharing its memory."""
        t = t.detach().contiguous()
        if t.is_cuda:
            import cupy

            return cupy.from_dlpack(t)
        return t.numpy()

    class MSDeformAttnFunction(torch.autograd.Function):
        """ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights) by cudcn."""

        @staticmethod
        def forward(ctx, value, spatial_shapes, level_start_index, locations, weights):
            levels = (spatial_shapes.tolist(), level_start_index.tolist())  # host ints for any device
            ctx.levels = levels
            ctx.save_for_backward(value, locations, weights)
            out = cudcn.ops.ms_deform_attn_forward(
                to_array(value), *levels, to_array(locations), to_array(weights)
            )
            return torch.as_tensor(out, device=value.device)

        @staticmethod
        def backward(ctx, grad_out):
            value, locations, weights = (to_array(t) for t in ctx.saved_tensors)
            grads = cudcn.ops.ms_deform_attn_backward(
                to_array(grad_out), value, *ctx.levels, locations, weights
            )
            g_value, g_locations, g_weights = (torch.as_tensor(g, device=grad_out.device) for g in grads)
            return g_value, None, None, g_locations, g_weights  # none for the two integer inputs

    def grid_sample_msda(value, locations, weights):
        """The same attention as one torch grid_sample per level."""
        total = 0
        for level, ((h, w), start) in enumerate(zip(LEVELS, STARTS, strict=True)):
            planes = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(N * M, D, h, w)
            grid = (2 * locations[:, :, :, level] - 1).permute(0, 2, 1, 3, 4).reshape(N * M, -1, P, 2)
            samples = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            lw = weights[:, :, :, level].permute(0, 2, 1, 3).reshape(N * M, 1, -1, P)
            total = total + (samples * lw).sum(-1)  # (N·M, D, Q)
        return total.reshape(N, M, D, -1).permute(0, 3, 1, 2).reshape(N, -1, M * D)

    torch.manual_seed(0)
    shapes, starts = torch.tensor(LEVELS), torch.tensor(STARTS)
    inputs = [torch.tensor(a, requires_grad=True) for a in make_inputs(np.random.default_rng(0))]

    def attend(value, locations, weights):
        return MSDeformAttnFunction.apply(value, shapes, starts, locations, weights)

    ok = torch.autograd.gradcheck(attend, inputs, eps=1e-6, atol=1e-6)
    print(f"torch {torch.__version__}: torch.autograd.gradcheck through cudcn: {ok}")
    ours, theirs = attend(*inputs), grid_sample_msda(*inputs)
    cot = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, inputs, cot)
    g_theirs = torch.autograd.grad(theirs, inputs, cot)
    err = max((a - b).abs().max().item() for a, b in zip((ours, *g_ours), (theirs, *g_theirs), strict=True))
    print(f"largest difference to grid_sample (output and the three gradients): {err:.1e}")
    state_dict_part(torch, MSDeformAttnFunction)


def state_dict_part(torch, function) -> None:
    """A PyTorch module with mmcv's parameter names (its core is the Function above); its
    state_dict, converted to NumPy, loaded into cudcn's layer."""

    class TorchAttention(torch.nn.Module):
        def __init__(self, embed_dims: int) -> None:
            super().__init__()
            points = M * len(LEVELS) * P
            self.sampling_offsets = torch.nn.Linear(embed_dims, points * 2)
            self.attention_weights = torch.nn.Linear(embed_dims, points)
            self.value_proj = torch.nn.Linear(embed_dims, embed_dims)
            self.output_proj = torch.nn.Linear(embed_dims, embed_dims)

        def forward(self, query, value, reference_points):  # batch first, points (x, y)
            bs, nq, _ = query.shape
            v = self.value_proj(value).view(bs, S, M, -1)
            offsets = self.sampling_offsets(query).view(bs, nq, M, len(LEVELS), P, 2)
            weights = self.attention_weights(query).view(bs, nq, M, -1).softmax(-1)
            size = torch.tensor([[w, h] for h, w in LEVELS], dtype=query.dtype)[:, None, :]
            locations = reference_points[:, :, None, :, None, :] + offsets / size
            out = function.apply(
                v, torch.tensor(LEVELS), torch.tensor(STARTS), locations, weights.view(offsets.shape[:-1])
            )
            return self.output_proj(out) + query

    torch.manual_seed(0)
    theirs = TorchAttention(8).double()
    state = {name: t.detach().cpu().numpy() for name, t in theirs.state_dict().items()}  # torch -> NumPy
    ours = nn.MultiScaleDeformableAttention(8, M, len(LEVELS), P, dropout=0.0, batch_first=True).double()
    ours.load_state_dict(state)  # strict: every name and shape must match
    rng = np.random.default_rng(1)
    query, value = rng.standard_normal((N, Q, 8)), rng.standard_normal((N, S, 8))
    ref = rng.uniform(0, 1, (N, Q, len(LEVELS), 2))
    with torch.no_grad():
        want = theirs(*(torch.tensor(a) for a in (query, value, ref))).numpy()
    got = ours(query, value=value, reference_points=ref, spatial_shapes=LEVELS).data
    err = np.abs(got - want).max()
    print(f"torch state_dict -> NumPy -> cudcn load_state_dict: largest difference {err:.1e}")


# ------------------------------------------------------------------------------------- JAX


def jax_part() -> None:
    try:
        import jax
    except ImportError:
        print("JAX part skipped: jax not installed (pip install jax)")
        return
    import jax.numpy as jnp
    from jax.test_util import check_grads

    jax.config.update("jax_enable_x64", True)

    def host(*arrays):
        return [np.asarray(a) for a in arrays]

    @functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
    def ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights):
        def forward(*arrays):
            v, loc, w = host(*arrays)
            return cudcn.ops.ms_deform_attn_forward(v, spatial_shapes, level_start_index, loc, w)

        n, _, m, d = value.shape
        shape = jax.ShapeDtypeStruct((n, locations.shape[1], m * d), value.dtype)
        return jax.pure_callback(forward, shape, value, locations, weights)

    def fwd(value, spatial_shapes, level_start_index, locations, weights):
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        return out, (value, locations, weights)  # cudcn keeps no state: the inputs are the residuals

    def bwd(spatial_shapes, level_start_index, saved, grad_out):
        def backward(*arrays):
            g, v, loc, w = host(*arrays)
            return tuple(cudcn.ops.ms_deform_attn_backward(g, v, spatial_shapes, level_start_index, loc, w))

        shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in saved)
        return jax.pure_callback(backward, shapes, grad_out, *saved)  # value, locations, weights

    ms_deform_attn.defvjp(fwd, bwd)

    def f(value, locations, weights):
        return ms_deform_attn(value, LEVELS, STARTS, locations, weights)

    arrays = make_inputs(np.random.default_rng(2))
    args = tuple(jnp.asarray(a) for a in arrays)
    ours = cudcn.functional.ms_deform_attn(*arrays[:1], LEVELS, STARTS, *arrays[1:])
    diff = float(np.abs(np.asarray(jax.jit(f)(*args)) - ours).max())
    print(f"jax {jax.__version__}, float64: forward equals cudcn's, largest difference {diff:.1e}")
    check_grads(f, args, order=1, modes=["rev"])
    print("jax check_grads (reverse mode, float64) passed: True")
    check_grads(jax.jit(f), args, order=1, modes=["rev"])
    print("the same under jax.jit passed: True")


if __name__ == "__main__":
    torch_part()
    jax_part()
