"""Losses with their analytic output error ``e = ∂ℓ_i/∂p_L`` (the teaching signal).

Per-sample losses ``ℓ_i``; the batch loss is their mean. The output error is
per sample (not divided by ``n``); rules divide by ``n`` when they average.

* ``ce`` (default for classification): softmax cross-entropy on logits,
  ``ℓ_i = logsumexp(p_i) - p_{i,y_i}``, ``e_i = softmax(p_i) - onehot(y_i)``.
* ``mse``: ``ℓ_i = ½ Σ_k (p_{ik} - t_{ik})²`` with ``t`` the one-hot target
  (classification) or the regression target; ``e_i = p_i - t_i``. Default for regression.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from .errors import HeterogradError, unknown_choice


class Loss(ABC):
    """A per-sample loss with its analytic derivative at the output potential."""

    name: str

    @abstractmethod
    def per_sample(self, out: Tensor, y: Tensor) -> Tensor:
        """``out`` ``(n, K)``, ``y`` ``(n,)`` labels or ``(n, K)`` targets -> ``(n,)``."""

    @abstractmethod
    def error(self, out: Tensor, y: Tensor) -> Tensor:
        """``∂ℓ_i/∂out_i`` ``(n, K)``."""

    def __call__(self, out: Tensor, y: Tensor) -> Tensor:
        """Mean loss over the batch (a 0-d tensor)."""
        return self.per_sample(out, y).mean()

    def loss_and_error(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean loss, error)`` of one batch: ``(self(out, y), self.error(out, y))``, to rounding; a loss may
        share work between the two (cross-entropy computes one log-softmax)."""
        return self(out, y), self.error(out, y)


def _target(out: Tensor, y: Tensor) -> Tensor:
    if y.dim() == 1:
        if y.dtype.is_floating_point:
            raise HeterogradError("classification labels must be integers; pass int64 class indices")
        return torch.nn.functional.one_hot(y, out.shape[1]).to(out.dtype)
    if y.shape != out.shape:
        raise HeterogradError(f"targets have shape {tuple(y.shape)} but outputs {tuple(out.shape)}")
    return y.to(out.dtype)


class CrossEntropy(Loss):
    name = "ce"

    def per_sample(self, out: Tensor, y: Tensor) -> Tensor:
        if y.dim() != 1:
            raise HeterogradError("cross-entropy needs class labels; use --loss mse for regression")
        return torch.logsumexp(out, dim=1) - out.gather(1, y[:, None]).squeeze(1)

    def error(self, out: Tensor, y: Tensor) -> Tensor:
        e = torch.softmax(out, dim=1)
        e[torch.arange(out.shape[0], device=out.device), y] -= 1.0
        return e

    def loss_and_error(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """One log-softmax ``(n, K)`` gives both: ``ℓ = -mean log p_y`` and ``e = p - onehot(y)``."""
        if y.dim() != 1:
            raise HeterogradError("cross-entropy needs class labels; use --loss mse for regression")
        logp = torch.log_softmax(out, dim=1)
        idx = y[:, None]
        batch_loss = logp.gather(1, idx).mean().neg_()
        e = logp.exp_().scatter_add_(1, idx, torch.full_like(idx, -1.0, dtype=out.dtype))
        return batch_loss, e


class MSE(Loss):
    name = "mse"

    def per_sample(self, out: Tensor, y: Tensor) -> Tensor:
        return 0.5 * (out - _target(out, y)).pow(2).sum(1)

    def error(self, out: Tensor, y: Tensor) -> Tensor:
        return out - _target(out, y)


LOSSES: dict[str, type[Loss]] = {"ce": CrossEntropy, "mse": MSE}


def get_loss(name: str) -> Loss:
    """``ce`` or ``mse``."""
    try:
        return LOSSES[name]()
    except KeyError:
        raise unknown_choice("loss", name, LOSSES) from None
