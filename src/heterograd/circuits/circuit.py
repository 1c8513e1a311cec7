"""The layered heterosynaptic circuit: forward weights ``W``, separate feedback weights ``B``.

A circuit holds state only (weights, biases, feedback matrices and their fixed
masks). It computes the two signals of docs/theory.md section 1:

* time t (forward): ``p_l = h_{l-1} W_lᵀ + b_l``, ``h_l = σ_l(p_l)``;
* time t' (feedback): ``u_L = e`` and ``u_l = σ_l'(p_l) ⊙ Σ_{src} u_src B_{src→l}ᵀ``.

It never changes its own weights: the training step (`heterograd.train`)
is the one place that does. All tensors are batch-first: ``x`` is ``(n, n_0)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import HeterogradError, unknown_choice
from .activations import get_activation
from .topology import FeedbackEdge, build_edges

FEEDBACK_INITS: tuple[str, ...] = ("random", "transpose", "anti")
"""``random``: i.i.d. uniform with the scale of the matching forward weights.
``transpose``: ``B = Wᵀ`` (backprop's starting point). ``anti``: ``B = -Wᵀ``.
Non-adjacent edges (direct / amorphous skip edges) have no ``Wᵀ`` and start random."""


@dataclass(frozen=True)
class Trace:
    """Signals of one forward pass at time t.

    Attributes:
        h: ``L+1`` tensors; ``h[0] = x`` ``(n, n_0)``, ``h[l]`` ``(n, n_l)``.
        p: ``L+1`` entries; ``p[0]`` is ``None``, ``p[l] = h[l-1] W_lᵀ + b_l`` ``(n, n_l)``.
    """

    h: tuple[Tensor, ...]
    p: tuple[Tensor | None, ...]

    @property
    def output(self) -> Tensor:
        """The circuit's output ``h_L = σ_L(p_L)`` ``(n, n_L)`` (logits with the identity output)."""
        return self.h[-1]


def parse_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    """Validate layer widths ``(n_0, ..., n_L)``: at least input and output, all positive ints."""
    if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence | torch.Size):
        raise HeterogradError(f"sizes must be a list of layer widths such as [64, 128, 10], got {sizes!r}")
    sizes = tuple(sizes)
    if len(sizes) < 2:
        raise HeterogradError(f"a circuit needs at least an input and an output size, got {list(sizes)}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0:
            raise HeterogradError(f"layer sizes must be positive integers, got {list(sizes)}; e.g. [64, 128, 10]")
    return tuple(int(s) for s in sizes)


def _like_w(m: Tensor) -> Tensor:
    """Same values ``(n_dst, n_src)``, stored in the memory order of ``W_src`` ``(n_src, n_dst)``.

    An adjacent edge's ``B`` is laid out like ``W_srcᵀ`` so that the plasticity of ``B`` (a transposed
    copy of ``W``'s outer product, docs/theory.md section 1) is a contiguous pass, not a strided transpose.
    """
    return m.t().contiguous().t()


class Circuit(nn.Module):
    """A layered heterosynaptic circuit.

    Args:
        sizes: widths ``(n_0, n_1, ..., n_L)``; ``n_0`` input, ``n_L`` output.
        activation: hidden nonlinearity (``tanh``, ``relu``, ``sigmoid``, ``identity``).
        output_activation: nonlinearity of layer ``L`` (``identity`` gives logits).
        topology: feedback wiring, see `heterograd.circuits.topology.TOPOLOGIES`.
        density: mask density for ``sparse`` / ``amorphous`` feedback.
        feedback_init: ``random``, ``transpose`` or ``anti`` (see `FEEDBACK_INITS`).
        bias: give every forward layer a bias ``b_l`` ``(n_l,)``.
        forward_masks: optional fixed 0/1 connectivity of the forward weights, ``{l: mask}`` with
            ``mask`` ``(n_l, n_{l-1})`` (e.g. `block_mask`: separate populations, each fed by
            its own input bundle). ``W_l`` starts zero off the mask and the training step masks
            ``ΔW_l``, so the wiring is kept under plasticity.
        seed: randomness for weights and masks (default 0); or pass ``generator`` instead.
        generator: a ``torch.Generator`` to draw weights and masks from, instead of ``seed``.
        dtype: dtype of all tensors.
        device: device of all tensors.

    Parameters (``requires_grad=False``: learning is local, never autograd):
        ``W[l-1]``: ``(n_l, n_{l-1})``; ``b[l-1]``: ``(n_l,)``; ``B[k]``: ``(n_dst, n_src)`` for ``edges[k]``.

    Example:
        >>> c = Circuit([64, 128, 10], seed=0)
        >>> c(torch.zeros(5, 64)).shape
        torch.Size([5, 10])
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "tanh",
        *,
        output_activation: str = "identity",
        topology: str = "layered",
        density: float = 1.0,
        feedback_init: str = "random",
        bias: bool = True,
        forward_masks: dict[int, Tensor] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.sizes = parse_sizes(sizes)
        self.activation = get_activation(activation)
        self.output_activation = get_activation(output_activation)
        if feedback_init not in FEEDBACK_INITS:
            raise unknown_choice("feedback init", feedback_init, FEEDBACK_INITS)
        if isinstance(density, bool) or not isinstance(density, numbers.Real):
            raise HeterogradError(f"density must be a number in (0, 1], got {density!r}; pass e.g. density=0.2")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise HeterogradError(f"seed must be an integer, got {seed!r}; pass e.g. seed=0")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise HeterogradError(f"dtype must be a floating torch.dtype, got {dtype!r}; pass e.g. torch.float32")
        if device is not None:
            try:
                torch.empty(0, device=device)
            except (RuntimeError, AssertionError, TypeError) as exc:
                msg = " ".join(str(exc).split())[:120]
                raise HeterogradError(f"device {device!r} is not usable here ({msg}); pass device='cpu'") from None
        self.topology = topology
        self.density = float(density)
        self.feedback_init = feedback_init
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        L = self.depth
        W, b = [], []
        for l in range(1, L + 1):
            bound = 1.0 / math.sqrt(self.sizes[l - 1])
            w = (torch.rand(self.sizes[l], self.sizes[l - 1], generator=generator, dtype=torch.float64) * 2 - 1) * bound
            W.append(w)
            bb = (torch.rand(self.sizes[l], generator=generator, dtype=torch.float64) * 2 - 1) * bound
            b.append(bb if bias else torch.zeros(self.sizes[l], dtype=torch.float64))
        fmasks = self._check_forward_masks(forward_masks)
        for l, m in fmasks.items():
            W[l - 1] = W[l - 1] * m.to(torch.float64)
        edges = build_edges(topology, self.sizes, self.density, generator)  # checks topology and density range
        if self.density != 1.0 and topology in ("layered", "direct"):
            raise HeterogradError(
                f"density sets the feedback mask of the sparse and amorphous topologies; topology {topology!r} "
                "has no mask and would ignore it; leave density at 1 or use topology='sparse'"
            )
        if feedback_init != "random" and not all(e.adjacent for e in edges):
            raise HeterogradError(
                f"feedback_init={feedback_init!r} sets B = ±Wᵀ, which exists only for feedback edges between adjacent "
                f"layers; topology {topology!r} here has edges that skip layers, which would start random; use "
                "feedback_init='random' or topology 'layered'/'sparse'"
            )
        B = []
        for edge in edges:
            if edge.adjacent and feedback_init != "random":
                sign = 1.0 if feedback_init == "transpose" else -1.0
                m = sign * W[edge.src - 1].t().clone()
            else:
                bound = 1.0 / math.sqrt(self.sizes[edge.dst])
                shape = (self.sizes[edge.dst], self.sizes[edge.src])
                m = (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            if edge.mask is not None:
                m = m * edge.mask.to(torch.float64)
            B.append(_like_w(m) if edge.adjacent else m)
        self.has_bias = bias
        self.edges: tuple[FeedbackEdge, ...] = tuple(FeedbackEdge(e.src, e.dst, None) for e in edges)
        kw = {"dtype": dtype, "device": device}
        self.W = nn.ParameterList([nn.Parameter(w.to(**kw), requires_grad=False) for w in W])
        self.b = nn.ParameterList([nn.Parameter(x.to(**kw), requires_grad=False) for x in b])
        self.B = nn.ParameterList([nn.Parameter(m.to(**kw), requires_grad=False) for m in B])
        for k, e in enumerate(edges):
            mask = e.mask.to(**kw) if e.mask is not None else torch.ones(0, **kw)
            mask = _like_w(mask) if e.mask is not None and e.adjacent else mask
            self.register_buffer(f"mask{k}", mask)
        for l, m in fmasks.items():
            self.register_buffer(f"wmask{l}", m.to(**kw))
        # edges grouped by destination, in the order the feedback pass needs them
        self._by_dst: dict[int, list[int]] = {}
        for k, e in enumerate(self.edges):
            self._by_dst.setdefault(e.dst, []).append(k)
        # device arrays the weights are read through (heterograd.hardware.HardwareCircuit); None: read as stored
        self.reader: Any = None

    # ------------------------------------------------------------------ structure
    @property
    def depth(self) -> int:
        """Number of forward layers ``L``."""
        return len(self.sizes) - 1

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """Indices ``1..L-1`` of the hidden layers."""
        return tuple(range(1, self.depth))

    def mask(self, k: int) -> Tensor | None:
        """Fixed 0/1 mask ``(n_dst, n_src)`` of feedback edge ``k``, or ``None`` if dense."""
        m = getattr(self, f"mask{k}")
        return m if m.numel() else None

    def forward_mask(self, l: int) -> Tensor | None:
        """Fixed 0/1 mask ``(n_l, n_{l-1})`` of forward layer ``l`` (1-based), or ``None`` if dense."""
        return self._buffers.get(f"wmask{l}")

    def _check_forward_masks(self, masks: dict[int, Tensor] | None) -> dict[int, Tensor]:
        if masks is None:
            return {}
        if not isinstance(masks, dict):
            raise HeterogradError(f"forward_masks must be a dict {{layer: mask}}, got {type(masks).__name__}")
        out = {}
        for l, m in masks.items():
            if isinstance(l, bool) or not isinstance(l, int) or not 1 <= l <= self.depth:
                raise HeterogradError(f"forward_masks key {l!r} is not a forward layer; use 1..{self.depth}")
            shape = (self.sizes[l], self.sizes[l - 1])
            if not isinstance(m, Tensor) or tuple(m.shape) != shape:
                got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                raise HeterogradError(f"forward_masks[{l}] must be a tensor of shape {shape}, got {got}")
            if not bool(((m == 0) | (m == 1)).all()):
                raise HeterogradError(f"forward_masks[{l}] must hold only 0 and 1")
            if not bool((m.sum(1) > 0).all()):
                raise HeterogradError(f"forward_masks[{l}] leaves a neuron of layer {l} without input; check it")
            out[l] = m.detach().to(torch.float64)
        return out

    def plastic_tensors(self) -> list[Tensor]:
        """All plastic tensors in the canonical order ``W_1..W_L, b_1..b_L, B_0..B_{K-1}``."""
        # the ParameterLists' own dicts: same tensors, without ParameterList.__getitem__ per element (hot path)
        return [*self.W._parameters.values(), *self.b._parameters.values(), *self.B._parameters.values()]

    def extra_repr(self) -> str:
        return (
            f"sizes={list(self.sizes)}, activation={self.activation.name}, topology={self.topology}, "
            f"density={self.density}, feedback_init={self.feedback_init}, edges={[e.name for e in self.edges]}"
        )

    # ------------------------------------------------------------------ signals
    def run_forward(self, x: Tensor) -> Trace:
        """Time t: forward potentials and activities.

        Args:
            x: ``(n, n_0)`` input batch.

        Returns:
            A `Trace` with ``h[l]`` and ``p[l]`` for every layer.
        """
        if x.dim() != 2 or x.shape[1] != self.sizes[0]:
            raise HeterogradError(
                f"input has shape {tuple(x.shape)} but the circuit expects (batch, {self.sizes[0]}); "
                "flatten inputs and match sizes[0]"
            )
        Ws = list(self.W._parameters.values())
        bs = list(self.b._parameters.values())
        if self.reader is not None:
            Ws, bs = self.reader.read_forward(Ws, bs)
        if x.dtype != Ws[0].dtype:
            raise HeterogradError(
                f"input dtype {x.dtype} differs from the circuit's {Ws[0].dtype}; "
                "convert with x.to(circuit.W[0].dtype) or build the circuit with that dtype"
            )
        hs: list[Tensor] = [x]
        ps: list[Tensor | None] = [None]
        h = x
        L = self.depth
        for l in range(1, L + 1):
            p = torch.addmm(bs[l - 1], h, Ws[l - 1].t()) if self.has_bias else h @ Ws[l - 1].t()
            act = self.output_activation if l == L else self.activation
            h = act.fn(p)
            ps.append(p)
            hs.append(h)
        return Trace(tuple(hs), tuple(ps))

    def output_error(self, trace: Trace, dloss_dout: Tensor) -> Tensor:
        """Teaching signal ``e = ∂ℓ/∂p_L = σ_L'(p_L) ⊙ ∂ℓ/∂h_L`` ``(n, n_L)``."""
        if self.output_activation.name == "identity":
            return dloss_dout
        p = trace.p[-1]
        assert p is not None
        return self.output_activation.grad(p, trace.h[-1]) * dloss_dout

    def run_feedback(self, trace: Trace, e: Tensor) -> list[Tensor]:
        """Time t': feedback potentials through the ``B`` pathway.

        Args:
            trace: the forward trace of the same batch.
            e: ``(n, n_L)`` teaching signal at the output, ``∂ℓ_i/∂p_L`` per sample.

        Returns:
            ``u`` as a list of ``L+1`` entries: ``u[0]`` is an empty tensor (the input has no
            feedback compartment), ``u[l]`` ``(n, n_l)``, ``u[L] = e``.
        """
        L = self.depth
        Bs = list(self.B._parameters.values())
        if self.reader is not None:
            Bs = self.reader.read_feedback(self, Bs)
        u: list[Tensor] = [e.new_empty(0)] * (L + 1)
        u[L] = e
        for l in range(L - 1, 0, -1):
            total: Tensor | None = None
            for k in self._by_dst.get(l, ()):
                edge = self.edges[k]
                term = u[edge.src] @ Bs[k].t()
                total = term if total is None else total.add_(term)  # total is fresh: in place
            p = trace.p[l]
            assert p is not None
            if total is None:  # a hidden layer that receives no feedback
                u[l] = torch.zeros_like(p)
            elif self.activation.name == "tanh":  # fused σ'(p) ⊙ total = total (1 - h²), one kernel
                u[l] = torch.ops.aten.tanh_backward(total, trace.h[l])
            else:
                u[l] = total.mul_(self.activation.grad(p, trace.h[l]))
        return u

    def forward(self, x: Tensor) -> Tensor:
        """Inference: ``x`` ``(n, n_0)`` -> output ``h_L`` ``(n, n_L)``."""
        return self.run_forward(x).output


def block_mask(in_blocks: Sequence[int], out_blocks: Sequence[int]) -> Tensor:
    """Block-diagonal 0/1 mask ``(sum(out_blocks), sum(in_blocks))``: population ``k`` of the layer
    receives only input bundle ``k``.

    >>> block_mask([2, 1], [1, 2]).tolist()
    [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    """
    if len(in_blocks) != len(out_blocks) or not in_blocks:
        raise HeterogradError(
            f"block_mask needs as many input bundles as populations, got {list(in_blocks)} and {list(out_blocks)}"
        )
    if any(isinstance(b, bool) or not isinstance(b, numbers.Integral) or b <= 0 for b in (*in_blocks, *out_blocks)):
        raise HeterogradError(f"block sizes must be positive integers, got {list(in_blocks)}, {list(out_blocks)}")
    return torch.block_diag(*[torch.ones(int(o), int(i)) for i, o in zip(in_blocks, out_blocks, strict=True)])


def parse_hidden(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"128,128"`` -> ``(128, 128)``; ``""`` or ``"none"`` -> no hidden layer."""
    if isinstance(text, bool) or not isinstance(text, str | Sequence):
        raise HeterogradError(f"hidden must be a list of widths or a string like '128,128', got {text!r}")
    if not isinstance(text, str):
        vals = tuple(text)
    else:
        t = text.strip().lower()
        if t in ("", "none", "0"):
            return ()
        try:
            vals = tuple(int(v) for v in t.replace(" ", "").split(","))
        except ValueError:
            raise HeterogradError(
                f"--hidden {text!r} is not a comma-separated list of widths; write e.g. --hidden 128,128"
            ) from None
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0 for v in vals):
        raise HeterogradError(f"--hidden widths must be positive integers, got {text!r}; e.g. --hidden 128,128")
    vals = tuple(int(v) for v in vals)
    return vals
