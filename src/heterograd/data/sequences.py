"""Synthetic sequence tasks that need no download (for the small transformer)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import HeterogradError

IGNORE = -100
"""Target value of positions that carry no loss (``F.cross_entropy(ignore_index=-100)``'s default)."""


def sorting_task(n: int, length: int = 6, vocab: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sort ``length`` random digits: inputs ``(n, 2·length - 1)`` and next-token targets of the same shape.

    A sequence is ``d_1 .. d_L s_1 .. s_L`` (``s`` = ``d`` sorted, digits in ``[0, vocab)``); the model reads all
    but the last token and predicts the next one. Only predictions of the sorted half count: targets of the
    first ``length - 1`` positions are `IGNORE`. Chance accuracy is about ``1 / vocab``.
    """
    if n <= 0 or length < 2 or vocab < 2:
        raise HeterogradError(f"sorting_task needs n > 0, length >= 2, vocab >= 2; got {n}, {length}, {vocab}")
    g = torch.Generator().manual_seed(int(seed))
    d = torch.randint(0, vocab, (n, length), generator=g)
    seq = torch.cat([d, d.sort(dim=1).values], dim=1)
    x, y = seq[:, :-1], seq[:, 1:].clone()
    y[:, : length - 1] = IGNORE
    return x, y
