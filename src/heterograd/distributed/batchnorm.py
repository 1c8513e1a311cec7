"""Synchronised BatchNorm for data-parallel converted models (``--sync-batchnorm``), with the plastic affine rule.

Under DDP a BatchNorm layer normalises each rank's shard with that shard's own mean and variance (per-rank
statistics, torch's default), so a data-parallel run is *not* the single-process run on the combined batch
once a model has BatchNorm. `convert_sync_batchnorm` swaps every plastic BatchNorm of a converted model
for a synchronised one: in training the mean and variance are those of the whole global batch (all-reduced
over the process group), so the normalisation, its local derivative and the running statistics are the
single-process ones; the affine parameters keep their local rule ``Δγ = -(Σ u ⊙ x̂ + λγ)``,
``Δβ = -(Σ u + λβ)`` (``u`` the feedback arriving at the layer's output), which DDP then averages over ranks
like every other ``.grad``.

Unlike ``torch.nn.SyncBatchNorm`` this works on CPU (gloo) as well as CUDA (nccl): a few per-channel sums
are all-reduced in the forward (mean, then variance: two passes, exact in float64) and two in the backward.
The normalisation is `heterograd.nn.reduced_batchnorm.ReducedBatchNormFunction` with an all-reduce over
the process group as its ``reduce``: converted layers know nothing about ranks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import HeterogradError
from ..nn.layers import PlasticBatchNorm1d, PlasticBatchNorm2d, PlasticBatchNorm3d
from ..nn.reduced_batchnorm import ReducedBatchNormFunction


def _all_reduce(t: Tensor) -> Tensor:
    """``t`` summed over the process group, in place (unchanged without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


class _SyncPlasticBatchNorm:
    """A plastic BatchNorm that normalises over the global batch of all ranks in training (see module doc)."""

    def forward(self, x: Tensor) -> Tensor:
        bn: Any = self
        if not (bn.training and bn.weight is not None and bn.bias is not None and torch.is_grad_enabled()):
            return super().forward(x)  # type: ignore[misc]  # eval / no affine / no grad: the per-rank layer
        bn._check_input_dim(x)
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        rm, rv = (bn.running_mean, bn.running_var) if bn.track_running_stats else (None, None)
        with torch.autocast(x.device.type, enabled=False):  # as autocast runs batch_norm: in the input's dtype
            return ReducedBatchNormFunction.apply(
                x, bn.weight, bn.bias, rm, rv, momentum, bn.eps, bn.plasticity, _all_reduce
            )


class SyncPlasticBatchNorm1d(_SyncPlasticBatchNorm, PlasticBatchNorm1d):
    """`PlasticBatchNorm1d` with global-batch statistics in training."""


class SyncPlasticBatchNorm2d(_SyncPlasticBatchNorm, PlasticBatchNorm2d):
    """`PlasticBatchNorm2d` with global-batch statistics in training."""


class SyncPlasticBatchNorm3d(_SyncPlasticBatchNorm, PlasticBatchNorm3d):
    """`PlasticBatchNorm3d` with global-batch statistics in training."""


_SYNC: dict[type[nn.Module], type[nn.Module]] = {
    PlasticBatchNorm1d: SyncPlasticBatchNorm1d,
    PlasticBatchNorm2d: SyncPlasticBatchNorm2d,
    PlasticBatchNorm3d: SyncPlasticBatchNorm3d,
}


def convert_sync_batchnorm(model: nn.Module, what: str = "the model") -> int:
    """In place: every plastic BatchNorm of a converted ``model`` normalises over the global batch in training.

    The same module objects, parameters, buffers and rule (the class is swapped, as `heterograd.nn.convert`
    does), so an optimiser built on ``model.parameters()`` stays valid. Returns the number of layers swapped.

    Raises:
        HeterogradError: ``model`` holds no plastic BatchNorm (``--sync-batchnorm`` would change nothing), or a
            BatchNorm that was not converted.
    """
    plain = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    n = 0
    for m in model.modules():
        sync = _SYNC.get(type(m))
        if sync is not None:
            m.__class__ = sync
            n += 1
        elif isinstance(m, _SyncPlasticBatchNorm):
            n += 1
    if n == 0:
        raise HeterogradError(
            f"--sync-batchnorm: {what} has no BatchNorm layer, so there are no statistics to synchronise; drop "
            "--sync-batchnorm"
        )
    if n != len(plain):
        raise HeterogradError(
            "--sync-batchnorm needs a converted model (heterograd.nn.convert) whose BatchNorm layers are plastic"
        )
    return n


__all__ = [
    "SyncPlasticBatchNorm1d",
    "SyncPlasticBatchNorm2d",
    "SyncPlasticBatchNorm3d",
    "convert_sync_batchnorm",
]
