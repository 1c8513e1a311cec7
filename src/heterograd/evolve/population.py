"""A population of circuits trained as ONE batched computation (population = leading tensor dim).

Every circuit ``i`` of generation ``g`` has its own initial weights, drawn from a seed derived from
``(seed, g, i)`` only (`circuit_seed`), and its own rule genome; all circuits of a generation
see the same minibatches (drawn from ``(seed, g)``). Nothing here depends on which other circuits are
in the batch, so a population split into shards (the Ray back end) gives the same numbers as the
whole population at once.

Training uses only the local signals of the ``poly`` rule (`heterograd.rules.poly_delta` with
a leading population dim): no autograd. After training, `measure_population` compares each
circuit's feedback potentials ``u`` with the exact gradient ``∇_p ℓ`` (chain rule through ``Wᵀ``,
measurement only) to get per-neuron consistency scores ``φ`` and the DC score (docs/theory.md sections 3-4).

Shapes: ``P`` circuits, ``n`` batch, ``W[l-1]`` ``(P, n_l, n_{l-1})``, ``b[l-1]`` ``(P, n_l)``,
``B[k]`` ``(P, n_l, n_{l+1})`` for the layered feedback edge ``k`` (``l+1 -> l``, ``l = L-1-k``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..circuits import Circuit
from ..circuits.activations import get_activation
from ..errors import HeterogradError, unknown_choice
from ..rules.poly import N_FEATURES, W_FEATURES

_TINY = 1e-30
UH = W_FEATURES.index("u·h")


def circuit_seed(seed: int, generation: int, index: int | str) -> int:
    """A 63-bit seed from ``(seed, generation, index)``, the same in every process (blake2b)."""
    digest = hashlib.blake2b(f"heterograd-evolve:{seed}:{generation}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclass(frozen=True)
class Problem:
    """Everything that defines how one circuit is trained and scored (shared by all individuals).

    Attributes:
        x: ``(N, n_0)`` training inputs; y: ``(N,)`` labels (``ce``) or ``(N, K)`` targets (``mse``).
        sizes: layer widths ``(n_0, ..., n_L)``; activation: hidden nonlinearity (output is identity).
        loss: ``mse`` or ``ce``.
        lr: learning rate ``η`` (the rule's coefficients multiply it).
        batch_size: minibatch size ``n``; steps: training steps ``T`` per circuit.
        fitness_frac: fitness is the mean minibatch loss over the last ``ceil(fitness_frac·T)`` steps.
        probe_size: training samples (the first ones) used to measure ``φ`` after training.
        dc_threshold: a circuit satisfies DC when its DC score is at least this.
        divergence: a circuit whose batch loss exceeds this (or is not finite) is dead (fitness +inf).
        seed: run seed (inits and minibatches derive from it).
        dtype: computation dtype (float32 default, float64 in equivalence tests).
        block: circuits per batched computation. Batched matrix products do not give bitwise the same
            numbers for different batch sizes, so every back end computes the same blocks of ``block``
            consecutive individuals (shards are made of whole blocks): results do not depend on sharding.
    """

    x: Tensor
    y: Tensor
    sizes: tuple[int, ...]
    activation: str = "tanh"
    loss: str = "mse"
    lr: float = 0.05
    batch_size: int = 32
    steps: int = 300
    fitness_frac: float = 0.1
    probe_size: int = 256
    dc_threshold: float = 0.9
    divergence: float = 1e4
    seed: int = 0
    dtype: torch.dtype = torch.float32
    block: int = 64

    def __post_init__(self) -> None:
        if self.loss not in ("mse", "ce"):
            raise unknown_choice("loss", self.loss, ("mse", "ce"))
        get_activation(self.activation)
        if self.block < 1:
            raise HeterogradError(f"--block must be >= 1, got {self.block}")
        if self.steps < 1 or self.batch_size < 1:
            raise HeterogradError(f"--steps and --batch-size must be >= 1, got {self.steps}, {self.batch_size}")
        if not 0 < self.fitness_frac <= 1:
            raise HeterogradError(f"fitness fraction must be in (0, 1], got {self.fitness_frac}")

    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    @property
    def fitness_steps(self) -> int:
        return max(1, math.ceil(self.fitness_frac * self.steps))


@dataclass
class Weights:
    """Plastic tensors of a population (see the module docstring for shapes)."""

    W: list[Tensor]
    b: list[Tensor]
    B: list[Tensor]

    def select(self, i: int) -> Weights:
        """The weights of circuit ``i`` alone, keeping a population dim of 1."""
        return Weights([w[i : i + 1] for w in self.W], [v[i : i + 1] for v in self.b], [m[i : i + 1] for m in self.B])


@dataclass
class EvalResult:
    """Per-circuit outcome of a generation, all ``(P,)`` float64 / bool tensors.

    Attributes:
        fitness: mean loss over the last part of training; ``+inf`` for diverged circuits.
        final_loss: batch loss at the last step (NaN if diverged).
        diverged: the circuit's loss went non-finite or beyond ``Problem.divergence``.
        dc_score: DC score over the effective per-neuron ``φ`` of all layers (NaN if diverged).
        dc: DC satisfied (``dc_score >= dc_threshold``).
        phi: mean over hidden layers of the layer-level ``φ_l = <u,g>/<g,g>`` (NaN without hidden layers).
        align: mean over hidden layers of ``cos(u_l, ∇_{p_l} ℓ)``.
    """

    fitness: Tensor
    final_loss: Tensor
    diverged: Tensor
    dc_score: Tensor
    dc: Tensor
    phi: Tensor
    align: Tensor

    @staticmethod
    def cat(parts: Sequence[EvalResult]) -> EvalResult:
        return EvalResult(*(torch.cat([getattr(p, f) for p in parts]) for f in EvalResult.__dataclass_fields__))


def init_population(problem: Problem, seeds: Sequence[int], device: torch.device | str | None = None) -> Weights:
    """Initial weights of one circuit per seed, exactly those of ``Circuit(sizes, seed=s)`` (layered, random B)."""
    cs = [Circuit(problem.sizes, problem.activation, seed=int(s), dtype=torch.float64) for s in seeds]
    L = problem.depth
    kw = {"dtype": problem.dtype, "device": device}
    W = [torch.stack([c.W[l].data for c in cs]).to(**kw) for l in range(L)]
    b = [torch.stack([c.b[l].data for c in cs]).to(**kw) for l in range(L)]
    B = [torch.stack([c.B[k].data for c in cs]).to(**kw) for k in range(L - 1)]
    return Weights(W, b, B)


def batch_indices(problem: Problem, generation: int) -> Tensor:
    """``(T, n)`` minibatch indices of a generation, drawn uniformly with replacement from ``(seed, g)``."""
    g = torch.Generator().manual_seed(circuit_seed(problem.seed, generation, "data"))
    return torch.randint(0, problem.x.shape[0], (problem.steps, problem.batch_size), generator=g)


def _loss_and_error(problem: Problem, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-circuit mean loss ``(P,)`` and output error ``e = ∂ℓ_i/∂p_L`` ``(P, n, K)``; ``out`` ``(P, n, K)``."""
    if problem.loss == "mse":
        diff = out - y
        return 0.5 * diff.square().sum(-1).mean(-1), diff
    lse = torch.logsumexp(out, dim=-1)
    picked = out.gather(-1, y.expand(out.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    e = torch.softmax(out, dim=-1)
    e = e - torch.nn.functional.one_hot(y, out.shape[-1]).to(out.dtype)
    return (lse - picked).mean(-1), e


def _forward(problem: Problem, wts: Weights, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Time t: ``h[l]`` ``(P, n, n_l)`` (``h[0]`` is ``x`` expanded) and ``p[l]`` (``p[0]`` unused)."""
    act = get_activation(problem.activation)
    P = wts.W[0].shape[0]
    h = x.expand(P, *x.shape)
    hs, ps = [h], [h]
    L = problem.depth
    for l in range(1, L + 1):
        p = torch.baddbmm(wts.b[l - 1].unsqueeze(1), h, wts.W[l - 1].transpose(1, 2))
        h = p if l == L else act.fn(p)
        ps.append(p)
        hs.append(h)
    return hs, ps


def _backward(problem: Problem, mats: Sequence[Tensor], hs: list[Tensor], ps: list[Tensor], e: Tensor) -> list[Tensor]:
    """Potentials at t' through ``mats[l]`` ``(P, n_l, n_{l+1})`` for ``l = 1..L-1``: ``u[l]`` ``(P, n, n_l)``."""
    act = get_activation(problem.activation)
    L = problem.depth
    u: list[Tensor] = [e] * (L + 1)
    for l in range(L - 1, 0, -1):
        u[l] = act.grad(ps[l], hs[l]) * torch.bmm(u[l + 1], mats[l].transpose(1, 2))
    return u


def _feedback_mats(wts: Weights, L: int) -> list[Tensor]:
    """``mats[l]`` = the feedback matrix from layer ``l+1`` to ``l`` (edge ``k = L-1-l``); index 0 unused."""
    return [wts.B[0]] + [wts.B[L - 1 - l] for l in range(1, L)] if wts.B else []


class _PolyCoeffs:
    """The ``poly`` rule of one synapse type for a population, computing only its non-zero terms.

    Equal to ``-poly_delta`` (`heterograd.rules.poly_delta`, tested) but skips the features whose
    coefficient is zero in every circuit, and folds the batch mean into the coefficients once.

    Args:
        theta: ``(P, 8)`` coefficients; n: batch size.
    """

    def __init__(self, theta: Tensor, n: int) -> None:
        on = (theta != 0).any(0).tolist()
        self.on = on
        c = theta[:, :, None, None]  # (P, 8, 1, 1)
        self.c = [c[:, k] for k in range(N_FEATURES)]  # each (P, 1, 1)
        self.cn = [ck / n for ck in self.c]

    def rate(
        self, post: Tensor, pot: Tensor, pre: Tensor, w: Tensor, bias: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``Σ_k θ_k f_k`` (batch means) ``(P, I, J)`` for ``post``/``pot`` ``(P, n, I)``, ``pre`` ``(P, n, J)``.

        With ``bias`` ``(P, I)`` also the bias rate ``(P, I)`` (presynaptic signal 1).
        """
        on, c, cn = self.on, self.c, self.cn
        left: Tensor | None = None
        for k, sig in ((0, post), (1, pot)):
            if on[k]:
                left = sig * cn[k] if left is None else torch.addcmul(left, sig, cn[k])
        if on[4]:
            sq = post * post
            left = sq * cn[4] if left is None else torch.addcmul(left, sq, cn[4])
        acc = torch.bmm(left.transpose(1, 2), pre) if left is not None else w.new_zeros(w.shape)
        if on[5]:
            acc = torch.addcmul(acc, torch.bmm(post.transpose(1, 2), pre * pre), cn[5])
        mean_post = post.mean(1).unsqueeze(-1) if on[2] or (on[5] and bias is not None) else None
        if on[2]:
            acc = torch.addcmul(acc, mean_post, c[2])
        if on[3]:
            acc = torch.addcmul(acc, pre.mean(1).unsqueeze(1), c[3])
        if on[6]:
            acc = torch.addcmul(acc, w, c[6])
        if on[7]:
            acc = acc + c[7]
        if bias is None:
            return acc
        bl = left.sum(1) if left is not None else bias.new_zeros(bias.shape)  # (P, I): pre = 1
        k2 = (c[2] + c[5]).squeeze(-1)  # u·1² and u terms both give mean(u)
        if on[2] or on[5]:
            bl = torch.addcmul(bl, mean_post.squeeze(-1), k2)
        extra = [c[k].squeeze(-1) for k in (3, 7) if on[k]]
        for e in extra:
            bl = bl + e
        if on[6]:
            bl = torch.addcmul(bl, bias, c[6].squeeze(-1))
        return acc, bl


def train_population(
    problem: Problem, wts: Weights, theta_w: Tensor, theta_b: Tensor, idx: Tensor
) -> tuple[Weights, Tensor, Tensor]:
    """Train every circuit for ``T`` steps with its own ``poly`` rule, in place, no autograd.

    Args:
        wts: initial weights (modified in place and returned).
        theta_w: ``(P, L, 8)`` forward-rule coefficients; theta_b: ``(P, L-1, 8)`` feedback-rule coefficients.
        idx: ``(T, n)`` minibatch indices into ``problem.x``.

    Returns:
        ``(weights, losses, diverged)``: ``losses`` ``(T, P)`` batch loss before each update (NaN once dead),
        ``diverged`` ``(P,)`` bool. A dead circuit's weights are set to zero and no longer counted.
    """
    L = problem.depth
    P = wts.W[0].shape[0]
    dev = wts.W[0].device
    tw = theta_w.to(device=dev, dtype=problem.dtype)
    tb = theta_b.to(device=dev, dtype=problem.dtype)
    x_all = problem.x.to(device=dev, dtype=problem.dtype)
    y_all = problem.y.to(device=dev, dtype=problem.dtype if problem.loss == "mse" else torch.int64)
    losses = torch.empty(idx.shape[0], P, dtype=torch.float64, device=dev)
    dead = torch.zeros(P, dtype=torch.bool, device=dev)
    lr = problem.lr
    cw = [_PolyCoeffs(tw[:, l], problem.batch_size) for l in range(L)]
    cb = [_PolyCoeffs(tb[:, k], problem.batch_size) for k in range(L - 1)]
    for t in range(idx.shape[0]):
        rows = idx[t].to(dev)
        x, y = x_all[rows], y_all[rows]
        hs, ps = _forward(problem, wts, x)
        loss, e = _loss_and_error(problem, hs[L], y)
        bad = ~torch.isfinite(loss) | (loss > problem.divergence)
        if bool((bad & ~dead).any()):
            dead |= bad
            keep = ~dead
            for ts in (wts.W, wts.b, wts.B):
                for i, v in enumerate(ts):
                    ts[i] = torch.where(keep.view(-1, *([1] * (v.dim() - 1))), v, torch.zeros_like(v))
            hs, ps = _forward(problem, wts, x)
            loss, e = _loss_and_error(problem, hs[L], y)
        losses[t] = torch.where(dead, torch.full_like(loss, math.nan), loss).double()
        u = _backward(problem, _feedback_mats(wts, L), hs, ps, e)
        # Every delta reads only its own tensor's old value, so each is applied as soon as it is computed.
        for k in range(L - 1):
            dst = L - 1 - k
            wts.B[k].add_(cb[k].rate(hs[dst], ps[dst], u[dst + 1], wts.B[k]), alpha=-lr)
        for l in range(1, L + 1):
            rate_w, rate_b = cw[l - 1].rate(u[l], ps[l], hs[l - 1], wts.W[l - 1], wts.b[l - 1])
            wts.W[l - 1].add_(rate_w, alpha=-lr)
            wts.b[l - 1].add_(rate_b, alpha=-lr)
    return wts, losses, dead


def measure_population(problem: Problem, wts: Weights, theta_w: Tensor, dead: Tensor) -> dict[str, Tensor]:
    """Consistency scores of every circuit on the probe batch (the first ``probe_size`` training samples).

    ``u`` comes through each circuit's feedback matrices ``B``; the exact gradient ``g = ∇_p ℓ`` through
    ``Wᵀ`` (the chain rule, equal to the true gradient the probes use; measurement only).
    Per neuron ``φ_i = Σ_n u g / Σ_n g²``; the *effective* score is ``s_l φ_i`` with ``s_l`` the sign of
    layer ``l``'s ``u·h`` coefficient (the sign with which that layer learns from ``u``); the output layer has
    ``u = g``, so its neurons score ``s_L``. The DC score is ``(n₊² + n₋²)/n²`` over the non-zero finite
    effective scores of all neurons of all layers.

    Returns:
        ``dc_score``, ``phi``, ``align`` ``(P,)`` float64 (NaN for dead circuits).
    """
    L = problem.depth
    k = min(problem.probe_size, problem.x.shape[0])
    dev = wts.W[0].device
    x = problem.x[:k].to(device=dev, dtype=problem.dtype)
    y = problem.y[:k].to(device=dev, dtype=problem.dtype if problem.loss == "mse" else torch.int64)
    hs, ps = _forward(problem, wts, x)
    _, e = _loss_and_error(problem, hs[L], y)
    u = _backward(problem, _feedback_mats(wts, L), hs, ps, e)
    g = _backward(problem, [wts.W[0], *[wts.W[l].transpose(1, 2) for l in range(1, L)]], hs, ps, e)
    sign = torch.sign(theta_w[:, :, UH]).to(device=dev, dtype=torch.float64)  # (P, L)
    effs, phis, aligns = [], [], []
    for l in range(1, L + 1):
        ul, gl = u[l].double(), g[l].double()
        num, den = (ul * gl).sum(1), (gl * gl).sum(1)  # (P, n_l)
        ph = torch.where(den > _TINY, num / den.clamp_min(_TINY), torch.full_like(num, math.nan))
        effs.append(ph * sign[:, l - 1 : l])
        if l < L:
            nn_, dd = num.sum(1), den.sum(1)
            phis.append(torch.where(dd > _TINY, nn_ / dd.clamp_min(_TINY), torch.full_like(dd, math.nan)))
            nu, ng = ul.square().sum((1, 2)).sqrt(), dd.sqrt()
            ok = (nu > _TINY) & (ng > _TINY)
            aligns.append(torch.where(ok, nn_ / (nu * ng).clamp_min(_TINY), torch.full_like(nn_, math.nan)))
    eff = torch.cat(effs, dim=1)
    valid = torch.isfinite(eff) & (eff != 0)
    pos = ((eff > 0) & valid).sum(1).double()
    n = valid.sum(1).double()
    neg = n - pos
    dc_score = torch.where(n > 0, (pos * pos + neg * neg) / (n * n).clamp_min(1), torch.full_like(n, math.nan))
    nanP = torch.full((wts.W[0].shape[0],), math.nan, dtype=torch.float64, device=dev)
    phi = torch.stack(phis).mean(0) if phis else nanP
    align = torch.stack(aligns).mean(0) if aligns else nanP
    dead = dead.to(dev)
    return {
        "dc_score": torch.where(dead, nanP, dc_score),
        "phi": torch.where(dead, nanP, phi),
        "align": torch.where(dead, nanP, align),
    }


def evaluate_population(
    problem: Problem,
    theta_w: Tensor,
    theta_b: Tensor,
    indices: Sequence[int],
    generation: int,
    device: torch.device | str | None = None,
) -> EvalResult:
    """Train and score circuits ``indices`` of generation ``generation``, batched in blocks of ``problem.block``.

    Args:
        theta_w: ``(P, L, 8)``; theta_b: ``(P, L-1, 8)`` (from `GenomeSpec.expand`), ``P = len(indices)``.
        indices: the individuals' positions in the population (their inits derive from them).

    Returns:
        An `EvalResult` (CPU tensors) in the order of ``indices``.
    """
    if theta_w.shape[0] != len(indices) or theta_b.shape[0] != len(indices):
        raise HeterogradError(f"{len(indices)} indices but {theta_w.shape[0]} genomes; pass one genome per index")
    indices = list(indices)
    if len(indices) > problem.block:
        parts = []
        for a in range(0, len(indices), problem.block):
            sl = slice(a, a + problem.block)
            parts.append(_evaluate_block(problem, theta_w[sl], theta_b[sl], indices[sl], generation, device))
        return EvalResult.cat(parts)
    return _evaluate_block(problem, theta_w, theta_b, indices, generation, device)


def _evaluate_block(
    problem: Problem,
    theta_w: Tensor,
    theta_b: Tensor,
    indices: Sequence[int],
    generation: int,
    device: torch.device | str | None,
) -> EvalResult:
    seeds = [circuit_seed(problem.seed, generation, int(i)) for i in indices]
    with torch.no_grad():
        wts = init_population(problem, seeds, device)
        wts, losses, dead = train_population(problem, wts, theta_w, theta_b, batch_indices(problem, generation))
        fitness = losses[-problem.fitness_steps :].mean(0)
        fitness = torch.where(dead | ~torch.isfinite(fitness), torch.full_like(fitness, math.inf), fitness)
        m = measure_population(problem, wts, theta_w, dead)
    dc = (m["dc_score"] >= problem.dc_threshold) & ~dead.to(m["dc_score"].device)
    return EvalResult(
        fitness=fitness.cpu(),
        final_loss=losses[-1].cpu(),
        diverged=dead.cpu(),
        dc_score=m["dc_score"].cpu(),
        dc=dc.cpu(),
        phi=m["phi"].cpu(),
        align=m["align"].cpu(),
    )
