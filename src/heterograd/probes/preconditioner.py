"""The effective matrix learning rate ``φH`` of a layer (docs/theory.md section 3).

Under heterosynaptic stability the feedback potential is a preconditioned gradient,
``u_i = φ (H g)_i`` with ``g = ∇_{p_l} ℓ``, so the forward rule applies ``ΔW = -η φ H ∇_W ℓ``.
This probe estimates ``A = φH`` (an ``n_l × n_l`` matrix) by least squares of ``u`` on ``g``
over many samples::

    U ≈ G M,   M = Aᵀ,   U, G: (n, n_l)

Gradients of a hidden layer occupy a low-dimensional subspace (the output error has
``K - 1`` degrees of freedom, spread by the ``σ'`` mask), so ``A`` is only identifiable on
the directions the gradients actually visit. The fit is therefore made in the principal
subspace ``V`` (``n_l × k``) of ``Σ_i g_i g_iᵀ`` that holds a fraction ``energy`` (default
0.99) of the gradient energy: with ``Z = G V`` (``n × k``),
``M_V = (ZᵀZ + ρ I)⁻¹ Zᵀ U`` (ridge ``ρ = ridge · tr(ZᵀZ)/k``, default ``ridge = 1e-12``, only
for numerical safety) and ``A_V = Vᵀ A V = (M_V V)ᵀ`` (``k × k``). Because the columns of
``V`` are eigenvectors of ``GᵀG``, for backprop (``u = g``) this gives ``A_V = I`` up to the
ridge bias (~``ridge``). Reported: the scale ``phi = <u, g>/<g, g>`` (the standard probe),
the eigenvalues of the symmetric part of ``A_V`` (the effective learning rates along the
gradient subspace; negative ones are directions the layer ascends), its condition number
``λ_max/λ_min`` (``inf`` unless positive definite), the eigenvalues of the normalised
``H = A_V / phi``, the distance ``|A_V - phi I|_F / (|phi| √k)`` from a scalar learning rate
and ``r2``, the fraction of the variance of ``u`` explained by the linear fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import HeterogradError

if TYPE_CHECKING:
    from ..circuits import Circuit
    from ..losses import Loss
    from ..rules import Rule


@dataclass(frozen=True)
class PreconditionerEstimate:
    """Least-squares estimate of one layer's effective learning rate ``A = φH``.

    Attributes:
        phi: ``<u, g>/<g, g>``, the layer's consistency score.
        A: ``(k, k)`` float64, ``Vᵀ (φH) V`` in the gradient principal subspace.
        basis: ``(n_l, k)`` float64, the subspace ``V`` (orthonormal columns).
        eigenvalues: ``(k,)`` ascending eigenvalues of ``(A + Aᵀ)/2``.
        condition: ``λ_max/λ_min`` of ``(A + Aᵀ)/2`` (``inf`` if ``λ_min <= 0``).
        negative_fraction: fraction of eigenvalues ``< 0`` (gradient-subspace directions that ascend).
        h_eigenvalues: ``(k,)`` eigenvalues of the symmetric part of ``H = A/phi`` (NaN if ``phi = 0``).
        dist_scalar: ``|A - phi I|_F / (|phi| √k)``: 0 when ``φH`` is a scalar learning rate.
        r2: fraction of the variance of ``u`` in the subspace explained by ``Z M_V``.
        k: subspace dimension; n: samples used.
    """

    phi: float
    A: Tensor
    basis: Tensor
    eigenvalues: Tensor
    condition: float
    negative_fraction: float
    h_eigenvalues: Tensor
    dist_scalar: float
    r2: float
    k: int
    n: int

    def summary(self, prefix: str = "") -> dict[str, float]:
        """Scalars for a metrics row: phi, eig_min, eig_max, cond, neg_frac, dist_scalar, r2, k."""
        ev = self.eigenvalues
        return {
            f"{prefix}phi": self.phi,
            f"{prefix}eig_min": float(ev[0]),
            f"{prefix}eig_max": float(ev[-1]),
            f"{prefix}cond": self.condition,
            f"{prefix}neg_frac": self.negative_fraction,
            f"{prefix}dist_scalar": self.dist_scalar,
            f"{prefix}r2": self.r2,
            f"{prefix}k": float(self.k),
        }


def estimate_preconditioner(
    u: Tensor, g: Tensor, *, energy: float = 0.99, ridge: float = 1e-12, max_rank: int | None = None
) -> PreconditionerEstimate:
    """Fit ``u ≈ (φH) g`` over samples in the gradients' principal subspace (see module docstring).

    Args:
        u: ``(n, n_l)`` feedback potentials; g: ``(n, n_l)`` true gradients ``∇_{p_l} ℓ_i``.
        energy: fraction of ``Σ|g_i|²`` the subspace must hold, in ``(0, 1]``.
        ridge: relative ridge ``ρ / (tr(ZᵀZ)/k)``, ``>= 0``.
        max_rank: cap on ``k`` (default: ``min(n_l, n // 2)`` so the fit is over-determined).
    """
    if u.shape != g.shape or u.dim() != 2:
        raise HeterogradError(f"u and g must both be (n, n_l), got {tuple(u.shape)} and {tuple(g.shape)}")
    if not 0 < energy <= 1:
        raise HeterogradError(f"energy must be in (0, 1], got {energy}; e.g. energy=0.99")
    if not ridge >= 0:
        raise HeterogradError(f"ridge must be >= 0, got {ridge}; e.g. ridge=1e-12")
    n, m = g.shape
    if n < 4:
        raise HeterogradError(f"need at least 4 samples to estimate H, got {n}; use a larger probe batch")
    U, G = u.detach().double().cpu(), g.detach().double().cpu()
    gg = float((G * G).sum())
    if not gg > 0:
        raise HeterogradError("the true gradient is zero on this batch; H is undefined (use another batch)")
    phi = float((U * G).sum()) / gg
    evals, evecs = torch.linalg.eigh(G.t() @ G)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    frac = torch.cumsum(evals, 0) / evals.sum()
    k = int(torch.searchsorted(frac, torch.tensor(energy, dtype=frac.dtype) - 1e-12)) + 1
    k = max(1, min(k, max_rank or min(m, n // 2), m))
    V = evecs[:, :k]
    Z = G @ V
    ZtZ = Z.t() @ Z
    rho = ridge * float(torch.trace(ZtZ)) / k
    M = torch.linalg.solve(ZtZ + rho * torch.eye(k, dtype=ZtZ.dtype), Z.t() @ U)  # (k, n_l)
    A = (M @ V).t()  # (k, k) = Vᵀ A V
    S = 0.5 * (A + A.t())
    ev = torch.linalg.eigvalsh(S)
    cond = float(ev[-1] / ev[0]) if float(ev[0]) > 0 else math.inf
    UV = U @ V
    resid = UV - Z @ (M @ V)
    var = float(((UV - UV.mean(0)) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / var if var > 0 else math.nan
    if phi != 0:
        h_ev = torch.linalg.eigvalsh(S / phi)
        dist = float(torch.linalg.norm(A - phi * torch.eye(k, dtype=A.dtype))) / (abs(phi) * math.sqrt(k))
    else:
        h_ev, dist = torch.full((k,), math.nan, dtype=torch.float64), math.inf
    return PreconditionerEstimate(
        phi=phi,
        A=A,
        basis=V,
        eigenvalues=ev,
        condition=cond,
        negative_fraction=float((ev < 0).double().mean()),
        h_eigenvalues=h_ev,
        dist_scalar=dist,
        r2=r2,
        k=k,
        n=n,
    )


def preconditioner(
    circuit: Circuit,
    rule: Rule,
    loss: Loss,
    x: Tensor,
    y: Tensor,
    layers: Sequence[int] | None = None,
    *,
    energy: float = 0.99,
    ridge: float = 1e-12,
) -> dict[int, PreconditionerEstimate]:
    """Estimate ``φH`` for hidden layers of ``circuit`` on the batch ``x`` ``(n, n_0)``, ``y``.

    ``u`` comes from the rule's own teaching path (the ``B`` pathway, or autograd for ``bp``),
    ``g`` from `heterograd.autodiff.true_gradients`. Nothing is changed.

    Returns:
        ``{layer: PreconditionerEstimate}`` for each ``layer`` in ``layers`` (default: all hidden).
    """
    from ..autodiff import true_gradients

    with torch.no_grad():
        trace = circuit.run_forward(x)
        u = rule.teaching(circuit, trace, x, y, loss)
        if u is None:
            u = circuit.run_feedback(trace, circuit.output_error(trace, loss.error(trace.output, y)))
    g_p, _, _ = true_gradients(circuit, x, y, loss, weights=False)
    chosen = circuit.hidden_layers if layers is None else tuple(layers)
    for l in chosen:
        if l not in circuit.hidden_layers:
            raise HeterogradError(f"layer {l} is not a hidden layer; choose from {list(circuit.hidden_layers)}")
    return {l: estimate_preconditioner(u[l], g_p[l], energy=energy, ridge=ridge) for l in chosen}


__all__ = ["PreconditionerEstimate", "estimate_preconditioner", "preconditioner"]
