"""The field's other feedback families, kept as comparison baselines (not heterosynaptic rules).

* ``dfa`` (direct feedback alignment): every layer's feedback comes from the output error ``e`` through a
  fixed random ``D_l``, ``u_l = σ'(p_l) ⊙ (D_l e)``. In the Circuit engine that is the ``direct`` topology
  with frozen ``B``; in a converted model every plastic layer sends ``D_l e`` to its input.
* sign symmetry: the feedback reads the signs of ``W`` across the synapse. ``usf`` (uniform): ``B = s ·
  sign(W)`` with ``s`` the root-mean-square of ``W``; ``brsf`` (batchwise random magnitude): ``B = sign(W) ⊙
  |R|`` with ``R`` redrawn every step; ``frsf`` (fixed random magnitude): ``R`` drawn once (the layer's
  frozen ``B`` holds it).

All of them update ``W`` by the bilinear rule ``ΔW = -(C(u, h) + λW)`` and never change ``B``. The
sign-symmetry rules need ``W`` at the feedback synapse, which the Circuit engine's local signals do not
offer: they apply to converted models (`heterograd.nn.convert`) only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from ..errors import HeterogradError
from ..synapses import Synapse
from .classic import ForwardOnly
from .registry import register_rule

if TYPE_CHECKING:
    from ..circuits import Circuit


@register_rule
@dataclass(frozen=True)
class DFA(ForwardOnly):
    """Direct feedback alignment: ``u_l = σ'(p_l) ⊙ (D_l e)``, ``ΔW = -(C(u, h) + λW)``, ``D`` fixed."""

    name: ClassVar[str] = "dfa"
    feedback: ClassVar[str] = "direct"
    weight_decay: float = 0.0

    def init(self, circuit: Circuit) -> Any:
        if circuit.topology != "direct":
            raise HeterogradError(
                f"rule 'dfa' sends the output error straight to every hidden layer; the circuit has topology "
                f"{circuit.topology!r}: use --topology direct"
            )
        return None

    def describe(self) -> str:
        return f"u = σ'(p)·(D e),  ΔW = -η(u·h + {self.weight_decay:g} W),  ΔD = 0"


class _SignSymmetry(ForwardOnly):
    """Shared part of the sign-symmetry rules: bilinear ``W`` update, ``B`` never learns."""

    circuit_engine: ClassVar[bool] = False

    def init(self, circuit: Circuit) -> Any:
        raise HeterogradError(
            f"rule {self.name!r} reads sign(W) across the synapse, which the Circuit engine's local signals do not "
            "carry; use it on a converted model (heterograd.convert(model, rule=...)) or pick fa/hsp/kp here"
        )


def _rms(W: Tensor) -> Tensor:
    return W.pow(2).mean().sqrt()


@register_rule
@dataclass(frozen=True)
class USF(_SignSymmetry):
    """Uniform sign-concordant feedback: ``B = s · sign(W)'``, ``s = rms(W)``."""

    name: ClassVar[str] = "usf"
    feedback: ClassVar[str] = "none"
    weight_decay: float = 0.0

    def transport_weights(self, W: Tensor, B: Tensor | None, synapse: Synapse, generator: Any = None) -> Tensor:
        return synapse.as_feedback(torch.sign(W).mul_(_rms(W)))

    def describe(self) -> str:
        return f"B = rms(W) sign(W),  ΔW = -η(u·h + {self.weight_decay:g} W)"


@register_rule
@dataclass(frozen=True)
class BRSF(_SignSymmetry):
    """Batchwise random-magnitude sign-concordant feedback: ``B = sign(W)' ⊙ |R|``, ``R`` redrawn each step.

    ``|R|`` is uniform on ``[0, 1/√fan_in)`` (the scale of the default initialisation), drawn from the
    layer's own seeded generator.
    """

    name: ClassVar[str] = "brsf"
    feedback: ClassVar[str] = "none"
    weight_decay: float = 0.0

    def transport_weights(self, W: Tensor, B: Tensor | None, synapse: Synapse, generator: Any = None) -> Tensor:
        fan_in = max(1, W[0].numel())
        R = torch.rand(W.shape, generator=generator, dtype=W.dtype, device="cpu").to(W.device)
        return synapse.as_feedback(R.mul_(1.0 / math.sqrt(fan_in)).mul_(torch.sign(W)))

    def describe(self) -> str:
        return f"B = sign(W) ⊙ |R_t| (redrawn),  ΔW = -η(u·h + {self.weight_decay:g} W)"


@register_rule
@dataclass(frozen=True)
class FRSF(_SignSymmetry):
    """Fixed random-magnitude sign-concordant feedback: ``B_eff = sign(W)' ⊙ |B|`` with ``B`` drawn once."""

    name: ClassVar[str] = "frsf"
    feedback: ClassVar[str] = "frozen"
    weight_decay: float = 0.0

    def transport_weights(self, W: Tensor, B: Tensor | None, synapse: Synapse, generator: Any = None) -> Tensor:
        assert B is not None
        return torch.sign(synapse.as_feedback(W)).mul_(B.abs())

    def describe(self) -> str:
        return f"B = sign(W) ⊙ |R| (fixed),  ΔW = -η(u·h + {self.weight_decay:g} W)"


__all__ = ["BRSF", "DFA", "FRSF", "USF"]
