"""Optimisers and learning-rate schedules with PyTorch's update rules.

Parameters are :class:`cudcn.Tensor` objects (usually :class:`cudcn.nn.Parameter`); an optimiser reads
``p.grad`` and updates ``p.data`` in place, so it keeps working after ``Module.to`` only if the module
is moved *before* the optimiser is built (as in PyTorch). Parameters whose ``grad`` is ``None`` are
skipped. Parameter groups are dicts with a ``"params"`` list and their own hyperparameters; missing ones
come from the optimiser's defaults::

    opt = cudcn.optim.SGD(
        [{"params": net.body.parameters()}, {"params": offset_params, "lr": 0.01}],
        lr=0.1, momentum=0.9,
    )
    sched = cudcn.optim.StepLR(opt, step_size=10, gamma=0.1)
    for epoch in range(30):
        ...  # loss.backward(); opt.step(); opt.zero_grad()
        sched.step()

For float16/bfloat16 parameters every optimiser keeps a float32 master copy and float32 state;
:class:`GradScaler` scales the loss so that small float16 gradients do not flush to zero.
"""

from cudcn.optim.grad_scaler import GradScaler
from cudcn.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR, StepLR
from cudcn.optim.optimizers import SGD, Adam, AdamW, Optimizer

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "GradScaler",
    "LRScheduler",
    "OneCycleLR",
    "Optimizer",
    "StepLR",
]
