"""BatchNorm over a batch held in shards (`ReducedBatchNormFunction`), with the plastic affine rule.

The statistics are sums that a caller-supplied ``reduce`` combines over the shards (in place, returning the
tensor); with the identity it is ordinary BatchNorm. This module knows nothing about processes or ranks:
`heterograd.distributed.batchnorm` passes an all-reduce over the process group (``--sync-batchnorm``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .layers import Plasticity, _arm, _deliver, _ids


def _decay(pl: Plasticity) -> float:
    """The rule's weight decay λ on the affine parameters (0 in a probe's exact pass)."""
    return 0.0 if pl.exact else float(getattr(pl.rule, "weight_decay", 0.0) or 0.0)


class ReducedBatchNormFunction(torch.autograd.Function):
    """BatchNorm whose statistics are sums over several shards of a batch, affine ``γ``, ``β`` ``(C,)`` learning by
    the local rule.

    ``x`` ``(n_r, C, *S)`` is one shard. Forward: per-channel mean and (biased) variance from sums passed through
    ``reduce``, over ``N = Σ_r n_r · |S|`` values; running statistics updated with the unbiased variance.
    Backward: ``∂x = γ · invstd · (u - Σu/N - x̂ · Σ(u ⊙ x̂)/N)`` with the sums passed through ``reduce`` (the
    local derivative of the global normalisation), and this shard's ``Σ u ⊙ x̂ + λγ``, ``Σ u + λβ`` for ``γ``,
    ``β``. ``reduce`` sums a tensor over the replicas in place and returns it (identity: one process).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        gamma: Tensor,
        beta: Tensor,
        rm: Tensor | None,
        rv: Tensor | None,
        momentum: float,
        eps: float,
        pl: Plasticity,
        reduce: Callable[[Tensor], Tensor],
    ) -> Tensor:
        C = x.shape[1]
        dims = [0, *range(2, x.dim())]
        view = (1, C) + (1,) * (x.dim() - 2)
        acc = torch.promote_types(x.dtype, torch.float32)
        xa = x.to(acc)
        s = torch.cat([xa.sum(dims), torch.tensor([x.numel() // C], dtype=acc, device=x.device)])
        reduce(s)
        count = float(s[C])
        mean = s[:C] / count
        centred = xa - mean.view(view)
        var = reduce((centred * centred).sum(dims)) / count
        invstd = torch.rsqrt(var + eps)
        out = (centred * invstd.view(view)).to(x.dtype) * gamma.view(view) + beta.view(view)
        if rm is not None and rv is not None:
            with torch.no_grad():
                rm.mul_(1 - momentum).add_(mean.to(rm.dtype), alpha=momentum)
                unbiased = var * (count / max(count - 1.0, 1.0))
                rv.mul_(1 - momentum).add_(unbiased.to(rv.dtype), alpha=momentum)
        ctx.pl, ctx.count, ctx.view, ctx.dims, ctx.reduce = pl, count, view, dims, reduce
        ctx.ids = _ids(gamma, beta)
        ctx.save_for_backward(x, gamma, beta, mean, invstd)
        _arm(pl)  # the GradientGuard: γ, β get their gradient from this layer
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, gamma, beta, mean, invstd = ctx.saved_tensors
        view, dims = ctx.view, ctx.dims
        acc = mean.dtype
        ga = g.to(acc)
        xhat = (x.to(acc) - mean.view(view)) * invstd.view(view)
        sg, sgx = ga.sum(dims), (ga * xhat).sum(dims)
        gx = gg = gb = None
        if ctx.needs_input_grad[0]:
            C = sg.shape[0]
            tot = ctx.reduce(torch.cat([sg, sgx])) / ctx.count
            gx = (gamma.to(acc) * invstd).view(view) * (ga - tot[:C].view(view) - xhat * tot[C:].view(view))
            gx = gx.to(x.dtype)
        lam = _decay(ctx.pl)
        if ctx.needs_input_grad[1]:
            gg = sgx.to(gamma.dtype)
            if lam:
                gg.add_(gamma, alpha=lam)
        if ctx.needs_input_grad[2]:
            gb = sg.to(beta.dtype)
            if lam:
                gb.add_(beta, alpha=lam)
        _deliver(ctx.pl, ctx.ids, gg is not None, gb is not None)
        return gx, gg, gb, None, None, None, None, None, None


__all__ = ["ReducedBatchNormFunction"]
