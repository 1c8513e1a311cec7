"""The field's other feedback families, kept as comparison baselines (not heterosynaptic rules).

* ``dfa`` (direct feedback alignment): every layer's feedback comes from the output error ``e`` through a
  fixed random ``D_l``, ``u_l = σ'(p_l) ⊙ (D_l e)``. In the Circuit engine that is the ``direct`` topology
  with frozen ``B``; in a converted model every plastic layer sends ``D_l e`` to its input.
* sign symmetry: the feedback reads the signs of ``W`` across the synapse. ``usf`` (uniform): ``B = s ·
  sign(W)`` with ``s`` the standard deviation of Xavier init of ``W``'s shape; ``brsf`` (batchwise random
  magnitude): ``B = sign(W) ⊙ |R|`` with ``R`` Xavier uniform redrawn every step; ``frsf`` (fixed random
  magnitude): ``R`` drawn once (the layer's frozen ``B`` holds it). None of the three follows ``W``'s scale
  over training (the published definitions; ``usf``'s ``follow_weights`` option is the exception).

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
    """Direct feedback alignment: ``u_l = σ'(p_l) ⊙ (D_l e)``, ``ΔW = -(C(u, h) + λW)``, ``D`` fixed.

    In a converted model ``D_l`` is Xavier uniform; a conv layer's is a kernel ``(K, C_in, *k)`` shaped like
    its own, from the ``K`` outputs to its input channels, applied by the convolution transpose to the output
    error spread over the layer's ``P`` output positions (see `heterograd.nn.convert`).

    Args:
        weight_decay: ``λ``.
        spread: how a conv layer's ``P`` output positions share the error: ``"mean"`` (default) puts ``e/P``
            at each, the adjoint of global average pooling, which keeps the update of the layer below at the
            scale of backprop's; ``"repeat"`` puts ``e`` at each, as the published implementation (biotorch)
            does, the same direction with ``D`` ``P`` times larger (LeNet-5's ``conv1`` then starts with an
            update many times backprop's, and one step size cannot serve it and the dense layers).
    """

    name: ClassVar[str] = "dfa"
    feedback: ClassVar[str] = "direct"
    weight_decay: float = 0.0
    spread: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.spread not in ("mean", "repeat"):
            raise HeterogradError(f"dfa spread must be 'mean' or 'repeat', got {self.spread!r}")

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


def _xavier_std(W: Tensor) -> float:
    """``√(2 / (fan_in + fan_out))`` of ``W``'s shape ``(out, in[, *k])``: the standard deviation of Xavier init."""
    receptive = math.prod(W.shape[2:]) if W.dim() > 2 else 1
    return math.sqrt(2.0 / max(1, (W.shape[0] + W.shape[1]) * receptive))


@register_rule
@dataclass(frozen=True)
class USF(_SignSymmetry):
    """Uniform sign-concordant feedback: ``B = s · sign(W)'``.

    ``s = √(2 / (fan_in + fan_out))`` of ``W``'s shape (the standard deviation of Xavier init), fixed over
    training, as in the published implementation (biotorch, Sanfiz & Akrout 2021; docs/convnets.md).
    ``follow_weights=True`` gives ``s = rms(W)`` instead, which follows ``W``'s scale over training (this
    library's definition before 0.2).
    """

    name: ClassVar[str] = "usf"
    feedback: ClassVar[str] = "none"
    weight_decay: float = 0.0
    follow_weights: bool = False

    def transport_weights(self, W: Tensor, B: Tensor | None, synapse: Synapse, generator: Any = None) -> Tensor:
        S = torch.sign(W)
        S = S.mul_(W.pow(2).mean().sqrt()) if self.follow_weights else S.mul_(_xavier_std(W))
        return synapse.as_feedback(S)

    def describe(self) -> str:
        s = "rms(W)" if self.follow_weights else "xavier_std"
        return f"B = {s} sign(W),  ΔW = -η(u·h + {self.weight_decay:g} W)"


@register_rule
@dataclass(frozen=True)
class BRSF(_SignSymmetry):
    """Batchwise random-magnitude sign-concordant feedback: ``B = sign(W)' ⊙ |R|``, ``R`` redrawn each step.

    ``|R|`` is uniform on ``[0, √(6/(fan_in + fan_out)))`` of ``W``'s shape (the absolute value of a Xavier
    uniform draw, as in the published implementation), drawn from the layer's own seeded generator. It does
    not follow ``W``'s scale over training. ``feedback_scale="fan_in"`` draws ``|R|`` on ``[0, 1/√fan_in)``
    instead (``fan_in = ∏ W.shape[1:]``), this library's definition before 0.3.0 (set it with
    ``convert(model, "brsf", feedback_scale="fan_in")``).
    """

    name: ClassVar[str] = "brsf"
    feedback: ClassVar[str] = "none"
    weight_decay: float = 0.0
    feedback_scale: str = "xavier"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feedback_scale not in ("xavier", "fan_in"):
            raise HeterogradError(f"brsf feedback_scale must be 'xavier' or 'fan_in', got {self.feedback_scale!r}")

    def transport_weights(self, W: Tensor, B: Tensor | None, synapse: Synapse, generator: Any = None) -> Tensor:
        R = torch.rand(W.shape, generator=generator, dtype=W.dtype, device="cpu").to(W.device)
        if self.feedback_scale == "xavier":
            bound = math.sqrt(3.0) * _xavier_std(W)
        else:
            bound = 1.0 / math.sqrt(max(1, math.prod(W.shape[1:])))
        return synapse.as_feedback(R.mul_(bound).mul_(torch.sign(W)))

    def describe(self) -> str:
        return f"B = sign(W) ⊙ |R_t| (redrawn),  ΔW = -η(u·h + {self.weight_decay:g} W)"


@register_rule
@dataclass(frozen=True)
class FRSF(_SignSymmetry):
    """Fixed random-magnitude sign-concordant feedback: ``B_eff = sign(W)' ⊙ |B|`` with ``B`` drawn once.

    ``B`` is the layer's frozen feedback, drawn at conversion (Xavier uniform by default, so ``|B|`` is uniform
    on ``[0, √(6/(fan_in + fan_out)))``, as in the published implementation); it does not follow ``W``'s scale.
    """

    name: ClassVar[str] = "frsf"
    feedback: ClassVar[str] = "frozen"
    weight_decay: float = 0.0

    def transport_weights(self, W: Tensor, B: Tensor | None, synapse: Synapse, generator: Any = None) -> Tensor:
        assert B is not None
        return torch.sign(synapse.as_feedback(W)).mul_(B.abs())

    def describe(self) -> str:
        return f"B = sign(W) ⊙ |R| (fixed),  ΔW = -η(u·h + {self.weight_decay:g} W)"


__all__ = ["BRSF", "DFA", "FRSF", "USF"]
