"""The embedding synapse: a lookup ``p = W[idx]``, i.e. a dense synapse on a one-hot input.

``W`` ``(num, dim)``; the presynaptic signal is an index tensor ``(n, ...)`` (a one-hot activity), so
there is no feedback to send back (``has_transport = False``) and no ``B``. The correlation with a
one-hot input is a scatter-add of the postsynaptic signal into the rows that were looked up.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import HeterogradError
from .base import Synapse


class Embedding(Synapse):
    """Lookup synapse. ``W`` ``(num, dim)``; ``pre`` integer indices ``(n, ...)``; ``post`` ``(n, ..., dim)``.

    Args:
        num: rows of ``W``; padding_idx: a row that never learns (as ``nn.Embedding``), or ``None``.
    """

    kind = "embedding"
    has_transport = False

    def __init__(self, num: int, padding_idx: int | None = None) -> None:
        self.num = int(num)
        self.padding_idx = padding_idx

    def forward(self, h: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
        return F.embedding(h, W, self.padding_idx)

    def transport(self, u: Tensor, B: Tensor, pre: Tensor) -> Tensor:
        raise HeterogradError("an embedding's input is a token index: it receives no feedback")

    def correlation(self, post: Tensor, pre: Tensor, scale: float) -> Tensor:
        """``scale · Σ post ⊗ onehot(pre)`` laid out like ``W`` ``(num, dim)`` (scatter-add)."""
        dim = post.shape[-1]
        C = post.new_zeros(self.num, dim).index_add_(0, pre.reshape(-1), post.reshape(-1, dim))
        if self.padding_idx is not None:
            C[self.padding_idx] = 0
        return C if scale == 1.0 else C.mul_(scale)

    def bias_correlation(self, post: Tensor, scale: float) -> Tensor:
        raise HeterogradError("an embedding has no bias")

    def post_mean(self, post: Tensor, pre: Tensor, scale: float) -> Tensor:
        """``scale · Σ post`` ``(1, dim)``: every row sees the same postsynaptic signal."""
        return post.reshape(-1, post.shape[-1]).sum(0).mul_(scale).unsqueeze(0)

    def as_feedback(self, C: Tensor) -> Tensor:
        return C

    def as_forward(self, B: Tensor) -> Tensor:
        return B

    def __repr__(self) -> str:
        return f"Embedding(num={self.num}, padding_idx={self.padding_idx})"
