"""Data-parallel training on ``torch.distributed`` (gloo on CPU, nccl on GPU), launched by ``torchrun``.

Every rank holds the same circuit (same seed, and rank 0's tensors are broadcast at start, as DDP
does), draws the same global batches (same data-order seed) and takes its contiguous shard of each
one. It computes its local deltas on that shard; the deltas (and the batch loss) are all-reduced in
one flat bucket, weighted by shard size ``n_r / n``, exactly as DDP all-reduces gradients; then
every rank applies the same motif step, so the circuits stay identical.

For every rule whose deltas are batch means of per-sample terms plus per-synapse terms (``bp``,
``fa``, ``hsp``, ``poly``, and their combinators) the weighted average equals the delta of the
whole global batch, so a distributed run equals the single-process run on the combined batch
(up to floating-point rounding; ``tests/test_distributed.py`` checks this in float64). A rule's
own state stays per rank (the built-in rules have none).

Command line::

    torchrun --nproc-per-node 2 -m heterograd.distributed --data digits --rule hsp --out runs/ddp
    # same options as `heterograd train`; equivalent to `torchrun ... $(which heterograd) train --distributed ...`
"""

from __future__ import annotations

from .trainer import (
    DistributedTrainer,
    RankMixin,
    allreduce_weighted,
    distributed_local_step,
    init_distributed,
    shard_bounds,
)

__all__ = [
    "DistributedTrainer",
    "RankMixin",
    "allreduce_weighted",
    "distributed_local_step",
    "init_distributed",
    "shard_bounds",
]
