"""Rule genomes: the coefficients of the polynomial plasticity rule (docs/theory.md sections 2 and 7).

A genome is a vector of the *active* coefficients of the ``poly`` rule
(`heterograd.rules.poly`): ``ΔW = -η Σ_k θ_W,k f_k`` for the forward synapses and
``ΔB = -η Σ_k θ_B,k g_k`` for the feedback synapses. By default the active terms are the
five of the theory's sketch (docs/theory.md section 7)::

    θ_W on  u·h  (the learning term: its sign decides descent or ascent at the top layer),
            p·h  (Hebbian / anti-Hebbian term),
            W    (weight decay, or growth when negative),
    θ_B on  h·u  (the feedback learning term, c in the bilinear rule),
            B    (feedback decay).

The bilinear (Kolen–Pollack) rule is the genome ``(1, 0, λ, 1, λ)``. Coefficients are shared by all
layers (one ``θ_W`` and one ``θ_B``) or, with ``per_layer``, one row per forward layer and one per
feedback edge. A population is a ``(P, G)`` float64 tensor of genomes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import HeterogradError
from ..rules.poly import B_FEATURES, N_FEATURES, W_FEATURES, format_poly

DEFAULT_W_TERMS: tuple[str, ...] = ("u·h", "p·h", "W")
DEFAULT_B_TERMS: tuple[str, ...] = ("h·u", "B")

_ASCII = {"u*h": "u·h", "uh": "u·h", "p*h": "p·h", "ph": "p·h", "h*u": "h·u", "hu": "h·u", "p*u": "p·u", "pu": "p·u"}
_ASCII.update({"u2h": "u²·h", "u^2*h": "u²·h", "uh2": "u·h²", "u*h^2": "u·h²", "h2u": "h²·u", "h^2*u": "h²·u"})
_ASCII.update({"hu2": "h·u²", "h*u^2": "h·u²"})


def parse_terms(text: str | Sequence[str], features: Sequence[str], what: str) -> tuple[str, ...]:
    """``"u·h,p·h,W"`` (or ASCII ``"u*h,p*h,W"``) -> validated feature names, in the given order."""
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    items = [_ASCII.get(t, t) for t in items if t]
    if not items:
        raise HeterogradError(f"{what} names no term; pick some of {', '.join(features)}")
    for t in items:
        if t not in features:
            raise HeterogradError(f"unknown {what} term {t!r}; valid terms: {', '.join(features)}")
    if len(set(items)) != len(items):
        raise HeterogradError(f"{what} lists a term twice ({text!r}); name each term once")
    return tuple(items)


@dataclass(frozen=True)
class GenomeSpec:
    """Which polynomial terms a genome holds and how they map to per-layer coefficient tensors.

    Attributes:
        w_terms: active forward-rule features (names from `W_FEATURES`).
        b_terms: active feedback-rule features (names from `B_FEATURES`).
        n_layers: forward layers ``L`` of the circuits.
        n_edges: feedback edges ``K`` (``L - 1`` for the layered topology).
        per_layer: one coefficient row per layer / edge instead of one shared row.
    """

    w_terms: tuple[str, ...] = DEFAULT_W_TERMS
    b_terms: tuple[str, ...] = DEFAULT_B_TERMS
    n_layers: int = 2
    n_edges: int = 1
    per_layer: bool = False

    def __post_init__(self) -> None:
        parse_terms(self.w_terms, W_FEATURES, "--w-terms")
        parse_terms(self.b_terms, B_FEATURES, "--b-terms")
        if self.n_layers < 1 or self.n_edges < 0:
            raise HeterogradError(f"a genome needs >= 1 layer, got {self.n_layers} layers, {self.n_edges} edges")

    @property
    def w_rows(self) -> int:
        return self.n_layers if self.per_layer else 1

    @property
    def b_rows(self) -> int:
        return self.n_edges if self.per_layer else 1

    @property
    def size(self) -> int:
        """Genome length ``G``."""
        return self.w_rows * len(self.w_terms) + self.b_rows * len(self.b_terms)

    def names(self) -> list[str]:
        """Name of every gene, e.g. ``θW[u·h]`` or (per layer) ``θW2[u·h]``."""
        out = []
        for r in range(self.w_rows):
            tag = f"W{r + 1}" if self.per_layer else "W"
            out += [f"θ{tag}[{t}]" for t in self.w_terms]
        for r in range(self.b_rows):
            tag = f"B{r}" if self.per_layer else "B"
            out += [f"θ{tag}[{t}]" for t in self.b_terms]
        return out

    def expand(self, genomes: Tensor) -> tuple[Tensor, Tensor]:
        """Full coefficient tensors of the ``poly`` rule.

        Args:
            genomes: ``(P, G)``.

        Returns:
            ``θ_W`` ``(P, L, 8)`` (row ``l-1`` for layer ``l``) and ``θ_B`` ``(P, K, 8)`` (row ``k`` for
            feedback edge ``k``, the circuit's edge order), zeros on inactive terms.
        """
        if genomes.dim() != 2 or genomes.shape[1] != self.size:
            raise HeterogradError(f"genomes must have shape (P, {self.size}), got {tuple(genomes.shape)}")
        P = genomes.shape[0]
        tw = genomes.new_zeros(P, self.w_rows, N_FEATURES)
        tb = genomes.new_zeros(P, self.b_rows, N_FEATURES)
        wi = [W_FEATURES.index(t) for t in self.w_terms]
        bi = [B_FEATURES.index(t) for t in self.b_terms]
        nw = self.w_rows * len(wi)
        tw[:, :, wi] = genomes[:, :nw].reshape(P, self.w_rows, len(wi))
        tb[:, :, bi] = genomes[:, nw:].reshape(P, self.b_rows, len(bi))
        if not self.per_layer:
            tw = tw.expand(P, self.n_layers, N_FEATURES)
            tb = tb.expand(P, self.n_edges, N_FEATURES)
        return tw.contiguous(), tb.contiguous()

    def bilinear(self, weight_decay: float = 0.0, feedback_gain: float = 1.0) -> Tensor:
        """The bilinear rule as a genome ``(G,)``; needs ``u·h``, ``h·u`` and (if ``λ ≠ 0``) ``W``, ``B``."""
        need = [("u·h", self.w_terms), ("h·u", self.b_terms)]
        if weight_decay:
            need += [("W", self.w_terms), ("B", self.b_terms)]
        for term, terms in need:
            if term not in terms:
                raise HeterogradError(f"the bilinear reference needs the {term} term; add it to the genome terms")
        w = [1.0 if t == "u·h" else (weight_decay if t == "W" else 0.0) for t in self.w_terms]
        b = [feedback_gain if t == "h·u" else (weight_decay if t == "B" else 0.0) for t in self.b_terms]
        return torch.tensor(w * self.w_rows + b * self.b_rows, dtype=torch.float64)

    def top_learning_coefficient(self, genomes: Tensor) -> Tensor:
        """``(P,)`` the ``u·h`` coefficient of the top (output) layer's forward rule (0 if inactive)."""
        tw, _ = self.expand(genomes)
        return tw[:, -1, W_FEATURES.index("u·h")]

    def describe(self, genome: Tensor | Sequence[float], digits: int = 3) -> str:
        """Readable rule(s), e.g. ``ΔW = -η(0.93 u·h - 0.02 p·h + 0.001 W);  ΔB = -η(1.1 h·u + 0.003 B)``."""
        g = torch.as_tensor(genome, dtype=torch.float64).reshape(1, -1)
        tw, tb = self.expand(g)
        if not self.per_layer:
            parts = [format_poly(tw[0, 0], W_FEATURES, "W", digits)]
            if self.n_edges:
                parts.append(format_poly(tb[0, 0], B_FEATURES, "B", digits))
            return ";  ".join(parts)
        parts = [format_poly(tw[0, l], W_FEATURES, f"W{l + 1}", digits) for l in range(self.n_layers)]
        parts += [format_poly(tb[0, k], B_FEATURES, f"B{k}", digits) for k in range(self.n_edges)]
        return ";  ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "w_terms": list(self.w_terms),
            "b_terms": list(self.b_terms),
            "n_layers": self.n_layers,
            "n_edges": self.n_edges,
            "per_layer": self.per_layer,
        }


def random_genomes(spec: GenomeSpec, population: int, sigma: float, generator: torch.Generator) -> Tensor:
    """``(P, G)`` float64 genomes with i.i.d. ``N(0, sigma²)`` coefficients (about half start with ascent)."""
    return torch.randn(population, spec.size, generator=generator, dtype=torch.float64) * sigma
