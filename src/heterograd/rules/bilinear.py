"""The bilinear (Kolen–Pollack motif) forward and feedback updates, shared by several rules."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import FeedbackSignals, ForwardSignals


def outer_mean(post: Tensor, pre: Tensor) -> Tensor:
    """Batch-mean outer product ``postᵀ pre / n``: ``(n, I), (n, J) -> (I, J)``."""
    return torch.mm(post.t(), pre).div_(post.shape[0])


def forward_delta(
    sig: ForwardSignals, W: Tensor, b: Tensor | None, weight_decay: float, G: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """``ΔW = -(u hᵀ/n + λW)`` ``(n_l, n_{l-1})`` and ``Δb = -(mean u + λb)`` ``(n_l,)``.

    ``G`` may pass a precomputed ``outer_mean(u, h_pre)``.
    """
    if G is None:
        G = outer_mean(sig.u, sig.h_pre)
    dW = torch.add(G, W, alpha=weight_decay).neg_() if weight_decay else G.neg()
    db = None
    if b is not None:
        db = sig.u.mean(0).neg_()
        if weight_decay:
            db.sub_(b, alpha=weight_decay)
    return dW, db


def feedback_delta(
    sig: FeedbackSignals, B: Tensor, gain: float, weight_decay: float, G_forward: Tensor | None = None
) -> Tensor:
    """``ΔB = -(c · h_post u_preᵀ / n + λ B)`` ``(n_dst, n_src)``.

    For an adjacent edge ``G_forward`` may pass layer ``src``'s ``u hᵀ/n`` ``(n_src, n_dst)``;
    its transpose is exactly ``h_post u_preᵀ / n`` (no extra matrix product).
    """
    H = G_forward.t() if G_forward is not None else outer_mean(sig.h_post, sig.u_pre)
    dB = H.mul(gain) if gain != 1.0 else H.clone()
    if weight_decay:
        dB.add_(B, alpha=weight_decay)
    return dB.neg_()
