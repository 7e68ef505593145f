"""batch_norm: batch normalisation over (B, C) or (B, C, *spatial), as
``torch.nn.functional.batch_norm``, updating the running statistics in place while training.

float16 and bfloat16 inputs are normalised in float32: the batch statistics, the normalisation and
the gradients' sums are float32, the running statistics are float32 arrays, and the output is
rounded once to the input dtype."""

from __future__ import annotations

import numbers
from typing import Any, cast

from cudcn.arrays import Array
from cudcn.autograd import Function, Tensor
from cudcn.backends import array_module
from cudcn.dtypes import compute_dtype, is_float_dtype, narrow, widen
from cudcn.ops._checks import check_arrays, check_bool, check_shape, finite_float


def check_batch_norm(
    input: Array,
    running_mean: Array | None,
    running_var: Array | None,
    weight: Array | None,
    bias: Array | None,
    training: bool,
    momentum: Any,
    eps: Any,
) -> None:
    """Validate the arguments of batch_norm: the running statistics have the input's compute dtype
    (float32 for a 16-bit input), every other array the input's dtype."""
    check_arrays({"input": input, "weight": weight, "bias": bias}, optional=("weight", "bias"))
    stats = {"running_mean": running_mean, "running_var": running_var}
    want = compute_dtype(input.dtype)
    for name, a in stats.items():
        if a is not None and is_float_dtype(getattr(a, "dtype", None)) and a.dtype != want:
            raise TypeError(
                f"{name} must have dtype {want} (the running statistics of a {input.dtype} input "
                f"are kept in {want}), got {a.dtype}"
            )
    if running_mean is not None or running_var is not None:  # their library and device
        check_arrays({"input": input.reshape(-1)[:0].astype(want), **stats}, optional=tuple(stats))
    if not 2 <= input.ndim <= 5:
        raise ValueError(f"input must be (B, C) or (B, C, *spatial), got shape {tuple(input.shape)}")
    channels = input.shape[1]
    for name, a in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if a is not None:
            check_shape(name, a, (channels,), "(C,)")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("training=False needs running_mean and running_var, got None")
    # cast: typeshed's numbers.Real declares only < and <=, every Real type compares both ways
    if not isinstance(momentum, numbers.Real) or not 0 <= cast(float, momentum) <= 1:
        raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
    if finite_float("eps", eps) <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if training and input.size // max(channels, 1) < 2:
        raise ValueError(
            f"training needs more than one value per channel, got input of shape {tuple(input.shape)}"
        )


def channel_sum(a: Array) -> Array:
    """Sum over every axis but 1 of (B, C, *spatial), as two reductions along contiguous axes
    (several times faster in NumPy than one reduction over axes (0, 2, 3))."""
    return a.reshape(a.shape[0], a.shape[1], -1).sum(axis=2).sum(axis=0)


class BatchNormFunction(Function):
    """Tape node of batch_norm; inputs ``(input, weight, bias)``; running statistics are keyword
    parameters (arrays updated in place, not differentiated).

    Every sum over the batch that the statistics need goes through :meth:`sum_over_ranks`, the
    identity here; ``cudcn.distributed``'s synchronised variant overrides it to add the sums of
    every rank, so both share this one implementation."""

    def sum_over_ranks(self, values: list[Any]) -> list[Any]:
        """Per-channel sums (C,) arrays and element counts (ints) of this process's batch, returned
        as the sums over the whole batch (here: this process's batch, unchanged)."""
        return values

    def forward(self, input, weight, bias, *, running_mean, running_var, training, momentum, eps):
        check_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        dtype = input.dtype
        input, weight, bias = widen(input), widen(weight), widen(bias)
        xp = array_module(input)
        shape = (1, input.shape[1]) + (1,) * (input.ndim - 2)
        count = input.size // input.shape[1]
        if training:  # two passes (mean, then centred squares): no cancellation in E[x²] - E[x]²
            total, count = self.sum_over_ranks([channel_sum(input), count])
            mean = total / count
            centred = input - mean.reshape(shape)
            (squares,) = self.sum_over_ranks([channel_sum(centred * centred)])
            var = squares / count
            if running_mean is not None:
                running_mean *= 1 - momentum
                running_mean += momentum * mean
            if running_var is not None:
                running_var *= 1 - momentum
                running_var += (momentum * count / (count - 1)) * var
        else:
            mean, var = running_mean, running_var
            centred = input - mean.reshape(shape)
        invstd = 1 / xp.sqrt(var + eps)
        xhat = centred * invstd.reshape(shape)
        self.shape, self.count, self.training = shape, count, training
        self.save_for_backward(xhat, invstd, weight)
        out = xhat if weight is None else xhat * weight.reshape(shape)
        return narrow(out if bias is None else out + bias.reshape(shape), dtype)

    def backward(self, grad_out):  # in float32 for 16-bit inputs; the tape rounds the gradients
        xhat, invstd, weight = self.saved
        grad_out = widen(grad_out)
        shape = self.shape
        need_input, need_weight, need_bias = self.needs_input_grad
        sum_g = channel_sum(grad_out)
        sum_gx = channel_sum(grad_out * xhat)
        g_input = None
        if need_input:
            scale = invstd if weight is None else invstd * weight
            if self.training:  # the batch statistics depend on the input too
                total_g, total_gx = self.sum_over_ranks([sum_g, sum_gx])
                mean_g = (total_g / self.count).reshape(shape)
                mean_gx = (total_gx / self.count).reshape(shape)
                g_input = (grad_out - mean_g - xhat * mean_gx) * scale.reshape(shape)
            else:
                g_input = grad_out * scale.reshape(shape)
        return g_input, sum_gx if need_weight else None, sum_g if need_bias else None


def _array(a: Any) -> Any:
    return a.data if isinstance(a, Tensor) else a


def batch_norm(
    input: Array,
    running_mean: Array | None,
    running_var: Array | None,
    weight: Array | None = None,
    bias: Array | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Array:
    """Batch normalisation, as ``torch.nn.functional.batch_norm``.

    ``out = (input - mean) / sqrt(var + eps) * weight + bias`` per channel (axis 1). While
    ``training``, mean and var are the batch's (biased var) over every axis but 1, and the running
    statistics, when given, are updated in place: ``running = (1 - momentum) * running + momentum *
    batch`` with the unbiased batch variance (PyTorch's rule). Otherwise the running statistics are
    used.

    Args:
        input: (B, C) or (B, C, *spatial).
        running_mean, running_var: (C,) arrays (not differentiated), or None while training; of
            the input's dtype, float32 for a float16 or bfloat16 input.
        weight, bias: (C,) or None (scale 1, shift 0).
        training, momentum, eps: as above.

    Returns:
        An array or Tensor of ``input``'s shape.
    """
    return BatchNormFunction.apply(
        input,
        weight,
        bias,
        running_mean=_array(running_mean),
        running_var=_array(running_var),
        training=check_bool("training", training),
        momentum=momentum,
        eps=eps,
    )
