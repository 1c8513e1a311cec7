"""Synapse-local state motifs that turn a rule's deltas into weight changes.

A motif is a pair ``init(tensors) -> state`` and
``update(deltas, state, tensors) -> (steps, state)``; the training step adds
each step to its tensor. The state lives with the synapse (one entry per
plastic tensor) and is saved with checkpoints. Motifs never call autograd.

``sgd``:  ``ΔW = η δ``  where ``δ`` is the rule's delta.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from torch import Tensor

from ..errors import HeterogradError, unknown_choice

State = dict[str, Any]


class Motif(ABC):
    """Synapse-local optimiser motif.

    ``deltas`` and ``tensors`` are in the circuit's canonical order
    (:meth:`heterograd.Circuit.plastic_tensors`); a ``None`` delta means the tensor is frozen.
    """

    name: ClassVar[str]

    @abstractmethod
    def init(self, tensors: Sequence[Tensor]) -> State:
        """Create the per-synapse state."""

    @abstractmethod
    def update(
        self, deltas: Sequence[Tensor | None], state: State, tensors: Sequence[Tensor]
    ) -> tuple[list[Tensor | None], State]:
        """Return the changes to add to each tensor (``None``: no change) and the new state."""


M = TypeVar("M", bound=type[Motif])
MOTIFS: dict[str, type[Motif]] = {}


def register_motif(cls: M) -> M:
    """Class decorator: make a motif available by its ``name``."""
    MOTIFS[cls.name] = cls
    return cls


@register_motif
@dataclass(frozen=True)
class SGD(Motif):
    """Plain heterosynaptic update: ``W ← W + η δ`` (``δ`` the rule's delta)."""

    name: ClassVar[str] = "sgd"
    lr: float = 0.05

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise HeterogradError(f"learning rate must be > 0, got {self.lr}; pass e.g. --lr 0.05")

    def init(self, tensors: Sequence[Tensor]) -> State:
        return {"step": 0}

    def update(
        self, deltas: Sequence[Tensor | None], state: State, tensors: Sequence[Tensor]
    ) -> tuple[list[Tensor | None], State]:
        steps = [None if d is None else d.mul_(self.lr) for d in deltas]
        return steps, {"step": state["step"] + 1}


def make_motif(name: str, **hyper: Any) -> Motif:
    """Build a motif by name; hyperparameters it does not take are ignored, ``None`` means default."""
    import dataclasses

    try:
        cls = MOTIFS[name]
    except KeyError:
        raise unknown_choice("optimizer", name, MOTIFS) from None
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return cls(**{k: v for k, v in hyper.items() if k in fields and v is not None})


__all__ = ["MOTIFS", "SGD", "Motif", "State", "make_motif", "register_motif"]
