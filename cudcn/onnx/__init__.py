"""Export cudcn models to standard ONNX (opset >= 19): ``DeformConv``, ``RoiAlign`` and plain nodes.

:func:`export` runs the model once in eval mode under the tape's export trace mode
(:class:`cudcn.autograd.function.Trace`) and translates each recorded call into standard ONNX nodes
with the ``onnx`` package's helpers. Supported calls and their nodes:

=======================================  ====================================================
cudcn                                    ONNX
=======================================  ====================================================
deform_conv2d (DeformConv2d, the Packs)  DeformConv (torchvision's offset layout), mask, bias
conv2d (Conv2d)                          Conv
batch_norm in eval (BatchNorm1d/2d)      BatchNormalization
linear (Linear)                          Gemm (2-D input), MatMul + Add (N-D input)
max_pool2d, avg_pool2d                   MaxPool, AveragePool (count_include_pad)
adaptive_avg_pool2d                      GlobalAveragePool, or AveragePool for equal bins
global_avg_pool2d, mean, sum, max        ReduceMean, ReduceSum, ReduceMax
roi_align                                RoiAlign (aligned=False: output_half_pixel)
deform_roi_pool without offset           RoiAlign (half_pixel)
ms_deform_attn (the MSDA layer)          GatherND, Floor, Where, MatMul, arithmetic (no GridSample)
dcnv3, dcnv4 (DCNv3, DCNv4 layers)       the same subgraph on pixel-unit locations
layer_norm (LayerNorm), gelu (GELU)      LayerNormalization; Erf (or Tanh) and arithmetic
log_softmax                              LogSoftmax
+ - * / neg ** @                         Add Sub Mul Div Neg Pow MatMul
exp log relu sigmoid tanh                Exp Log Relu Sigmoid Tanh
reshape / flatten, transpose, x[...]     Reshape, Transpose, Slice (+ Squeeze for ints)
=======================================  ====================================================

``deform_roi_pool`` with offsets (DeformRoIPoolPack, ModulatedDeformRoIPoolPack) and
``deform_psroi_pool`` have no standard ONNX operator; exporting them raises :class:`ExportError`
naming the op and the module, as does any other call without a translation (losses, dropout in
training mode, advanced indexing). Needs the ``onnx`` extra: ``pip install 'cudcn[onnx]'``;
``import cudcn`` does not import it.
"""

from __future__ import annotations

import os
from typing import IO, Any

__all__ = ["ExportError", "export"]


class ExportError(RuntimeError):
    """A model cannot be written as standard ONNX; the message names the op and the module."""


def export(
    model: Any,
    example_inputs: Any,
    f: str | os.PathLike | IO[bytes] | None,
    *,
    opset: int = 19,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_batch: bool = True,
) -> Any:
    """Write ``model`` as a standard ONNX model and return the ``onnx.ModelProto``.

    The model runs once in eval mode (the previous train/eval modes are restored afterwards) on the
    example inputs, each wrapped in a Tensor; every cudcn op it calls is recorded and translated (see
    the module docstring for the table). Parameters and buffers become initializers named as in
    ``model.state_dict()``; other arrays become constants.

    Args:
        model: a :class:`cudcn.nn.Module` (or any callable built from cudcn ops) returning a Tensor or
            a tuple of Tensors computed from its inputs.
        example_inputs: one NumPy/CuPy array, or a tuple of them (one per ``model`` argument), e.g.
            (B, C, H, W) images, or (features, rois) for a RoI head.
        f: a file path or a writable binary file for the model; None writes nothing. A path is
            written atomically (:func:`cudcn.files.atomic_write`): a failed, interrupted or killed
            export leaves the previous file as it was; its mode and a symbolic link are kept.
        opset: the ONNX opset, at least 19 (the first with ``DeformConv``); 22 or more for a bfloat16
            model (the first where Conv, DeformConv and the poolings take bfloat16).
        input_names, output_names: graph names; default ``input`` / ``output`` (``input_0``, ... when
            there are several).
        dynamic_batch: make axis 0 of every input and output symbolic (``<name>_axis0``; the first
            input's is ``batch``); reshapes of values computed from the inputs keep axis 0 as ``0``
            (copied) or ``-1``, every other axis fixed at its traced size.

    Returns:
        The model, already checked with ``onnx.checker.check_model(full_check=True)``.

    Raises:
        ExportError: an op has no standard ONNX form, an output was not computed by recorded ops, or
            the graph fails ONNX's checker (a bfloat16 model below opset 22, whose Conv, DeformConv
            and pooling take no bfloat16).
        ImportError: the ``onnx`` package is missing.

    Example::

        net = cudcn.nn.Sequential(cudcn.nn.DeformConv2dPack(3, 8, 3, padding=1), cudcn.nn.ReLU())
        cudcn.onnx.export(net, np.zeros((1, 3, 32, 32), np.float32), "net.onnx")
    """
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("cudcn.onnx.export needs the onnx package: pip install 'cudcn[onnx]'") from exc
    from cudcn.files import atomic_write
    from cudcn.onnx.graph import export_model

    model_proto = export_model(model, example_inputs, opset, input_names, output_names, bool(dynamic_batch))
    if isinstance(f, (str, os.PathLike)):
        with atomic_write(f) as file:  # a failed or killed export keeps the previous model
            file.write(model_proto.SerializeToString())
    elif f is not None:
        onnx.save_model(model_proto, f)
    return model_proto
