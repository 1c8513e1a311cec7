"""The synapse-type contract (see the package docstring)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor


class Synapse(ABC):
    """A bilinear connection type.

    Shapes use ``W`` for the forward weights and ``B`` for the feedback weights; each subclass says how
    ``B`` is laid out (dense: like ``Wᵀ``; conv: like ``W``). ``h``/``pre`` are presynaptic tensors
    ``(n, ...)``, ``u``/``post`` postsynaptic ``(n, ...)``, batch first.
    """

    kind: str = "synapse"
    has_transport: bool = True

    @abstractmethod
    def forward(self, h: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
        """Time t: ``p = W ⋆ h (+ b)``."""

    @abstractmethod
    def transport(self, u: Tensor, B: Tensor, pre: Tensor) -> Tensor:
        """Time t': ``v = B ⋆ᵀ u``, shaped like the presynaptic tensor ``pre`` (only its shape is read)."""

    @abstractmethod
    def correlation(self, post: Tensor, pre: Tensor, scale: float) -> Tensor:
        """``scale · Σ_{batch, positions} post ⊗ pre``, a fresh tensor shaped like ``W``."""

    @abstractmethod
    def bias_correlation(self, post: Tensor, scale: float) -> Tensor:
        """``scale · Σ_{batch, positions} post`` ``(n_post,)``: the correlation with a constant input."""

    @abstractmethod
    def as_feedback(self, C: Tensor) -> Tensor:
        """A ``W``-shaped tensor laid out like ``B`` (a view: dense transposes, conv is the identity)."""

    @abstractmethod
    def as_forward(self, B: Tensor) -> Tensor:
        """The inverse of `as_feedback`: ``B`` seen in ``W``'s shape (a view)."""

    def transport_and_correlation(
        self, u: Tensor, B: Tensor | None, pre: Tensor, scale: float, need_transport: bool
    ) -> tuple[Tensor | None, Tensor]:
        """``(transport(u, B, pre) or None, correlation(u, pre, scale))``; conv computes both in one call."""
        v = self.transport(u, B, pre) if need_transport and B is not None else None
        return v, self.correlation(u, pre, scale)

    def pre_mean(self, pre: Tensor, post: Tensor, W_shape: tuple[int, ...], scale: float) -> Tensor:
        """``scale · Σ`` of the presynaptic signal each synapse saw, broadcastable to ``W``'s shape."""
        return self.correlation(post.new_ones(post.shape), pre, scale)

    def post_mean(self, post: Tensor, pre: Tensor, scale: float) -> Tensor:
        """``scale · Σ`` of the postsynaptic signal at each synapse, broadcastable to ``W``'s shape."""
        return self.correlation(post, pre.new_ones(pre.shape), scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
