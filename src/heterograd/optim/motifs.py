"""The optimiser motifs: synapse-local state on top of any rule (docs/theory.md section 6).

Notation, per synapse (elementwise): ``δ_t`` the rule's delta at step ``t`` (the change per
unit learning rate; ``δ = -g`` with ``g`` the gradient-like signal ``u hᵀ/n + λW``), ``η`` the
learning rate, ``s_t`` the step added to the weight: ``W_t = W_{t-1} + s_t``. Each motif
equals the ``torch.optim`` optimiser of the same name with the same hyperparameters when
``δ = -∇ℓ - λW`` (the ``bp`` rule, or ``hsp`` with ``B(0) = W(0)ᵀ`` and ``c = 1``); the tests
pin this step for step in float64. Biologically: ``m`` is a leaky trace of the two-signal
product ``u hᵀ`` at the synapse, ``v`` a leaky trace of its square used for divisive
normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import HeterogradError
from .base import Motif, ScaledSteps, State, check_lr, check_range, register_motif


@register_motif
@dataclass(frozen=True)
class SGD(Motif):
    """Plain heterosynaptic update (no synapse-local state)::

        s_t = η δ_t

    Equals ``torch.optim.SGD(lr=η)``.
    """

    name: ClassVar[str] = "sgd"
    lr: float = 0.05

    def __post_init__(self) -> None:
        check_lr(self.lr)

    def update(
        self, deltas: Sequence[Tensor | None], state: State, tensors: Sequence[Tensor]
    ) -> tuple[list[Tensor | None], State]:
        new = self._next(state, len(tensors))
        for k, d in enumerate(deltas):
            if d is not None:
                new["count"][k] += 1
        # η is applied inside the (fused) weight update rather than in a separate pass over each delta
        return ScaledSteps(deltas, self.lr), new


@register_motif
@dataclass(frozen=True)
class Momentum(Motif):
    """Heavy-ball / Nesterov momentum: a leaky trace ``m`` of the synapse's delta::

        m_1 = δ_1,   m_t = μ m_{t-1} + (1 - d) δ_t          (trace of u hᵀ, dampening d)
        s_t = η m_t                  (heavy ball)
        s_t = η (δ_t + μ m_t)        (Nesterov)

    Equals ``torch.optim.SGD(lr=η, momentum=μ, dampening=d, nesterov=...)`` (whose first
    buffer is the undampened gradient, as here). Buffer: ``momentum_buffer``.
    """

    name: ClassVar[str] = "momentum"
    buffers: ClassVar[tuple[str, ...]] = ("momentum_buffer",)
    lr: float = 0.01
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        check_lr(self.lr)
        check_range("momentum", self.momentum, 0.0, 1.0, hint="; pass e.g. --momentum 0.9")
        check_range("dampening", self.dampening, 0.0, 1.0, hi_open=False, hint="; pass e.g. dampening=0")
        if not isinstance(self.nesterov, bool):
            raise HeterogradError(f"nesterov must be true or false, got {self.nesterov!r}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise HeterogradError("Nesterov momentum needs momentum > 0 and dampening = 0; pass e.g. --momentum 0.9")

    def update(
        self, deltas: Sequence[Tensor | None], state: State, tensors: Sequence[Tensor]
    ) -> tuple[list[Tensor | None], State]:
        new = self._next(state, len(tensors))
        bufs = new["momentum_buffer"]
        steps: list[Tensor | None] = []
        mu = self.momentum
        for k, d in enumerate(deltas):
            if d is None:
                steps.append(None)
                continue
            new["count"][k] += 1
            buf = bufs[k]
            buf = d.clone() if buf is None else buf.mul(mu).add_(d, alpha=1 - self.dampening)
            bufs[k] = buf
            step = d.add_(buf, alpha=mu) if self.nesterov else buf.clone()
            steps.append(step.mul_(self.lr))
        return steps, new


@register_motif
@dataclass(frozen=True)
class RMSProp(Motif):
    """RMSProp: divisive normalisation by a leaky trace ``v`` of the squared delta::

        v_t = α v_{t-1} + (1 - α) δ_t²                       (v_0 = 0)
        a_t = α a_{t-1} + (1 - α) δ_t,  D_t = √(v_t - a_t²) + ε   (centered)
        D_t = √v_t + ε                                         (not centered)
        s_t = η δ_t / D_t                                      (momentum μ = 0)
        b_t = μ b_{t-1} + δ_t / D_t,  s_t = η b_t              (momentum μ > 0)

    Equals ``torch.optim.RMSprop(lr=η, alpha=α, eps=ε, momentum=μ, centered=...)``.
    Buffers: ``square_avg``, ``grad_avg`` (centered), ``momentum_buffer`` (μ > 0).
    """

    name: ClassVar[str] = "rmsprop"
    buffers: ClassVar[tuple[str, ...]] = ("square_avg", "grad_avg", "momentum_buffer")
    lr: float = 0.01
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0
    centered: bool = False

    def __post_init__(self) -> None:
        check_lr(self.lr)
        check_range("alpha", self.alpha, 0.0, 1.0, hint="; pass e.g. alpha=0.99")
        check_range("eps", self.eps, 0.0, float("inf"), hint="; pass e.g. --eps 1e-8")
        check_range("momentum", self.momentum, 0.0, 1.0, hint="; pass e.g. --momentum 0.9")
        if not isinstance(self.centered, bool):
            raise HeterogradError(f"centered must be true or false, got {self.centered!r}")

    def update(
        self, deltas: Sequence[Tensor | None], state: State, tensors: Sequence[Tensor]
    ) -> tuple[list[Tensor | None], State]:
        new = self._next(state, len(tensors))
        a = self.alpha
        steps: list[Tensor | None] = []
        for k, d in enumerate(deltas):
            if d is None:
                steps.append(None)
                continue
            new["count"][k] += 1
            sq = new["square_avg"][k]
            sq = torch.zeros_like(d) if sq is None else sq
            sq = sq.mul(a).addcmul_(d, d, value=1 - a)
            new["square_avg"][k] = sq
            if self.centered:
                ga = new["grad_avg"][k]
                ga = torch.zeros_like(d) if ga is None else ga
                ga = torch.lerp(ga, d, 1 - a)
                new["grad_avg"][k] = ga
                avg = sq.addcmul(ga, ga, value=-1).sqrt_()
            else:
                avg = sq.sqrt()
            avg = avg.add_(self.eps)
            if self.momentum > 0:
                buf = new["momentum_buffer"][k]
                buf = torch.zeros_like(d) if buf is None else buf
                buf = buf.mul(self.momentum).addcdiv_(d, avg)
                new["momentum_buffer"][k] = buf
                steps.append(buf.mul(self.lr))
            else:
                steps.append(d.div_(avg).mul_(self.lr))
        return steps, new


@register_motif
@dataclass(frozen=True)
class Adam(Motif):
    """Adam: a leaky trace ``m`` of the delta, normalised by a leaky trace ``v`` of its square::

        m_t = β₁ m_{t-1} + (1 - β₁) δ_t                      (m_0 = 0)
        v_t = β₂ v_{t-1} + (1 - β₂) δ_t²                     (v_0 = 0)
        v̂_t = max(v̂_{t-1}, v_t)  (amsgrad)   else  v̂_t = v_t
        s_t = η/(1 - β₁ᵗ) · m_t / (√v̂_t / √(1 - β₂ᵗ) + ε)

    with ``t`` the number of deltas this synapse has received. L2 decay is the rule's ``λ``
    (inside ``δ``), as in ``torch.optim.Adam(weight_decay=λ)``; equals
    ``torch.optim.Adam(lr=η, betas=(β₁, β₂), eps=ε, amsgrad=...)``.
    Buffers: ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad).
    """

    name: ClassVar[str] = "adam"
    buffers: ClassVar[tuple[str, ...]] = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    amsgrad: bool = False

    def __post_init__(self) -> None:
        check_lr(self.lr)
        try:
            betas = tuple(float(b) for b in self.betas)
        except (TypeError, ValueError):
            betas = ()
        if len(betas) != 2:
            raise HeterogradError(f"betas must be two numbers like (0.9, 0.999), got {self.betas!r}")
        object.__setattr__(self, "betas", betas)
        check_range("beta1", betas[0], 0.0, 1.0, hint="; pass e.g. --betas 0.9,0.999")
        check_range("beta2", betas[1], 0.0, 1.0, hint="; pass e.g. --betas 0.9,0.999")
        check_range("eps", self.eps, 0.0, float("inf"), hint="; pass e.g. --eps 1e-8")
        if not isinstance(self.amsgrad, bool):
            raise HeterogradError(f"amsgrad must be true or false, got {self.amsgrad!r}")

    def _decoupled_decay(self) -> float:
        return 0.0

    def update(
        self, deltas: Sequence[Tensor | None], state: State, tensors: Sequence[Tensor]
    ) -> tuple[list[Tensor | None], State]:
        new = self._next(state, len(tensors))
        b1, b2 = self.betas
        wd = self._decoupled_decay()
        steps: list[Tensor | None] = []
        for k, (d, w) in enumerate(zip(deltas, tensors, strict=True)):
            if d is None:
                steps.append(None)
                continue
            t = new["count"][k] + 1
            new["count"][k] = t
            m = new["exp_avg"][k]
            v = new["exp_avg_sq"][k]
            m = torch.zeros_like(d) if m is None else m
            v = torch.zeros_like(d) if v is None else v
            m = torch.lerp(m, d, 1 - b1)
            v = v.mul(b2).addcmul_(d, d, value=1 - b2)
            new["exp_avg"][k], new["exp_avg_sq"][k] = m, v
            if self.amsgrad:
                vmax = new["max_exp_avg_sq"][k]
                vmax = v.clone() if vmax is None else torch.maximum(vmax, v)
                new["max_exp_avg_sq"][k] = vmax
                v = vmax
            step_size = self.lr / (1 - b1**t)
            denom = (v.sqrt() / (1 - b2**t) ** 0.5).add_(self.eps)
            step = torch.div(m, denom, out=d).mul_(step_size)
            if wd:
                step.sub_(w, alpha=self.lr * wd)
            steps.append(step)
        return steps, new


@register_motif
@dataclass(frozen=True)
class AdamW(Adam):
    """Adam with decoupled weight decay ``ω`` (not passed through the normalisation)::

        s_t = -η ω W_{t-1} + Adam step (above)

    Equals ``torch.optim.AdamW(lr=η, betas, eps, weight_decay=ω, amsgrad)``; the rule's own
    ``λ`` (inside ``δ``) acts on top of it, so use ``--weight-decay 0`` for plain AdamW.
    """

    name: ClassVar[str] = "adamw"
    weight_decay: float = 1e-2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(
            "decoupled weight decay",
            self.weight_decay,
            0.0,
            float("inf"),
            hint="; pass e.g. --optimizer-weight-decay 0.01",
        )

    def _decoupled_decay(self) -> float:
        return self.weight_decay
