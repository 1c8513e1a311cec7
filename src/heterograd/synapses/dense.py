"""The dense synapse: ``p = h Wᵀ + b`` with ``W`` ``(n_post, n_pre)`` and ``B`` laid out like ``Wᵀ``.

Presynaptic tensors may carry extra position dimensions between batch and features (``(n, T, n_pre)``,
as in a transformer); the correlation sums over them. The 2-D correlation is the hot path of the
`Circuit` engine: ``mm(post.t() · scale, pre)`` scales the small ``(n, I)``
operand, not the ``(I, J)`` result (for ``scale = -1/n`` with ``n`` a power of two it equals
``-postᵀ pre / n`` bit for bit).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Synapse


def _flat(t: Tensor) -> Tensor:
    return t if t.dim() == 2 else t.reshape(-1, t.shape[-1])


class Dense(Synapse):
    """Matrix synapse. ``W`` ``(n_post, n_pre)``, ``b`` ``(n_post,)``, ``B`` ``(n_pre, n_post)`` (like ``Wᵀ``)."""

    kind = "dense"

    def forward(self, h: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
        """``h`` ``(n, ..., n_pre)`` -> ``p`` ``(n, ..., n_post)``."""
        if b is not None and h.dim() == 2:
            return torch.addmm(b, h, W.t())
        p = h @ W.t()
        return p if b is None else p + b

    def transport(self, u: Tensor, B: Tensor, pre: Tensor) -> Tensor:
        """``u`` ``(n, ..., n_post)`` -> ``u Bᵀ`` ``(n, ..., n_pre)``."""
        return u @ B.t()

    def correlation(self, post: Tensor, pre: Tensor, scale: float) -> Tensor:
        """``scale · Σ post ⊗ pre`` ``(n_post, n_pre)`` from ``(n, ..., n_post)``, ``(n, ..., n_pre)``."""
        post, pre = _flat(post), _flat(pre)
        return torch.mm(post.t() if scale == 1.0 else post.t().mul(scale), pre)

    def add_correlation_(self, t: Tensor, post: Tensor, pre: Tensor, scale: float, beta: float = 1.0) -> Tensor:
        """``t ← beta · t + scale · Σ post ⊗ pre`` in place, one matrix product accumulated into ``t``
        ``(n_post, n_pre)`` (no correlation tensor is formed); equals forming `correlation` and adding it, to
        rounding."""
        return t.addmm_(_flat(post).t(), _flat(pre), beta=beta, alpha=scale)

    def bias_correlation(self, post: Tensor, scale: float) -> Tensor:
        s = _flat(post).sum(0)
        return s if scale == 1.0 else s.mul_(scale)

    def feedback_correlation(self, post: Tensor, pre: Tensor) -> Tensor:
        """``postᵀ pre`` ``(n_post_side, n_pre_side)`` for a non-adjacent feedback edge (batch sum, fresh)."""
        return torch.mm(_flat(post).t(), _flat(pre))

    def as_feedback(self, C: Tensor) -> Tensor:
        return C.t()

    def as_forward(self, B: Tensor) -> Tensor:
        return B.t()

    def pre_mean(self, pre: Tensor, post: Tensor, W_shape: tuple[int, ...], scale: float) -> Tensor:
        return _flat(pre).sum(0).mul_(scale).unsqueeze(0)

    def post_mean(self, post: Tensor, pre: Tensor, scale: float) -> Tensor:
        return _flat(post).sum(0).mul_(scale).unsqueeze(-1)


DENSE = Dense()
"""The shared dense synapse (stateless)."""
