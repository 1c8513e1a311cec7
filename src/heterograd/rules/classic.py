"""The reference rules: ``bp`` (autograd baseline), ``fa`` (frozen feedback) and ``hsp`` (bilinear)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from ..errors import HeterogradError
from ..synapses import Synapse
from .base import Deltas, ForwardSignals, Params, PendingDelta, Rule, Signals
from .bilinear import (
    LERP_MIN_DECAY,
    PendingBiasDelta,
    PendingDecayedForwardDelta,
    PendingFeedbackDelta,
    PendingForwardDelta,
    bilinear_layer_grads,
    feedback_delta,
    forward_delta,
    neg_correlation,
    sig_bias_delta,
)
from .registry import register_rule

if TYPE_CHECKING:
    from ..circuits import Circuit, Trace
    from ..losses import Loss


def _check_decay(weight_decay: float) -> None:
    if not weight_decay >= 0:
        raise HeterogradError(f"weight decay must be >= 0, got {weight_decay}; pass e.g. --weight-decay 1e-4")


def _forward_only(signals: Signals, params: Params, weight_decay: float) -> Deltas:
    """Bilinear forward deltas for every layer, feedback frozen (the rules of `ForwardOnly`)."""
    dW, db = [], []
    for sig, W, b in zip(signals.forward, params.W, params.b, strict=True):
        w, bb = forward_delta(sig, W, b, weight_decay)
        dW.append(w)
        db.append(bb)
    return Deltas(dW, db, [None] * len(params.B))


class ForwardOnly(Rule):
    """Shared part of the rules whose feedback never learns (``bp``, ``fa``, ``dfa``, sign symmetry).

    The bilinear forward update ``ΔW = -(C(u, h) + λW)``, ``Δb = -(C(u, 1) + λb)`` for every layer and no
    feedback delta; a subclass decides only where ``u`` comes from (its transport or teaching signal). It is
    not a dataclass: subclasses declare ``weight_decay: float = 0.0`` as their field.
    """

    uses_correlation: ClassVar[bool] = True
    weight_decay: float

    def __post_init__(self) -> None:
        _check_decay(self.weight_decay)

    def deltas(self, signals: Signals, params: Params, state: Any) -> tuple[Deltas, Any]:
        return _forward_only(signals, params, self.weight_decay), state

    def layer_grads(
        self, sig: ForwardSignals, W: Tensor, b: Tensor | None, B: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return bilinear_layer_grads(sig, W, b, None, self.weight_decay)


@register_rule
@dataclass(frozen=True)
class BP(ForwardOnly):
    """Backpropagation baseline: ``u_l = ∇_{p_l} ℓ`` computed by autograd, ``ΔW = -(u hᵀ/n + λW)``.

    The one rule allowed to use autograd; ``B`` is ignored. Equals
    ``torch.optim.SGD(weight_decay=λ)`` step for step.
    """

    name: ClassVar[str] = "bp"
    uses_autograd: ClassVar[bool] = True
    feedback: ClassVar[str] = "none"
    weight_decay: float = 0.0

    def transport_weights(self, W: Tensor, B: Tensor | None, synapse: Synapse, generator: Any = None) -> Tensor:
        """``W`` itself (laid out like ``B``): the exact adjoint, so a converted layer's ``u`` is the gradient."""
        return synapse.as_feedback(W)

    def teaching(self, circuit: Circuit, trace: Trace, x: Tensor, y: Tensor, loss: Loss) -> list[Tensor]:
        from ..autodiff import potential_gradients

        return potential_gradients(circuit, x, y, loss)

    def describe(self) -> str:
        return f"ΔW = -η(∇_W ℓ + {self.weight_decay:g} W)  [autograd]"


@register_rule
@dataclass(frozen=True)
class FA(ForwardOnly):
    """Feedback alignment: the bilinear forward rule with frozen random ``B`` (``G ≡ 0``)."""

    name: ClassVar[str] = "fa"
    weight_decay: float = 0.0

    def describe(self) -> str:
        return f"ΔW = -η(u·h + {self.weight_decay:g} W),  ΔB = 0"


def _bias_piece(sig: ForwardSignals, b: Tensor | None, lam: float) -> Tensor | PendingDelta | None:
    """A layer's ``Δb`` for `HSP.layer_deltas`: pending (one ``addmv_``) where it can be, else formed."""
    if b is None:
        return None
    return PendingBiasDelta(sig, b, lam) if PendingBiasDelta.applies(sig) else sig_bias_delta(sig, b, lam)


@register_rule
@dataclass(frozen=True)
class HSP(Rule):
    """Bilinear heterosynaptic plasticity (the Kolen–Pollack motif, docs/theory.md section 2).

    ``ΔW_l = -(u_l h_{l-1}ᵀ/n + λ W_l)``,  ``ΔB = -(c · h_post u_preᵀ/n + λ B)``.
    On an adjacent edge ``ΔB_l = c ΔW_lᵀ`` up to decay, computed by transposing the
    outer product already formed for ``W`` (same matrix products as backprop).
    ``c = 1`` is Kolen–Pollack (rule ``kp``); the default gain is ``c = 0.5``, so that ``hsp`` by default is not
    ``kp``. ``B - c Wᵀ`` decays as ``(1 - ηλ)^t``.
    """

    name: ClassVar[str] = "hsp"
    plastic_feedback: ClassVar[bool] = True
    feedback: ClassVar[str] = "plastic"
    heterosynaptic: ClassVar[bool] = True
    uses_correlation: ClassVar[bool] = True
    weight_decay: float = 0.0
    feedback_gain: float = 0.5

    def __post_init__(self) -> None:
        _check_decay(self.weight_decay)

    def deltas(self, signals: Signals, params: Params, state: Any) -> tuple[Deltas, Any]:
        lam = self.weight_decay
        # one correlation per layer, -C(u, h); B's deltas read it (laid out like B) before W's are finished in place
        neg_outers = [neg_correlation(sig) for sig in signals.forward]
        dB: list[Tensor | None] = []
        for sig, B in zip(signals.feedback, params.B, strict=True):
            G_fwd = neg_outers[sig.src - 1] if sig.adjacent else None
            dB.append(feedback_delta(sig, B, self.feedback_gain, lam, G_fwd, negated=True))
        dW: list[Tensor | None] = []
        db: list[Tensor | None] = []
        for sig, W, b, nG in zip(signals.forward, params.W, params.b, neg_outers, strict=True):
            dW.append(nG.sub_(W, alpha=lam) if lam else nG)
            db.append(sig_bias_delta(sig, b, lam) if b is not None else None)
        return Deltas(dW, db, dB), state

    def layer_grads(
        self, sig: ForwardSignals, W: Tensor, b: Tensor | None, B: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return bilinear_layer_grads(sig, W, b, B, self.weight_decay, self.feedback_gain)

    def layer_deltas(
        self, signals: Signals, params: Params, state: Any
    ) -> Iterator[tuple[str, int, Tensor | PendingDelta | None]]:
        """`deltas` layer by layer (same ops on each tensor, so bit for bit equal): at most one layer's
        correlation is alive at a time when the caller applies and drops each piece.

        Two pieces come pending (`PendingDelta`), so plain SGD adds them without forming them: a dense layer's
        ``ΔW`` when no adjacent ``B`` reads its correlation (accumulated into ``W`` by the matrix product
        itself, `PendingForwardDelta`), and an adjacent ``ΔB`` laid out like ``B`` (the correlation's view,
        its gain folded into the step, `PendingFeedbackDelta`). With decay ``λ`` a layer that a ``B`` reads forms
        ``-C/λ`` once and adds it to ``W`` by one ``lerp_`` (`PendingDecayedForwardDelta`); each ``Δb`` is one
        ``addmv_`` (`PendingBiasDelta`)."""
        lam, c = self.weight_decay, self.feedback_gain
        adjacent: dict[int, list[int]] = {}
        for k, sig in enumerate(signals.feedback):
            if sig.adjacent:
                adjacent.setdefault(sig.src, []).append(k)
            else:  # no forward correlation to reuse
                yield "B", k, feedback_delta(sig, params.B[k], c, lam, None, negated=True)
        for l in reversed(range(len(signals.forward))):
            sig, W = signals.forward[l], params.W[l]
            if l + 1 not in adjacent and PendingForwardDelta.applies(sig):  # nothing else reads C(u, h)
                yield "W", l, PendingForwardDelta(sig, W, lam)  # W += η ΔW as one product accumulated into W
                yield "b", l, _bias_piece(sig, params.b[l], lam)
                continue
            ks = adjacent.get(l + 1, ())
            # the correlation will be a fresh W-shaped tensor laid out like a contiguous W: W stands in for it
            fused = (
                PendingForwardDelta.applies(sig)
                and W.is_contiguous()
                and all(PendingFeedbackDelta.applies(signals.feedback[k], params.B[k], W) for k in ks)
            )
            if fused and lam >= LERP_MIN_DECAY:  # -C/λ once: W by one lerp_, each B by its view (no c·H tensor)
                nG_lam = sig.synapse.correlation(sig.u, sig.h_pre, -sig.batch_scale() / lam)
                for k in ks:
                    yield "B", k, PendingFeedbackDelta(signals.feedback[k], params.B[k], c, lam, nG_lam, lam, sig)
                yield "W", l, PendingDecayedForwardDelta(sig, W, lam, nG_lam)
                del nG_lam
                yield "b", l, _bias_piece(sig, params.b[l], lam)
                continue
            nG = neg_correlation(sig)
            for k in ks:  # B's delta reads -C(u, h) before W's is finished in place
                fb, B = signals.feedback[k], params.B[k]
                if PendingFeedbackDelta.applies(fb, B, nG):  # B += ηc·H, no c·H tensor
                    yield "B", k, PendingFeedbackDelta(fb, B, c, lam, nG)
                else:
                    yield "B", k, feedback_delta(fb, B, c, lam, nG, negated=True)
            dW = nG.sub_(W, alpha=lam) if lam else nG
            del nG
            yield "W", l, dW
            del dW
            yield "b", l, _bias_piece(sig, params.b[l], lam)

    def describe(self) -> str:
        lam, c = self.weight_decay, self.feedback_gain
        return f"ΔW = -η(u·h + {lam:g} W),  ΔB = -η({c:g} h·u + {lam:g} B)"


@register_rule
@dataclass(frozen=True)
class KP(HSP):
    """Kolen–Pollack: the bilinear rule with gain ``c = 1`` (``ΔB = ΔW'`` up to decay), a named ``hsp``.

    ``B - W'`` decays as ``(1 - ηλ)^t`` from any start; use ``hsp`` for another gain.
    """

    name: ClassVar[str] = "kp"
    feedback_gain: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feedback_gain != 1.0:
            raise HeterogradError(
                f"kp is hsp with feedback gain c = 1, got feedback_gain={self.feedback_gain}; use rule 'hsp' for c != 1"
            )
