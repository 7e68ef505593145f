"""Layers, containers and checkpoints, with PyTorch's (and, for the deformable layers, torchvision's
and mmcv's) names, constructors and initialisations.

Example::

    import numpy as np, cudcn
    from cudcn import nn

    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.DeformConv2dPack(16, 32, 3, padding=1), nn.ReLU(), nn.GlobalAvgPool2d(), nn.Linear(32, 10),
    )
    logits = net(np.zeros((8, 1, 28, 28), np.float32))     # a Tensor (8, 10)
    nn.save_checkpoint(net, "net.npz")
    net.load_state_dict(nn.load_checkpoint("net.npz"))
"""

from cudcn.nn import init
from cudcn.nn.channels_last import GELU, LayerNorm, SiLU, ToChannelsFirst, ToChannelsLast
from cudcn.nn.checkpoint import load_checkpoint, save_checkpoint
from cudcn.nn.containers import ModuleList, Sequential
from cudcn.nn.dcnv3 import DCNv3, DCNv4
from cudcn.nn.deform import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack
from cudcn.nn.layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
    Sigmoid,
)
from cudcn.nn.module import IncompatibleKeys, Module, Parameter
from cudcn.nn.ms_deform_attn import MultiScaleDeformableAttention
from cudcn.nn.roi import DeformRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack
from cudcn.nn.sync_batchnorm import SyncBatchNorm

__all__ = [
    "GELU",
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "DCNv3",
    "DCNv4",
    "DeformConv2d",
    "DeformConv2dPack",
    "DeformRoIPool",
    "DeformRoIPoolPack",
    "Dropout",
    "Flatten",
    "GlobalAvgPool2d",
    "IncompatibleKeys",
    "LayerNorm",
    "Linear",
    "MaxPool2d",
    "ModulatedDeformConv2dPack",
    "ModulatedDeformRoIPoolPack",
    "Module",
    "ModuleList",
    "MultiScaleDeformableAttention",
    "Parameter",
    "ReLU",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "SyncBatchNorm",
    "ToChannelsFirst",
    "ToChannelsLast",
    "init",
    "load_checkpoint",
    "save_checkpoint",
]
