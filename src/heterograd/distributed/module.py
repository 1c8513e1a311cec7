"""Data-parallel converted models: `DistributedModuleTrainer` (``heterograd train --model M --distributed``).

The same `ModuleTrainer` (loop, probes, run folder, checkpoints) with its model
wrapped in ``torch.nn.parallel.DistributedDataParallel``. A converted layer's backward puts its local update
``-Δ/η`` into ``.grad`` (`heterograd.nn.layers`), so DDP's all-reduce averages the updates of ``W``, ``B``
and the norm parameters alike; nothing in `heterograd.nn` knows about ranks.

Data: every rank holds the data, draws the same global batches (same data-order seed), augments the whole
global batch with the same seeded generator and takes its contiguous shard (`
shard_bounds`). Its loss is scaled by ``n_r · world / n`` so that DDP's mean over ranks is the global batch's
mean, also when shards differ in size: the update is the single-process update on the combined batch for every
rule whose update is linear in the feedback ``u`` plus per-synapse terms (all built-in rules of the module
engine), up to floating-point rounding.

BatchNorm: by default each rank normalises its shard with the shard's own statistics (per-rank statistics, as
torch's BatchNorm under DDP) and DDP broadcasts rank 0's running statistics at every forward, so a model with
BatchNorm trains like a single process with ``batch / world``-sized BatchNorm groups. ``--sync-batchnorm``
(`convert_sync_batchnorm`) normalises over the global batch instead,
and the affine parameters keep their local rule.

Rank 0 writes the run folder and checkpoints; ``--resume`` starts every rank from that checkpoint; a stop signal
on any rank stops every rank at the same step (`RankMixin`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import TrainConfig
from ..data import Dataset
from ..train_module import ModuleTrainer
from .batchnorm import convert_sync_batchnorm
from .trainer import RankMixin, _dist, shard_bounds


class DistributedModuleTrainer(RankMixin, ModuleTrainer):
    """`ModuleTrainer` for one rank of a data-parallel run (under ``torchrun``).

    ``self.model`` is the converted module (probes, evaluation and checkpoints use it, as in one process);
    ``self.ddp`` is its ``DistributedDataParallel`` wrapper, which runs the training forward and backward.
    """

    data_parallel = True

    def __init__(self, config: TrainConfig, dataset: Dataset | None = None) -> None:
        self.join(config)
        super().__init__(config, dataset)
        if self.config.sync_batchnorm:
            convert_sync_batchnorm(self.model, f"--model {self.config.model}")
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # DDP broadcasts rank 0's parameters and buffers here (identical start) and its buffers at every forward
        self.ddp = DistributedDataParallel(self.model, device_ids=ids, output_device=ids[0] if ids else None)

    def batch_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's shard of the global batch ``x`` ``(n, ...)``, ``y``: the scaled loss and the global loss.

        Returns ``(ℓ_r · n_r · world / n, Σ_r ℓ_r · n_r / n)``: backward on the first makes DDP's mean over ranks
        the gradient of the global batch's mean loss; the second (one all-reduce) is what one process logs.
        """
        n = x.shape[0]
        lo, hi = shard_bounds(n, self.rank, self.world_size)
        with self.autocast():
            loss = self.loss_of(self.ddp(x[lo:hi]), y[lo:hi])
        w = (hi - lo) / n
        value = (loss.detach().to(torch.promote_types(loss.dtype, torch.float32)) * w).reshape(1)
        _dist().all_reduce(value)
        return loss * (w * self.world_size), value.reshape(())

    def summary_extra(self) -> dict[str, Any]:
        return {**super().summary_extra(), "world_size": self.world_size}


def make_distributed_trainer(config: TrainConfig, dataset: Dataset | None = None) -> Any:
    """This rank's trainer: `DistributedModuleTrainer` with ``config.model``, else the circuit one."""
    from .trainer import DistributedTrainer

    if config.model is not None:
        return DistributedModuleTrainer(config, dataset)
    return DistributedTrainer(config, dataset)


def resume_distributed(run_dir: str | Path, dataset: Dataset | None = None, **overrides: Any) -> Any:
    """Every rank rebuilds its trainer from ``run_dir/checkpoint.pt`` (written by rank 0; a shared folder).

    The checkpoint holds the unwrapped model, so a data-parallel run resumes with any number of ranks (the
    update depends on the global batch only; with per-rank BatchNorm statistics, on the shard size too), and
    one without ``--sync-batchnorm`` also in a single process, and the other way round.
    """
    from ..checkpoint import load_checkpoint
    from .trainer import DistributedTrainer

    ck = load_checkpoint(run_dir)
    cls = DistributedModuleTrainer if ck.get("config", {}).get("model") is not None else DistributedTrainer
    return cls.resume(run_dir, dataset, **overrides)


__all__ = ["DistributedModuleTrainer", "make_distributed_trainer", "resume_distributed"]
