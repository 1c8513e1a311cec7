"""Feedback topologies: which layers feed a teaching signal to which.

Layers are numbered as in docs/theory.md: ``h_0 = x`` is the input, layers
``1..L`` carry forward weights ``W_l`` (shape ``(n_l, n_{l-1})``), layer ``L``
is the output and ``1..L-1`` are hidden. A feedback *edge* ``src -> dst``
(``src > dst >= 1``) is a matrix ``B`` of shape ``(n_dst, n_src)`` that carries
the feedback potential ``u_src`` down to hidden layer ``dst``:

    u_dst = σ'(p_dst) ⊙ Σ_{edges src->dst} B u_src

The layered topology has the edges ``l+1 -> l``; docs/theory.md calls that matrix
``B_{l+1}`` (it maps layer ``l+1`` to ``l`` and has the shape of ``W_{l+1}ᵀ``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import HeterogradError, unknown_choice

TOPOLOGIES: tuple[str, ...] = ("layered", "sparse", "direct", "amorphous")
"""``layered``: ``B_l`` maps layer ``l`` to ``l-1`` (backprop's wiring).
``sparse``: layered with a fixed random mask of density ``d`` kept under plasticity.
``direct``: every hidden layer is fed from the output error (DFA / direct Kolen–Pollack wiring).
``amorphous``: each hidden layer receives feedback from every higher layer (skip connections
included) through random masks of density ``d``; with ``d = 1`` it is all-to-all."""


@dataclass(frozen=True)
class FeedbackEdge:
    """One feedback pathway ``src -> dst`` with an optional fixed connectivity mask.

    Attributes:
        src: upper (presynaptic at time t') layer index, ``dst < src <= L``.
        dst: lower (postsynaptic) hidden layer index, ``1 <= dst < L``.
        mask: ``(n_dst, n_src)`` 0/1 tensor or ``None`` for dense.
    """

    src: int
    dst: int
    mask: Tensor | None = None

    @property
    def adjacent(self) -> bool:
        """True when the edge mirrors a forward matrix (``src == dst + 1``)."""
        return self.src == self.dst + 1

    @property
    def name(self) -> str:
        return f"B{self.src}to{self.dst}"


def _mask(rows: int, cols: int, density: float, generator: torch.Generator) -> Tensor:
    return (torch.rand(rows, cols, generator=generator) < density).to(torch.float32)


def build_edges(
    topology: str, sizes: tuple[int, ...], density: float, generator: torch.Generator
) -> tuple[FeedbackEdge, ...]:
    """Construct the feedback edges of a topology.

    Args:
        topology: one of `TOPOLOGIES`.
        sizes: layer widths ``(n_0, n_1, ..., n_L)``.
        density: connection probability for ``sparse`` / ``amorphous`` masks, in ``(0, 1]``.
        generator: source of randomness for the masks.

    Returns:
        The edges, ordered by decreasing ``src`` then decreasing ``dst``.
    """
    if topology not in TOPOLOGIES:
        raise unknown_choice("topology", topology, TOPOLOGIES)
    if not 0.0 < density <= 1.0:
        raise HeterogradError(f"density must be in (0, 1], got {density}; pass e.g. --density 0.2")
    L = len(sizes) - 1
    edges: list[FeedbackEdge] = []
    if topology in ("layered", "sparse"):
        for dst in range(L - 1, 0, -1):
            mask = None
            if topology == "sparse" and density < 1.0:
                mask = _mask(sizes[dst], sizes[dst + 1], density, generator)
            edges.append(FeedbackEdge(dst + 1, dst, mask))
    elif topology == "direct":
        for dst in range(L - 1, 0, -1):
            edges.append(FeedbackEdge(L, dst, None))
    else:  # amorphous
        for src in range(L, 1, -1):
            for dst in range(src - 1, 0, -1):
                mask = _mask(sizes[dst], sizes[src], density, generator) if density < 1.0 else None
                edges.append(FeedbackEdge(src, dst, mask))
    edges.sort(key=lambda e: (-e.src, -e.dst))
    return tuple(edges)
