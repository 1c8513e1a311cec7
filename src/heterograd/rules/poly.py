"""The generic polynomial two-signal rule (docs/theory.md section 2) and its batched kernel.

For a synapse with postsynaptic signal ``a`` (and potential ``q``) and presynaptic
signal ``z``, the rule is ``Δw = -Σ_k θ_k f_k`` with the eight features

    k:   0       1       2    3    4        5        6    7
    f:   a·z     q·z     a    z    a²·z     a·z²     w    1

averaged over the batch. For a forward synapse ``W_ij`` the postsynaptic signal
is the feedback potential ``u_i`` at t', its potential ``p_i``, and the
presynaptic signal is ``h_j`` at t, giving ``(u·h, p·h, u, h, u²·h, u·h², W, 1)``.
For a feedback synapse ``B_jk`` it is the lower neuron's activity ``h_j`` at t,
its potential ``p_j``, and the upper neuron's ``u_k`` at t', giving
``(h·u, p·u, h, u, h²·u, h·u², B, 1)``. The bilinear rule is
``θ_W = (1,0,0,0,0,0,λ,0)``, ``θ_B = (c,0,0,0,0,0,λ,0)``.

`poly_delta` works on any number of leading batch dimensions (e.g. a
population of circuits in `heterograd.evolve`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import HeterogradError
from .base import Deltas, FeedbackSignals, ForwardSignals, Params, Rule, Signals
from .registry import register_rule

N_FEATURES = 8
W_FEATURES: tuple[str, ...] = ("u·h", "p·h", "u", "h", "u²·h", "u·h²", "W", "1")
B_FEATURES: tuple[str, ...] = ("h·u", "p·u", "h", "u", "h²·u", "h·u²", "B", "1")


def bilinear_theta(weight_decay: float = 0.0, feedback_gain: float = 1.0) -> tuple[Tensor, Tensor]:
    """The coefficient vectors ``(θ_W, θ_B)``, each ``(8,)``, of the bilinear (``hsp``) rule."""
    tw = torch.zeros(N_FEATURES, dtype=torch.float64)
    tb = torch.zeros(N_FEATURES, dtype=torch.float64)
    tw[0], tw[6] = 1.0, weight_decay
    tb[0], tb[6] = feedback_gain, weight_decay
    return tw, tb


def poly_delta(theta: Tensor, post: Tensor, post_pot: Tensor, pre: Tensor, w: Tensor) -> Tensor:
    """Polynomial rule delta for one synapse matrix, batched over leading dims.

    Args:
        theta: ``(..., 8)`` coefficients.
        post: ``(..., n, I)`` postsynaptic signal ``a``.
        post_pot: ``(..., n, I)`` postsynaptic potential ``q``.
        pre: ``(..., n, J)`` presynaptic signal ``z``.
        w: ``(..., I, J)`` current weights.

    Returns:
        ``(..., I, J)`` the delta ``-Σ_k θ_k f_k`` (batch means), a new tensor.
    """
    n = post.shape[-2]
    th = theta.to(post.dtype)[..., None, None, :]  # (..., 1, 1, 8)
    left = th[..., 0] * post + th[..., 1] * post_pot + th[..., 4] * post * post  # (..., n, I)
    acc = torch.matmul(left.transpose(-1, -2), pre)
    if bool((theta[..., 5] != 0).any()):
        acc = acc + th[..., 5] * torch.matmul(post.transpose(-1, -2), pre * pre)
    acc = acc / n
    acc = acc + th[..., 2] * post.mean(-2).unsqueeze(-1) + th[..., 3] * pre.mean(-2).unsqueeze(-2)
    acc = acc + th[..., 6] * w + th[..., 7]
    return acc.neg()


def format_poly(theta: Sequence[float] | Tensor, names: Sequence[str], symbol: str, digits: int = 3) -> str:
    """Readable equation, e.g. ``ΔW = -η(0.93 u·h - 0.02 p·h + 0.001 W)``."""
    vals = [float(v) for v in (theta.tolist() if isinstance(theta, Tensor) else theta)]
    terms = []
    for v, nm in zip(vals, names, strict=True):
        if abs(v) < 10 ** (-digits - 1):
            continue
        mag = f"{abs(v):.{digits}g}"
        body = mag if nm == "1" else f"{mag} {nm}"
        sign = "-" if v < 0 else "+"
        terms.append((sign, body))
    if not terms:
        return f"Δ{symbol} = 0"
    first_sign, first = terms[0]
    text = ("-" if first_sign == "-" else "") + first
    for sign, body in terms[1:]:
        text += f" {sign} {body}"
    return f"Δ{symbol} = -η({text})"


def _as_theta(value: Sequence[float] | Tensor, what: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.shape[-1:] != (N_FEATURES,) or t.dim() > 2:
        raise HeterogradError(
            f"{what} must have {N_FEATURES} coefficients {W_FEATURES} (or one row of 8 per layer), "
            f"got shape {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise HeterogradError(f"{what} contains NaN or inf; give finite coefficients")
    return t


def _per_sample(u: Tensor, scale: float) -> tuple[Tensor, float]:
    """Per-sample ``u`` and the batch-mean factor ``1/n`` from a signal whose correlation factor is ``scale``."""
    n = u.shape[0]
    f = scale * n
    return (u if f == 1.0 else u * f), 1.0 / n


def _synapse_forward_delta(
    th: Tensor, sig: ForwardSignals, W: Tensor, b: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """``-Σ_k θ_k f_k`` for ``W`` and ``b`` of any synapse type, features as correlations ``C(f(u, p), g(h))``."""
    syn, t = sig.synapse, [float(v) for v in th]
    u, m = _per_sample(sig.u, sig.batch_scale())
    h = sig.h_pre
    if t[1] and sig.p is None:
        raise HeterogradError("poly's p·h feature needs the layer potential p, which these signals lack")
    left = t[0] * u
    if t[1]:
        left = left + t[1] * sig.p
    if t[4]:
        left = left + t[4] * u * u
    acc = syn.correlation(left, h, m)
    if t[5]:
        acc += t[5] * syn.correlation(u, h if syn.kind == "embedding" else h * h, m)
    if t[2]:
        acc += t[2] * syn.post_mean(u, h, m)
    if t[3]:
        acc += t[3] * syn.pre_mean(h, u, tuple(W.shape), m)
    if t[6]:
        acc += t[6] * W
    if t[7]:
        acc += t[7]
    dW = acc.neg_()
    if b is None:
        return dW, None
    lb = left + (t[2] + t[5]) * u if (t[2] or t[5]) else left
    positions = u[0, 0].numel() if syn.kind == "conv" else u[0].numel() // u.shape[-1]
    accb = syn.bias_correlation(lb, m)
    if t[3]:
        accb += t[3] * positions
    if t[6]:
        accb += t[6] * b
    if t[7]:
        accb += t[7]
    return dW, accb.neg_()


def _synapse_feedback_delta(th: Tensor, sig: FeedbackSignals, B: Tensor) -> Tensor:
    """``-Σ_k θ_k f_k`` for an adjacent ``B`` of any synapse type, laid out like ``B``."""
    syn, t = sig.synapse, [float(v) for v in th]
    if not sig.adjacent:
        raise HeterogradError("poly on a non-dense synapse needs adjacent feedback edges")
    u, m = _per_sample(sig.u_pre, sig.batch_scale())
    h = sig.h_post
    if t[1] and sig.p_post is None:
        raise HeterogradError(
            "poly's p·u feature for B needs the presynaptic potential, which a converted layer does not see; "
            "set theta_b[1] = 0"
        )
    right = t[0] * h
    if t[1]:
        right = right + t[1] * sig.p_post
    if t[4]:
        right = right + t[4] * h * h
    acc = syn.correlation(u, right, m)
    if t[5]:
        acc += t[5] * syn.correlation(u * u, h, m)
    if t[2]:
        acc += t[2] * syn.pre_mean(h, u, tuple(acc.shape), m)
    if t[3]:
        acc += t[3] * syn.post_mean(u, h, m)
    dB = syn.as_feedback(acc)
    dB = dB.add(B, alpha=t[6]) if t[6] else dB.clone()
    if t[7]:
        dB += t[7]
    return dB.neg_()


@register_rule
@dataclass(frozen=True)
class Poly(Rule):
    """Generic polynomial two-signal rule with a coefficient vector per synapse type.

    Attributes:
        theta_w: ``(8,)`` shared by all forward layers, or ``(L, 8)`` one row per layer.
        theta_b: ``(8,)`` shared by all feedback edges, or ``(K, 8)`` one row per edge.
            Default: the bilinear rule with the given ``weight_decay`` and ``feedback_gain``.
    """

    name: ClassVar[str] = "poly"
    plastic_feedback: ClassVar[bool] = True
    feedback: ClassVar[str] = "plastic"
    heterosynaptic: ClassVar[bool] = True
    weight_decay: float = 0.0
    feedback_gain: float = 1.0
    theta_w: Any = None
    theta_b: Any = None
    _tw: Tensor = field(init=False, repr=False, compare=False)
    _tb: Tensor = field(init=False, repr=False, compare=False)

    @classmethod
    def unused_hyperparameters(cls, given: dict[str, Any]) -> dict[str, str]:
        """``weight_decay`` and ``feedback_gain`` only build the default coefficients; given θ replace them."""
        out: dict[str, str] = {}
        if given.get("theta_b") is not None:
            out["feedback_gain"] = "theta_b sets the feedback coefficients (its h·u term is the gain c)"
            if given.get("theta_w") is not None:
                out["weight_decay"] = "theta_w and theta_b hold the decay terms (their W and B coefficients)"
        return out

    def __post_init__(self) -> None:
        dw, db = bilinear_theta(self.weight_decay, self.feedback_gain)
        tw = dw if self.theta_w is None else _as_theta(self.theta_w, "theta_w")
        tb = db if self.theta_b is None else _as_theta(self.theta_b, "theta_b")
        object.__setattr__(self, "_tw", tw)
        object.__setattr__(self, "_tb", tb)

    @staticmethod
    def _row(theta: Tensor, i: int, count: int, what: str) -> Tensor:
        if theta.dim() == 1:
            return theta
        if theta.shape[0] != count:
            raise HeterogradError(f"{what} has {theta.shape[0]} rows but the circuit needs {count}")
        return theta[i]

    def needs_potential(self) -> bool:
        return bool((self._tw[..., 1] != 0).any())

    def deltas(self, signals: Signals, params: Params, state: Any) -> tuple[Deltas, Any]:
        L, K = len(params.W), len(params.B)
        dW: list[Tensor | None] = []
        db: list[Tensor | None] = []
        for i, (sig, W, b) in enumerate(zip(signals.forward, params.W, params.b, strict=True)):
            th = self._row(self._tw, i, L, "theta_w")
            if sig.scale is None and sig.synapse.kind == "dense":  # the Circuit engine: the batched dense kernel
                dW.append(poly_delta(th, sig.u, sig.p, sig.h_pre, W))
                if b is not None:
                    ones = sig.h_pre.new_ones(sig.h_pre.shape[0], 1)
                    db.append(poly_delta(th, sig.u, sig.p, ones, b.unsqueeze(-1)).squeeze(-1))
                else:
                    db.append(None)
            else:
                w, bb = _synapse_forward_delta(th, sig, W, b)
                dW.append(w)
                db.append(bb)
        dB: list[Tensor | None] = []
        for k, (sig, B) in enumerate(zip(signals.feedback, params.B, strict=True)):
            th = self._row(self._tb, k, K, "theta_b")
            if sig.scale is None and sig.synapse.kind == "dense":
                dB.append(poly_delta(th, sig.h_post, sig.p_post, sig.u_pre, B))
            else:
                dB.append(_synapse_feedback_delta(th, sig, B))
        return Deltas(dW, db, dB), state

    def describe(self) -> str:
        if self._tw.dim() == 1 and self._tb.dim() == 1:
            return f"{format_poly(self._tw, W_FEATURES, 'W')},  {format_poly(self._tb, B_FEATURES, 'B')}"
        return "per-layer polynomial rule"
