"""The bilinear (Kolen–Pollack motif) forward and feedback updates, shared by several rules.

Written over the synapse operations (`heterograd.synapses`): ``ΔW = -(C(u, h) + λW)`` with the
correlation ``C`` of the layer's synapse type, so one code path serves the dense Circuit engine and the
dense / conv / embedding layers of converted models. The dense correlation is the Circuit's hot path.

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


def neg_correlation(sig: ForwardSignals) -> Tensor:
    """``-C(u, h_pre)`` laid out like ``W``, a fresh tensor.

    Dense Circuit signals (``scale = None``) give ``mm(uᵀ · (-1/n), h)``, i.e. `neg_outer_mean` bit for bit.
    """
    if sig.C is not None:
        return sig.C.neg()
    return sig.synapse.correlation(sig.u, sig.h_pre, -sig.batch_scale())


def sig_bias_delta(sig: ForwardSignals, b: Tensor, weight_decay: float) -> Tensor:
    """``Δb = -(C(u, 1) + λb)`` ``(n_l,)``: the batch mean of ``u`` (summed over positions for conv)."""
    if sig.scale is None:
        return bias_delta(sig.u, b, weight_decay)
    db = sig.Cb.neg() if sig.Cb is not None else sig.synapse.bias_correlation(sig.u, -sig.scale)
    if weight_decay:
        db.sub_(b, alpha=weight_decay)
    return db


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

    With the layer's synapse type: ``-(C(u, h) + λW)`` and ``-(C(u, 1) + λb)``.
    ``G`` may pass a precomputed ``C(u, h_pre)`` (left unchanged).
    """
    if G is None:
        dW = neg_correlation(sig)
        if weight_decay:
            dW.sub_(W, alpha=weight_decay)
    else:
        dW = torch.add(G, W, alpha=weight_decay).neg_() if weight_decay else G.neg()
    return dW, (sig_bias_delta(sig, b, weight_decay) if b is not None else None)


def feedback_delta(
    sig: FeedbackSignals,
    B: Tensor,
    gain: float,
    weight_decay: float,
    G_forward: Tensor | None = None,
    *,
    negated: bool = False,
) -> Tensor:
    """``ΔB = -(c · C(u_pre, h_post)' + λ B)``, laid out like ``B`` (dense: ``(n_dst, n_src)``, conv: ``W``'s shape).

    ``'`` is the synapse's feedback layout (dense: ``h_post u_preᵀ / n``, the transpose). For an adjacent
    edge ``G_forward`` may pass layer ``src``'s ``C(u, h)`` (or its negation with ``negated=True``, as
    from `neg_correlation`); laid out like ``B`` it is exactly ``C(u_pre, h_post)'`` (no extra
    product). ``G_forward`` is not changed.
    """
    syn = sig.synapse
    if G_forward is None:
        if sig.scale is None and syn.kind == "dense":  # the Circuit engine (any edge, adjacent or not)
            H = outer_mean(sig.h_post, sig.u_pre)
        else:
            H = syn.as_feedback(syn.correlation(sig.u_pre, sig.h_post, sig.batch_scale()))
        scale = -gain
    else:
        H, scale = syn.as_feedback(G_forward), (gain if negated else -gain)
    if scale == 1.0 and weight_decay and H.stride() == B.stride():  # adjacent dense B is laid out like Wᵀ
        return torch.sub(H, B, alpha=weight_decay)  # one pass; same strides in, same strides out
    if scale != 1.0 and H.stride() == B.stride():  # c·H in one pass, laid out like B (= copy then mul_, bit for bit)
        dB = torch.mul(H, scale)
    else:
        dB = torch.empty_like(B)  # B's layout: the later B += η ΔB is one contiguous pass
        dB.copy_(H)  # a blocked transpose when the layouts differ (far faster than an elementwise op on it)
        if scale != 1.0:
            dB.mul_(scale)
    if weight_decay:
        dB.sub_(B, alpha=weight_decay)
    return dB


def bilinear_layer_grads(
    sig: ForwardSignals,
    W: Tensor,
    b: Tensor | None,
    B: Tensor | None,
    weight_decay: float,
    gain: float = 1.0,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(C(u, h) + λW, C(u, 1) + λb, c · C(u, h)' + λB)``: the negated bilinear deltas of one layer.

    The fast path of a converted layer (the ``.grad`` it writes, no sign flips): one correlation (or the one
    the engine precomputed), ``B``'s term read from it laid out like ``B`` before ``W``'s is finished in place.
    ``B`` is ``None`` when it does not learn.
    """
    syn, lam = sig.synapse, weight_decay
    C = sig.C if sig.C is not None else syn.correlation(sig.u, sig.h_pre, sig.batch_scale())
    gB = None
    if B is not None:
        H = syn.as_feedback(C)
        if gain == 1.0:
            gB = torch.add(H, B, alpha=lam) if lam else H.clone()
        else:
            gB = torch.mul(H, gain)
            if lam:
                gB.add_(B, alpha=lam)
    gW = C.add_(W, alpha=lam) if lam else C
    gb = None
    if b is not None:
        gb = sig.Cb if sig.Cb is not None else syn.bias_correlation(sig.u, sig.batch_scale())
        if lam:
            gb.add_(b, alpha=lam)
    return gW, gb, gB
