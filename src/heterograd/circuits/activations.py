"""Pointwise activations with the derivative expressed through ``(p, h)``.

The feedback pass needs ``σ'(p)``; for the usual nonlinearities it is cheapest
to compute it from the output ``h = σ(p)`` already held from the forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import unknown_choice


@dataclass(frozen=True)
class Activation:
    """A nonlinearity ``σ`` and its derivative.

    Attributes:
        name: registry name.
        fn: ``p -> h``, elementwise, any shape.
        grad: ``(p, h) -> σ'(p)``, elementwise, same shape as ``p``.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    grad: Callable[[Tensor, Tensor], Tensor]


def _identity(p: Tensor) -> Tensor:
    return p


ACTIVATIONS: dict[str, Activation] = {
    "tanh": Activation("tanh", torch.tanh, lambda p, h: 1.0 - h * h),
    "relu": Activation("relu", torch.relu, lambda p, h: (p > 0).to(p.dtype)),
    "sigmoid": Activation("sigmoid", torch.sigmoid, lambda p, h: h * (1.0 - h)),
    "identity": Activation("identity", _identity, lambda p, h: torch.ones_like(p)),
}


def get_activation(name: str) -> Activation:
    """Look up an activation by name (``tanh``, ``relu``, ``sigmoid``, ``identity``)."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise unknown_choice("activation", name, ACTIVATIONS) from None
