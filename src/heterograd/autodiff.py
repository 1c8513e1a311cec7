"""True gradients by autograd — for measurement (probes) and the ``bp`` baseline only.

This is the only module of heterograd that calls ``torch.autograd``. Learning
rules other than ``bp`` never import it (a test enforces that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .circuits import Circuit
    from .losses import Loss


def potential_gradients(circuit: Circuit, x: Tensor, y: Tensor, loss: Loss) -> list[Tensor]:
    """Per-sample gradients ``∇_{p_l} ℓ_i`` of every layer.

    Args:
        x: ``(n, n_0)``; y: labels ``(n,)`` or targets ``(n, K)``.

    Returns:
        ``L+1`` entries: ``g[0]`` empty, ``g[l]`` ``(n, n_l)`` with ``g[l][i] = ∂ℓ_i/∂p_l[i]``
        (the same scale as the circuit's ``u``).
    """
    grads, _, _ = true_gradients(circuit, x, y, loss, weights=False)
    return grads


def true_gradients(
    circuit: Circuit, x: Tensor, y: Tensor, loss: Loss, weights: bool = True
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Exact gradients of the mean batch loss.

    Returns:
        ``(g_p, g_W, g_b)``: ``g_p`` as in `potential_gradients`; ``g_W[l-1]`` ``(n_l, n_{l-1})``
        ``= ∇_{W_l} mean ℓ``; ``g_b[l-1]`` ``(n_l,)``. ``g_W``/``g_b`` are empty if ``weights=False``.
    """
    with torch.enable_grad():
        Ws = [w.detach().requires_grad_(weights) for w in circuit.W]
        bs = [b.detach().requires_grad_(weights) for b in circuit.b]
        h = x.detach()
        ps: list[Tensor] = []
        L = circuit.depth
        for l in range(1, L + 1):
            p = h @ Ws[l - 1].t()
            if circuit.has_bias:
                p = p + bs[l - 1]
            if not p.requires_grad:  # first layer without weight grads: make it a leaf we can differentiate
                p.requires_grad_(True)
            ps.append(p)
            act = circuit.output_activation if l == L else circuit.activation
            h = act.fn(p)
        total = loss.per_sample(h, y).sum()  # sum => per-sample gradients at the potentials
        inputs: list[Tensor] = list(ps)
        if weights:
            inputs += Ws + (bs if circuit.has_bias else [])
        grads = torch.autograd.grad(total, inputs)
    n = x.shape[0]
    g_p = [x.new_empty(0), *[g.detach() for g in grads[:L]]]
    g_W: list[Tensor] = []
    g_b: list[Tensor] = []
    if weights:
        g_W = [g.detach() / n for g in grads[L : 2 * L]]
        g_b = [g.detach() / n for g in grads[2 * L :]] if circuit.has_bias else [torch.zeros_like(b) for b in bs]
    return g_p, g_W, g_b
