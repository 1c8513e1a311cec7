"""The bilinear (Kolen–Pollack motif) forward and feedback updates, shared by several rules.

Hot path: every delta is written into a freshly allocated tensor with in-place ops (one
allocation per delta, no temporaries of the weights' size), and the feedback delta is laid out
like ``B`` so that adding it to ``B`` is a contiguous pass. The results equal the plain
formulas bit for bit for power-of-two batch sizes (negation and scaling by ``2^-k`` are exact),
to rounding otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import FeedbackSignals, ForwardSignals


def outer_mean(post: Tensor, pre: Tensor) -> Tensor:
    """Batch-mean outer product ``postᵀ pre / n``: ``(n, I), (n, J) -> (I, J)``."""
    return torch.mm(post.t(), pre).div_(post.shape[0])


def neg_outer_mean(post: Tensor, pre: Tensor) -> Tensor:
    """``-postᵀ pre / n`` ``(I, J)``, a fresh tensor.

    The factor ``-1/n`` scales the small ``(n, I)`` operand before the product instead of the ``(I, J)``
    result (one pass over ``n·I`` instead of ``I·J`` numbers); for a power-of-two ``n`` the scaling is
    exact and the result equals ``-outer_mean(post, pre)`` bit for bit, otherwise to rounding.
    """
    return torch.mm(post.t().mul(-1.0 / post.shape[0]), pre)


def bias_delta(u: Tensor, b: Tensor, weight_decay: float) -> Tensor:
    """``Δb = -(mean u + λb)`` ``(n_l,)`` from ``u`` ``(n, n_l)``."""
    db = u.mean(0).neg_()
    if weight_decay:
        db.sub_(b, alpha=weight_decay)
    return db


def forward_delta(
    sig: ForwardSignals, W: Tensor, b: Tensor | None, weight_decay: float, G: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """``ΔW = -(u hᵀ/n + λW)`` ``(n_l, n_{l-1})`` and ``Δb = -(mean u + λb)`` ``(n_l,)``.

    ``G`` may pass a precomputed ``outer_mean(u, h_pre)`` (left unchanged).
    """
    if G is None:
        dW = neg_outer_mean(sig.u, sig.h_pre)
        if weight_decay:
            dW.sub_(W, alpha=weight_decay)
    else:
        dW = torch.add(G, W, alpha=weight_decay).neg_() if weight_decay else G.neg()
    return dW, (bias_delta(sig.u, b, weight_decay) if b is not None else None)


def feedback_delta(
    sig: FeedbackSignals,
    B: Tensor,
    gain: float,
    weight_decay: float,
    G_forward: Tensor | None = None,
    *,
    negated: bool = False,
) -> Tensor:
    """``ΔB = -(c · h_post u_preᵀ / n + λ B)`` ``(n_dst, n_src)``, laid out like ``B``.

    For an adjacent edge ``G_forward`` may pass layer ``src``'s ``u hᵀ/n`` ``(n_src, n_dst)``
    (or its negation ``-u hᵀ/n`` with ``negated=True``, as from :func:`neg_outer_mean`); its
    transpose is exactly ``h_post u_preᵀ / n`` (no extra matrix product). ``G_forward`` is not changed.
    """
    if G_forward is None:
        H, scale = outer_mean(sig.h_post, sig.u_pre), -gain
    else:
        H, scale = G_forward.t(), (gain if negated else -gain)
    if scale == 1.0 and weight_decay and H.stride() == B.stride():  # Circuit lays adjacent B out like Wᵀ
        return torch.sub(H, B, alpha=weight_decay)  # one pass; same strides in, same strides out
    dB = torch.empty_like(B)  # B's layout: the later B += η ΔB is one contiguous pass
    dB.copy_(H)  # a blocked transpose when the layouts differ (far faster than an elementwise op on it)
    if scale != 1.0:
        dB.mul_(scale)
    if weight_decay:
        dB.sub_(B, alpha=weight_decay)
    return dB
