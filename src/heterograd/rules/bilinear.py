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

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import FeedbackSignals, ForwardSignals, PendingDelta


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


@dataclass(frozen=True)
class PendingForwardDelta(PendingDelta):
    """``ΔW = -(C(u, h) + λW)`` of a dense layer whose correlation nothing else reads, not formed.

    ``add_to(W, η)`` is ``W ← (1 - ηλ) W - η C(u, h)``: one matrix product accumulated into ``W`` (``addmm_``),
    where forming ``ΔW`` first costs an allocation and a pass over ``W`` (backprop pays both: its gradient is a
    tensor). ``materialize`` is `forward_delta`'s ``ΔW``, bit for bit.
    """

    sig: ForwardSignals
    W: Tensor
    weight_decay: float

    @staticmethod
    def applies(sig: ForwardSignals) -> bool:
        """Whether the layer's correlation can be accumulated into ``W`` (dense, not precomputed)."""
        return sig.C is None and sig.synapse.kind == "dense" and hasattr(sig.synapse, "add_correlation_")

    def materialize(self) -> Tensor:
        dW = neg_correlation(self.sig)
        return dW.sub_(self.W, alpha=self.weight_decay) if self.weight_decay else dW

    def add_to(self, t: Tensor, alpha: float) -> None:
        sig = self.sig
        beta = 1.0 - alpha * self.weight_decay
        sig.synapse.add_correlation_(t, sig.u, sig.h_pre, -alpha * sig.batch_scale(), beta)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PendingFeedbackDelta(PendingDelta):
    """``ΔB = c · H - λB`` of an adjacent edge, with ``H`` the forward layer's ``-C(u, h)`` seen like ``B``.

    ``add_to(B, η)`` adds the view ``H`` with the gain folded into the step (``B += ηc·H``, after ``B *= 1 - ηλ``
    when ``λ > 0``): no ``c·H`` tensor is formed. ``neg_G`` is ``-C(u, h) / G_scale`` laid out like ``W`` (the
    forward layer's correlation, which that layer's own delta may then change in place: use this piece first).
    ``materialize`` is `feedback_delta`'s, bit for bit (from ``neg_G`` itself when ``G_scale = 1``, else from the
    correlation formed afresh from ``forward``, the layer's signals).
    """

    sig: FeedbackSignals
    B: Tensor
    gain: float
    weight_decay: float
    neg_G: Tensor
    G_scale: float = 1.0
    forward: ForwardSignals | None = None

    @staticmethod
    def applies(sig: FeedbackSignals, B: Tensor, neg_G: Tensor) -> bool:
        """Whether ``H`` is laid out like ``B`` (adding it is then one contiguous pass)."""
        return sig.synapse.as_feedback(neg_G).stride() == B.stride()

    def materialize(self) -> Tensor:
        if self.G_scale == 1.0:
            G = self.neg_G
        else:
            assert self.forward is not None, "a scaled correlation needs the forward signals to be formed again"
            G = neg_correlation(self.forward)
        return feedback_delta(self.sig, self.B, self.gain, self.weight_decay, G, negated=True)

    def add_to(self, t: Tensor, alpha: float) -> None:
        if self.weight_decay:
            t.mul_(1.0 - alpha * self.weight_decay)
        t.add_(self.sig.synapse.as_feedback(self.neg_G), alpha=alpha * self.gain * self.G_scale)


@dataclass(frozen=True)
class PendingBiasDelta(PendingDelta):
    """``Δb = -(mean u + λb)`` of a Circuit layer (``u`` ``(n, n_l)``), not formed.

    ``add_to(b, η)`` is ``b ← (1 - ηλ) b - (η/n) uᵀ1``, one matrix-vector product accumulated into ``b``
    (``addmv_``) where forming ``Δb`` takes a mean, a negation, the decay and the addition. ``materialize`` is
    `sig_bias_delta`'s, bit for bit.
    """

    sig: ForwardSignals
    b: Tensor
    weight_decay: float

    @staticmethod
    def applies(sig: ForwardSignals) -> bool:
        """The Circuit engine's per-sample ``u`` ``(n, n_l)`` (a converted layer's carries its own scale)."""
        return sig.scale is None and sig.u.dim() == 2

    def materialize(self) -> Tensor:
        return sig_bias_delta(self.sig, self.b, self.weight_decay)

    def add_to(self, t: Tensor, alpha: float) -> None:
        u = self.sig.u
        ones = u.new_ones(u.shape[0])
        t.addmv_(u.t(), ones, beta=1.0 - alpha * self.weight_decay, alpha=-alpha / u.shape[0])


LERP_MIN_DECAY = 1e-8
"""`PendingDecayedForwardDelta` only for ``λ`` at least this (its correlation is scaled by ``1/λ``)."""


@dataclass(frozen=True)
class PendingDecayedForwardDelta(PendingDelta):
    """``ΔW = -(C(u, h) + λW)`` with ``λ > 0``, given ``neg_G_over_lam = -C(u, h) / λ`` laid out like ``W``.

    ``add_to(W, η)`` is ``W ← (1 - ηλ) W + ηλ · (-C/λ)``, one ``lerp_`` (one pass over ``W`` where subtracting
    ``λW`` and adding takes two). The correlation is formed once, scaled by ``1/λ`` through its small operand, and
    the adjacent ``B`` reads the same tensor (`PendingFeedbackDelta` with ``G_scale = λ``). ``materialize`` forms
    `forward_delta`'s ``ΔW`` afresh from the signals, bit for bit.
    """

    sig: ForwardSignals
    W: Tensor
    weight_decay: float
    neg_G_over_lam: Tensor

    def materialize(self) -> Tensor:
        return neg_correlation(self.sig).sub_(self.W, alpha=self.weight_decay)

    def add_to(self, t: Tensor, alpha: float) -> None:
        w = alpha * self.weight_decay
        if 0.0 < w < 0.5:  # lerp's own formula for a small weight: t + w (E - t)
            t.lerp_(self.neg_G_over_lam, w)
        else:
            t.mul_(1.0 - w).add_(self.neg_G_over_lam, alpha=w)


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
