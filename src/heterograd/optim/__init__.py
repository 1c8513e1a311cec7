"""Synapse-local state motifs that turn a rule's deltas into weight changes (docs/theory.md section 6).

A motif is a pair ``init(tensors) -> state`` and
``update(deltas, state, tensors) -> (steps, state)``; the training step adds
each step to its tensor. The state lives with the synapse (one entry per
plastic tensor) and is saved with checkpoints (`state_dict`,
`Motif.load_state_dict`). Motifs never call autograd.

With ``δ`` the rule's delta (``δ = -g``), ``η`` the learning rate and ``s`` the step:

* ``sgd``:      ``s = η δ``
* ``momentum``: ``m ← μ m + (1-d) δ``; ``s = η m`` (heavy ball) or ``η (δ + μ m)`` (Nesterov)
* ``rmsprop``:  ``v ← α v + (1-α) δ²``; ``s = η δ / (√v + ε)``
* ``adam``:     ``m ← β₁ m + (1-β₁) δ``, ``v ← β₂ v + (1-β₂) δ²``; ``s = η m̂ / (√v̂ + ε)``
* ``adamw``:    Adam plus decoupled decay ``-η ω W``

Each equals the ``torch.optim`` optimiser of the same name on the ``bp`` rule (and on
``hsp`` with ``B(0) = W(0)ᵀ``, ``c = 1``), step for step.

>>> make_motif("adam", lr=1e-3, betas=(0.9, 0.999)).betas
(0.9, 0.999)
"""

from __future__ import annotations

from .base import (
    MOTIFS,
    Motif,
    ScaledSteps,
    State,
    cli_options,
    load_state_dict,
    make_motif,
    motif_options,
    parse_options,
    register_motif,
    state_dict,
)
from .motifs import SGD, Adam, AdamW, Momentum, RMSProp

__all__ = [
    "MOTIFS",
    "SGD",
    "Adam",
    "AdamW",
    "Momentum",
    "Motif",
    "RMSProp",
    "ScaledSteps",
    "State",
    "cli_options",
    "load_state_dict",
    "make_motif",
    "motif_options",
    "parse_options",
    "register_motif",
    "state_dict",
]
