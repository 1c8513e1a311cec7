"""Probes: measurements of how close local learning is to gradient descent.

Probes are separate from learning: they read signals and weights and never
change them. They may use autograd (through `heterograd.autodiff`) to get
the true gradient for comparison. Definitions follow docs/theory.md section 3:

* ``phi = <u, g> / <g, g>``  least-squares consistency score of a patch,
* ``align = <u, g> / (|u| |g|)``  cosine of the feedback potential with the gradient,
* DC score = fraction of neuron pairs whose ``phi_i`` share a sign, ``(n₊² + n₋²)/n²``,
* angle between ``B`` and ``Wᵀ`` (degrees), cosine between applied ``ΔW`` and ``-∇_W``,
* Hebbian overlap = fraction of synapses whose update has the sign of the Hebbian product
  ``E[h_post h_preᵀ]`` (0.5 chance, 1 fully Hebbian, 0 fully anti-Hebbian).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .preconditioner import PreconditionerEstimate, estimate_preconditioner, preconditioner

if TYPE_CHECKING:
    from ..circuits import Circuit, Trace
    from ..losses import Loss
    from ..rules import Deltas

_TINY = 1e-30


def phi(u: Tensor, g: Tensor) -> float:
    """Consistency score ``<u, g>/<g, g>`` of a patch; ``u``, ``g`` any equal shape. NaN if ``g = 0``."""
    gg = float((g * g).sum())
    return float((u * g).sum()) / gg if gg > _TINY else math.nan


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine between two tensors of equal shape, flattened. NaN if either is zero."""
    na, nb = float(a.norm()), float(b.norm())
    if na < _TINY or nb < _TINY:
        return math.nan
    return float((a * b).sum()) / (na * nb)


def align(u: Tensor, g: Tensor) -> float:
    """Cosine of the feedback potential ``u`` with the true gradient ``g``, in ``[-1, 1]``."""
    return cosine(u, g)


def neuron_phi(u: Tensor, g: Tensor) -> Tensor:
    """Per-neuron consistency scores over a batch: ``u``, ``g`` ``(n, m)`` -> ``(m,)`` (NaN where ``g ≡ 0``)."""
    num = (u * g).sum(0)
    den = (g * g).sum(0)
    out = num / den
    return torch.where(den > _TINY, out, torch.full_like(out, math.nan))


def dc_score(phis: Tensor | Sequence[float]) -> float:
    """Dynamical-consistency score: fraction of patch pairs with ``φ_i φ_j ≥ 0``.

    ``(n₊² + n₋²) / n²`` over the finite, non-zero entries (zeros and NaNs are skipped).
    Returns NaN when no patch is informative.

    >>> dc_score([1.0, 2.0, -1.0, 3.0])
    0.625
    """
    t = torch.as_tensor(phis, dtype=torch.float64).flatten()
    t = t[torch.isfinite(t) & (t != 0)]
    n = t.numel()
    if n == 0:
        return math.nan
    pos = int((t > 0).sum())
    neg = n - pos
    return (pos * pos + neg * neg) / (n * n)


def matrix_angle(a: Tensor, b: Tensor) -> float:
    """Angle in degrees between two matrices of equal shape (flattened)."""
    c = cosine(a, b)
    return math.degrees(math.acos(max(-1.0, min(1.0, c)))) if math.isfinite(c) else math.nan


def hebbian_alignment(u: Tensor, h_pre: Tensor, p: Tensor) -> float:
    """Cosine between the learning-signal direction ``-E[u hᵀ]`` and the Hebbian direction ``E[p hᵀ]``.

    Args: ``u``, ``p`` ``(n, n_l)``; ``h_pre`` ``(n, n_{l-1})``. (docs/theory.md section 6.)
    """
    n = u.shape[0]
    return cosine(-(u.t() @ h_pre) / n, (p.t() @ h_pre) / n)


def hebbian_overlap(dW: Tensor, h_post: Tensor, h_pre: Tensor, mask: Tensor | None = None) -> float:
    """Fraction of synapses whose update ``ΔW`` has the sign of the Hebbian product ``E[h_post h_preᵀ]``.

    Args:
        dW: ``(n_post, n_pre)`` an update of the layer's synapses.
        h_post: ``(n, n_post)`` postsynaptic activities; h_pre: ``(n, n_pre)`` presynaptic activities.
        mask: optional ``(n_post, n_pre)`` 0/1 support; synapses outside it are not counted.

    Synapses where either sign is zero are skipped. 0.5 is chance, 1 fully Hebbian. NaN if none is counted.

    >>> hebbian_overlap(torch.ones(1, 2), torch.ones(3, 1), torch.tensor([[1.0, -1.0]] * 3))
    0.5
    """
    hebb = torch.sign(h_post.t() @ h_pre)
    sd = torch.sign(dW)
    keep = (hebb != 0) & (sd != 0)
    if mask is not None:
        keep &= mask != 0
    n = int(keep.sum())
    return float((hebb == sd)[keep].sum()) / n if n else math.nan


def measure(
    circuit: Circuit,
    x: Tensor,
    y: Tensor,
    loss: Loss,
    u: Sequence[Tensor],
    deltas: Deltas | None = None,
    weight_decay: float = 0.0,
    trace: Trace | None = None,
) -> dict[str, float]:
    """All standard probes for one batch, before the step is applied.

    Args:
        circuit: the circuit whose weights produced ``u``.
        x: the batch ``(n, n_0)``.
        y: its labels ``(n,)`` or targets ``(n, K)``.
        u: feedback potentials, ``u[l]`` ``(n, n_l)`` (as from ``circuit.run_feedback``).
        deltas: the rule's proposed deltas, for ``dw_cos_l``; optional.
        weight_decay: ``λ`` of the reference descent direction ``-(∇_W ℓ + λW)``.
        trace: the forward trace of ``x`` (recomputed when not given).

    Returns:
        Keys ``phi_l``, ``align_l`` (hidden layers), ``dc_score``, ``angle_l`` (hidden layer ``l``'s
        feedback from layer ``l+1``, against ``Wᵀ`` on the edge's support), ``hebb_overlap_l`` (all
        layers: Hebbian overlap of the activity-driven update ``-u_l h_{l-1}ᵀ/n``, the two-signal
        product without weight decay) and, when ``deltas`` is given, ``hebb_overlap_full_l`` (of the
        rule's whole update, decay included) and ``dw_cos_l`` (all layers).
    """
    from ..autodiff import true_gradients

    g_p, g_W, _ = true_gradients(circuit, x, y, loss, weights=deltas is not None)
    out: dict[str, float] = {}
    per_neuron = []
    for l in circuit.hidden_layers:
        out[f"phi_{l}"] = phi(u[l], g_p[l])
        out[f"align_{l}"] = align(u[l], g_p[l])
        per_neuron.append(neuron_phi(u[l], g_p[l]))
    out["dc_score"] = dc_score(torch.cat(per_neuron)) if per_neuron else math.nan
    for k, e in enumerate(circuit.edges):
        if e.adjacent:
            wt = circuit.W[e.src - 1].t()
            m = circuit.mask(k)
            out[f"angle_{e.dst}"] = matrix_angle(circuit.B[k], wt if m is None else wt * m)
    if trace is None:
        trace = circuit.run_forward(x)
    n = x.shape[0]
    for l in range(1, circuit.depth + 1):
        fm = circuit.forward_mask(l)
        h_post, h_pre = trace.h[l], trace.h[l - 1]
        out[f"hebb_overlap_{l}"] = hebbian_overlap(-(u[l].t() @ h_pre) / n, h_post, h_pre, fm)
        if deltas is not None and deltas.W[l - 1] is not None:
            out[f"hebb_overlap_full_{l}"] = hebbian_overlap(deltas.W[l - 1], h_post, h_pre, fm)
    if deltas is not None:
        for l in range(1, circuit.depth + 1):
            dW = deltas.W[l - 1]
            if dW is None:
                continue
            ref = -(g_W[l - 1] + weight_decay * circuit.W[l - 1])
            out[f"dw_cos_{l}"] = cosine(dW, ref)
    return out


__all__ = [
    "PreconditionerEstimate",
    "align",
    "cosine",
    "dc_score",
    "estimate_preconditioner",
    "hebbian_alignment",
    "hebbian_overlap",
    "matrix_angle",
    "measure",
    "neuron_phi",
    "phi",
    "preconditioner",
]
