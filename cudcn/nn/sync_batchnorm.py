"""``SyncBatchNorm``: batch normalisation whose training statistics span every rank."""

from __future__ import annotations

from cudcn.arrays import Array
from cudcn.distributed.batchnorm import sync_batch_norm
from cudcn.distributed.comm import Communicator, default_communicator
from cudcn.nn.layers import BatchNorm1d, BatchNorm2d, _BatchNorm
from cudcn.nn.module import Module

__all__ = ["SyncBatchNorm"]


class SyncBatchNorm(_BatchNorm):
    """``torch.nn.SyncBatchNorm``: ``BatchNorm1d``/``BatchNorm2d`` over (B, C), (B, C, L) or
    (B, C, H, W) whose training-mode mean and variance are those of the global batch (the union
    of every rank's batch), forward and backward (:func:`cudcn.distributed.batchnorm.
    sync_batch_norm`). The running statistics are updated from the global statistics, identically on
    every rank. In eval mode it uses the running statistics, as ``BatchNorm2d`` does, and
    communicates nothing. With one rank it computes exactly what ``BatchNorm2d`` computes.

    Args:
        num_features, eps, momentum, affine, track_running_stats: as ``BatchNorm2d``.
        comm: the communicator; None: :func:`cudcn.distributed.default_communicator` at the first
            training forward (a local one if ``cudcn.distributed.init`` was never called).

    Example::

        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)   # every BatchNorm1d/2d of net
    """

    input_dims = (2, 3, 4, 5)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        comm: Communicator | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.comm = comm

    def normalize(
        self,
        input: Array,
        running_mean: Array | None,
        running_var: Array | None,
        batch_stats: bool,
        momentum: float,
    ) -> Array:
        if not (batch_stats and self.training):  # eval: local, as torch's SyncBatchNorm
            return super().normalize(input, running_mean, running_var, batch_stats, momentum)
        if self.comm is None:
            self.comm = default_communicator()
        return sync_batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            training=True,
            momentum=momentum,
            eps=self.eps,
            comm=self.comm,
        )

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, comm: Communicator | None = None) -> Module:
        """Replace every ``BatchNorm1d``/``BatchNorm2d`` in ``module`` by a ``SyncBatchNorm`` that
        holds the same Parameter objects and buffers (optimisers built on them keep working),
        mode and hyper-parameters; submodule order and ``state_dict`` keys do not change. Returns
        ``module``, or the new layer when ``module`` itself is a batch norm."""
        converted: dict[int, SyncBatchNorm] = {}

        def convert(bn: _BatchNorm) -> SyncBatchNorm:
            if id(bn) not in converted:
                new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, comm)
                new._parameters.update(bn._parameters)
                new._buffers.update(bn._buffers)
                new.train(bn.training)
                converted[id(bn)] = new
            return converted[id(bn)]

        if isinstance(module, (BatchNorm1d, BatchNorm2d)):
            return convert(module)
        for parent in list(module.modules()):
            for name, child in parent._modules.items():  # assigning in place keeps the order
                if isinstance(child, (BatchNorm1d, BatchNorm2d)):
                    parent._modules[name] = convert(child)
        return module

    def extra_repr(self) -> str:
        return super().extra_repr() + f", comm={self.comm!r}"
