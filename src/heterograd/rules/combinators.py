"""Rule combinators: wrap any rule to change *which* synapses it may touch (optax-style composition).

``Freeze(rule, layers=(1,))`` runs ``rule`` unchanged and then returns ``None`` deltas for the
forward weights ``W_l`` and biases ``b_l`` of the frozen layers (``None`` means "this tensor does
not change" to every motif and to `heterograd.train.apply_steps`). Optionally the feedback
edges *into* frozen layers are frozen as well: a frozen layer uses no teaching signal, so plasticity
of the feedback that would teach it is pointless.

``Freeze`` is a registered rule (name ``freeze``): ``make_rule("freeze", weight_decay=1e-4)`` wraps
the bilinear ``hsp`` rule and freezes layer 1, which is what ``heterograd train --rule freeze`` gives.
In code, wrap anything: ``Freeze(make_rule("fa"), layers=(1, 2))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import HeterogradError
from .base import Deltas, Params, Rule, Signals
from .classic import HSP
from .registry import register_rule

if TYPE_CHECKING:
    from torch import Tensor

    from ..circuits import Circuit, Trace
    from ..losses import Loss


@register_rule
@dataclass(frozen=True)
class Freeze(Rule):
    """Freeze the forward layers ``layers`` of any rule: their ``W_l``, ``b_l`` never change.

    Attributes:
        rule: the wrapped rule; ``None`` builds ``HSP(weight_decay, feedback_gain)``.
        layers: 1-based forward layer indices ``l`` (``W_l`` has shape ``(n_l, n_{l-1})``) to freeze.
        freeze_feedback: also freeze the feedback edges whose destination is a frozen layer.
        weight_decay, feedback_gain: only used when ``rule`` is ``None`` (so ``make_rule`` can build it).

    The wrapped rule's ``init`` and ``teaching`` are used as they are; its state passes through.
    Layer indices are checked against the circuit at the first step (a layer that does not exist is
    a `HeterogradError`). Weight decay of frozen layers is frozen too: nothing touches them.

    Example:
        >>> from heterograd.rules import make_rule
        >>> Freeze(make_rule("fa"), layers=(1,)).describe()
        'freeze W_1 of [ΔW = -η(u·h + 0 W),  ΔB = 0]'
    """

    name: ClassVar[str] = "freeze"
    nn_engine: ClassVar[bool] = False
    rule: Rule | None = None
    layers: tuple[int, ...] = (1,)
    freeze_feedback: bool = True
    weight_decay: float = 0.0
    feedback_gain: float = 1.0

    @classmethod
    def unused_hyperparameters(cls, given: dict[str, Any]) -> dict[str, str]:
        """``weight_decay`` and ``feedback_gain`` only build the default inner rule."""
        if given.get("rule") is None:
            return {}
        why = "they only build the default inner HSP rule, and an inner rule was given"
        return {"weight_decay": why, "feedback_gain": why}

    def __post_init__(self) -> None:
        if self.rule is None:
            object.__setattr__(self, "rule", HSP(weight_decay=self.weight_decay, feedback_gain=self.feedback_gain))
        elif not isinstance(self.rule, Rule):
            raise HeterogradError(f"Freeze wraps a Rule, got {type(self.rule).__name__}; pass e.g. make_rule('hsp')")
        layers = tuple(sorted({int(x) for x in self.layers}))
        if any(x < 1 for x in layers):
            raise HeterogradError(f"Freeze layers are 1-based forward layer indices >= 1, got {list(self.layers)}")
        object.__setattr__(self, "layers", layers)

    @property
    def inner(self) -> Rule:
        """The wrapped rule (never ``None`` after construction)."""
        assert self.rule is not None
        return self.rule

    # mirror the wrapped rule's class-level flags on the instance
    @property
    def uses_autograd(self) -> bool:  # type: ignore[override]
        return self.inner.uses_autograd

    @property
    def plastic_feedback(self) -> bool:  # type: ignore[override]
        return self.inner.plastic_feedback

    def init(self, circuit: Circuit) -> Any:
        L = circuit.depth
        bad = [x for x in self.layers if x > L]
        if bad:
            raise HeterogradError(f"Freeze layers {bad} do not exist: the circuit has forward layers 1..{L}")
        return self.inner.init(circuit)

    def teaching(self, circuit: Circuit, trace: Trace, x: Tensor, y: Tensor, loss: Loss) -> list[Tensor] | None:
        return self.inner.teaching(circuit, trace, x, y, loss)

    def deltas(self, signals: Signals, params: Params, state: Any) -> tuple[Deltas, Any]:
        d, state = self.inner.deltas(signals, params, state)
        L = len(params.W)
        bad = [x for x in self.layers if x > L]
        if bad:
            raise HeterogradError(f"Freeze layers {bad} do not exist: the circuit has forward layers 1..{L}")
        frozen = set(self.layers)
        dW = [None if l in frozen else w for l, w in enumerate(d.W, start=1)]
        db = [None if l in frozen else b for l, b in enumerate(d.b, start=1)]
        dB = list(d.B)
        if self.freeze_feedback:
            dB = [None if sig.dst in frozen else x for sig, x in zip(signals.feedback, d.B, strict=True)]
        return Deltas(dW, db, dB), state

    def describe(self) -> str:
        ws = ", ".join(f"W_{x}" for x in self.layers)
        return f"freeze {ws} of [{self.inner.describe()}]"


__all__ = ["Freeze"]
