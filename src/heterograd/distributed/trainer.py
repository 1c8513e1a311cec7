"""The data-parallel circuit trainer: process group, shards, the weighted all-reduce of deltas (see the
package docstring, `heterograd.distributed`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..circuits import Circuit
from ..config import TrainConfig
from ..data import Dataset
from ..errors import HeterogradError
from ..losses import Loss
from ..rules import Rule
from ..runtime import resolve_device
from ..train import RunResult, StepOutput, Trainer, local_step

StepFn = Callable[[Circuit, Rule, Any, Loss, Tensor, Tensor], StepOutput]


def _dist() -> Any:
    import torch.distributed as dist

    if not dist.is_available():
        raise HeterogradError("this torch build has no torch.distributed; install a torch with distributed support")
    return dist


def init_distributed(device: str = "cpu", timeout_s: float = 300.0) -> tuple[int, int]:
    """Join the process group started by ``torchrun`` (env ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR/PORT``).

    Uses ``nccl`` for a CUDA device and ``gloo`` otherwise. Returns ``(rank, world_size)``; a group that is
    already initialised is reused.
    """
    dist = _dist()
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise HeterogradError(
                f"distributed training needs torchrun's environment ({', '.join(missing)} unset); launch with: "
                "torchrun --nproc-per-node N -m heterograd.distributed [train options]"
            )
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of a global batch of ``n`` samples that rank ``rank`` takes (contiguous, sizes within 1)."""
    if n < world_size:
        raise HeterogradError(
            f"a global batch of {n} samples cannot be split over {world_size} ranks; use --batch-size >= {world_size}"
        )
    return n * rank // world_size, n * (rank + 1) // world_size


def allreduce_weighted(tensors: Sequence[Tensor | None], weight: float) -> None:
    """In place: ``t ← Σ_ranks weight_r · t_r`` for every non-``None`` tensor, in one flat bucket (as DDP).

    All ranks must pass the same shapes in the same order (``None`` in the same places). The bucket is
    reduced in at least float32 (gloo has no bfloat16 sum).
    """
    dist = _dist()
    present = [t for t in tensors if t is not None]
    if not present:
        return
    dtype = torch.promote_types(present[0].dtype, torch.float32)
    flat = torch.cat([t.reshape(-1).to(dtype) for t in present])
    flat.mul_(weight)
    dist.all_reduce(flat)
    offset = 0
    for t in present:
        k = t.numel()
        t.copy_(flat[offset : offset + k].view(t.shape))
        offset += k


def distributed_local_step(
    circuit: Circuit,
    rule: Rule,
    rule_state: Any,
    loss: Loss,
    x: Tensor,
    y: Tensor,
    *,
    rank: int,
    world_size: int,
    step_fn: StepFn = local_step,
) -> StepOutput:
    """`heterograd.train.local_step` on this rank's shard of a global batch, deltas all-reduced.

    Args:
        x: ``(n, n_0)`` the *global* batch (identical on every rank); y: ``(n,)`` or ``(n, K)``.

    Returns:
        The step output with ``loss`` and ``deltas`` averaged over the global batch (weighted by shard
        size); ``trace`` and ``u`` are this rank's shard only.
    """
    n = x.shape[0]
    lo, hi = shard_bounds(n, rank, world_size)
    out = step_fn(circuit, rule, rule_state, loss, x[lo:hi], y[lo:hi])
    batch_loss = out.loss.detach().clone().reshape(1)
    allreduce_weighted([batch_loss, *out.deltas.flat()], (hi - lo) / n)
    return StepOutput(batch_loss.reshape(()), out.trace, out.u, out.deltas, out.rule_state)


class RankMixin:
    """What every data-parallel trainer of a rank shares: joining the group, one stop for all, rank 0 writes.

    Mixed in before a trainer class (``class X(RankMixin, Trainer)``); `join` runs before the trainer's
    own ``__init__`` so that a CUDA device becomes this rank's GPU (``cuda:LOCAL_RANK``).
    """

    rank: int
    world_size: int
    _stop_signal: int | None
    device: torch.device

    def join(self, config: TrainConfig) -> None:
        """Resolve ``config.device`` for this rank and join the process group (sets ``rank``, ``world_size``).

        Any CUDA device becomes this rank's GPU, ``cuda:LOCAL_RANK`` (torchrun's local rank), one GPU per rank.
        """
        config.device = resolve_device(config.device)
        if config.device.startswith("cuda"):  # one GPU per rank (also when resuming a config saved as cuda:0)
            config.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        self.rank, self.world_size = init_distributed(config.device)
        if config.device.startswith("cuda"):
            torch.cuda.set_device(torch.device(config.device))

    def stop_requested(self) -> bool:
        """Whether any rank was asked to stop (SIGINT/SIGTERM); every rank gets the same answer at the same step.

        The local flag (the signal number, 0 if none) is all-reduced with MAX after every step, so a signal
        that reaches one rank only (e.g. ``kill`` of one process) stops all of them together instead of
        leaving the others waiting in the next all-reduce until the group times out. One 1-element
        all-reduce per step.
        """
        dist = _dist()
        flag = torch.tensor([self._stop_signal or 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
        if signum:
            self._stop_signal = signum
        return signum != 0

    def fit(self, out_dir: str | Path | None = None, *, progress: bool = True, **kwargs: Any) -> RunResult:
        """As `Trainer.fit`; ranks other than 0 write nothing and show no progress."""
        lead = self.rank == 0
        return super().fit(out_dir if lead else None, progress=progress and lead, **kwargs)  # type: ignore[misc]

    def close(self) -> None:
        """Leave the process group together: a barrier (rank 0 has written its files), then destroy the group.

        Call once, after the last `fit`, from every rank. A rank that exits while the others still hold
        the group can abort in gloo's teardown ("terminate called without an active exception").
        """
        dist = _dist()
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


class DistributedTrainer(RankMixin, Trainer):
    """`heterograd.train.Trainer` for one rank of a data-parallel run (start it under ``torchrun``).

    Every rank runs the whole loop on the same global batches; only its local step differs
    (`distributed_local_step`). Rank 0 writes the run directory and shows progress.
    """

    def __init__(self, config: TrainConfig, dataset: Dataset | None = None) -> None:
        self.join(config)
        super().__init__(config, dataset)
        dist = _dist()
        for t in self.circuit.plastic_tensors():  # identical start on every rank, as DDP broadcasts parameters
            dist.broadcast(t.data, src=0)
        base = self.local_step

        def step(circuit: Circuit, rule: Rule, rule_state: Any, loss: Loss, x: Tensor, y: Tensor) -> StepOutput:
            return distributed_local_step(
                circuit, rule, rule_state, loss, x, y, rank=self.rank, world_size=self.world_size, step_fn=base
            )

        self.local_step = step
