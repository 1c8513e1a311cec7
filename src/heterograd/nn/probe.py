"""Probes on any converted model: how close is each plastic layer's learning to gradient descent?

Two passes over the same batch (same dropout draws, normalisation statistics restored after each):

1. the rule's own t' sweep, recording each plastic layer's feedback potential ``u`` (the signal arriving at
   its output) and the update it would apply;
2. a backprop pass: every layer temporarily transports with ``W`` (exact adjoint), giving the true
   gradient ``g`` at each layer's output and ``∇W``.

Neither pass changes weights or ``.grad``. Autograd is used for measurement only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..probes import cosine, dc_score, matrix_angle, neuron_phi, phi
from .layers import Plasticity, _weight_decay

METRICS: tuple[str, ...] = ("phi", "align", "angle", "dw_cos", "hebb", "dc")


@dataclass
class ProbeReport:
    """Per-layer measurements and the DC scores of one batch.

    Attributes:
        layers: ``{module path: {metric: value}}`` with ``phi`` (``<u, g>/<g, g>``), ``align`` (cosine of ``u``
            with ``g``), ``angle`` (degrees between the transport matrix and ``W``; NaN for direct feedback),
            ``dw_cos`` (cosine of the applied ``ΔW`` with ``-(∇W + λW)``), ``hebb`` (Hebbian overlap: fraction
            of synapses whose ``ΔW`` has the sign of ``C(p, h)``, 0.5 is chance) and ``dc`` (DC score over the
            layer's channels / neurons).
        dc_score: DC score over the channels of all layers but the output layer.
        dc_layers: DC score over those layers' ``phi``.
        direct: the layers that produce the model's output (their ``u`` is the output error itself, consistent by
            construction): left out of both DC scores.
    """

    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    dc_score: float = math.nan
    dc_layers: float = math.nan
    direct: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, float]:
        """Flat ``{"phi/<layer>": value, ..., "dc_score": ..., "dc_layers": ...}``, e.g. for a metrics CSV row."""
        flat = {f"{m}/{name}": v[m] for name, v in self.layers.items() for m in METRICS}
        return flat | {"dc_score": self.dc_score, "dc_layers": self.dc_layers}

    def table(self) -> str:
        """A plain-text table, one row per layer."""
        head = ["layer", *METRICS]
        rows = [[n, *(f"{v[m]:.3f}" for m in METRICS)] for n, v in self.layers.items()]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = "  ".join(f"{{:{w}}}" for w in widths)
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)]
        lines.append(f"DC over channels {self.dc_score:.3f}, over layers {self.dc_layers:.3f}")
        return "\n".join(lines)


def _channels(t: Tensor, kind: str) -> Tensor:
    """``(rows, channels)``: conv ``(n, C, *S)`` -> channels last; dense ``(n, ..., out)`` -> ``(-1, out)``."""
    if kind == "conv":
        return t.movedim(1, -1).reshape(-1, t.shape[1])
    return t.reshape(-1, t.shape[-1])


def _pass(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    x: Any,
    y: Any,
    loss: Callable[[Any, Any], Tensor],
    exact: bool,
    seed: int,
) -> tuple[dict[str, dict[str, Tensor]], int]:
    from .convert import plastic_layers

    pls: list[Plasticity] = [m.plasticity for _, m in layers]  # type: ignore[attr-defined]
    # norm layers: the true-gradient pass takes their exact derivative, whatever their norm_feedback
    norms = [m.plasticity for _, m in plastic_layers(model) if m.plasticity.synapse is None]  # type: ignore[union-attr]
    records: dict[str, dict[str, Tensor]] = {n: {} for n, _ in layers}
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for (n, _), pl in zip(layers, pls, strict=True):
            pl.record, pl.exact = records[n], exact
        for pl in norms:
            pl.exact = exact
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(seed)
            out = model(x)
            out_ptr = out.data_ptr() if isinstance(out, Tensor) else -1
            torch.autograd.grad(loss(out, y), params, allow_unused=True)
    finally:
        for pl in pls:
            pl.record, pl.exact = None, False
        for pl in norms:
            pl.exact = False
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
    return records, out_ptr


def probe(model: nn.Module, x: Any, y: Any, loss: Callable[[Any, Any], Tensor], *, seed: int = 0) -> ProbeReport:
    """Measure every plastic synapse layer of a converted model on one batch (nothing is changed).

    Args:
        model: a model converted by `heterograd.nn.convert`.
        x, y: a batch and its targets; ``loss(model(x), y)`` must give the scalar training loss.
        seed: seeds both passes identically (dropout and other random modules see the same draws).

    Returns:
        A `ProbeReport`.
    """
    from .convert import plastic_layers

    layers = [(n, m) for n, m in plastic_layers(model) if m.plasticity.synapse is not None]  # type: ignore[attr-defined]
    if not layers:
        from ..errors import HeterogradError

        raise HeterogradError("probe needs a converted model: call heterograd.convert(model, rule) first")
    rule_rec, out_ptr = _pass(model, layers, x, y, loss, exact=False, seed=seed)
    true_rec, _ = _pass(model, layers, x, y, loss, exact=True, seed=seed)
    report = ProbeReport()
    all_phis: list[Tensor] = []
    layer_phis: list[float] = []
    for name, m in layers:
        a, t = rule_rec[name], true_rec[name]
        if "u" not in a or "u" not in t:
            continue
        pl: Plasticity = m.plasticity  # type: ignore[attr-defined]
        syn, rule = pl.synapse, pl.rule
        assert syn is not None
        u, g = a["u"].detach(), t["u"].detach()
        W = m.weight.detach()  # type: ignore[union-attr]
        B = getattr(m, "feedback", None)
        out: dict[str, float] = {"phi": phi(u, g), "align": cosine(u, g)}
        ch = neuron_phi(_channels(u, syn.kind), _channels(g, syn.kind))
        out["dc"] = dc_score(ch)
        if not syn.has_transport or rule.feedback == "direct":
            out["angle"] = math.nan
        else:
            gen = None
            if pl.generator is not None:
                gen = torch.Generator().manual_seed(0)
                gen.set_state(pl.generator.get_state())
            M = rule.transport_weights(W, None if B is None else B.detach(), syn, gen)
            out["angle"] = matrix_angle(syn.as_forward(M), W)
        dW = a["dW"].detach()
        ref = t["dW"].detach() - _weight_decay(rule) * W  # -(∇W + λW)
        out["dw_cos"] = cosine(dW, ref)
        h, p = a["h"], a["p"]
        if p is not None:
            hebb = syn.correlation(p.detach(), h.detach(), 1.0 / h.shape[0])
            mask = (hebb != 0) & (dW != 0)
            agree = (torch.sign(dW) == torch.sign(hebb)) & mask
            out["hebb"] = float(agree.sum()) / max(1, int(mask.sum())) if int(mask.sum()) else math.nan
        else:
            out["hebb"] = math.nan
        report.layers[name] = out
        if p is not None and p.data_ptr() == out_ptr:
            report.direct.append(name)
        else:
            all_phis.append(ch)
            layer_phis.append(out["phi"])
    if all_phis:
        report.dc_score = dc_score(torch.cat(all_phis))
        report.dc_layers = dc_score(layer_phis)
    return report


__all__ = ["METRICS", "ProbeReport", "probe"]
