"""Biological motifs of docs/theory.md section 8 as ready-made (circuit, rule) pairs.

Each builder returns a `BuiltMotif`: a `Circuit`, the plasticity
rule that trains it, and a one-paragraph description. Train them with the ordinary loop
(`heterograd.train.local_step` + a motif + `heterograd.train.apply_steps`, or a
`Trainer` whose ``circuit``/``rule`` are replaced). Both motifs are
*interpretations* of the layered heterosynaptic circuit, not detailed biophysical models:
the mapping to anatomy is stated in each docstring, together with what is not modelled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .circuits import Circuit
from .errors import HeterogradError
from .rules import HSP, Freeze, Rule


@dataclass(frozen=True)
class BuiltMotif:
    """A circuit with the rule that trains it.

    Attributes:
        circuit: the circuit (weights ``W``, ``b``, feedback ``B``).
        rule: the plasticity rule to train it with.
        description: how the circuit maps to the biology, in words.
    """

    circuit: Circuit
    rule: Rule
    description: str


def cerebellar_circuit(
    n_mossy: int,
    n_out: int,
    *,
    n_granule: int = 1000,
    mossy_per_granule: int | None = 4,
    weight_decay: float = 1e-4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> BuiltMotif:
    """Marr–Albus–Ito cerebellum: a frozen random granule expansion and a Purkinje layer taught by climbing fibres.

    Layers (``sizes = (n_mossy, n_granule, n_out)``):

    * input ``h_0`` ``(n, n_mossy)``: mossy-fibre activity;
    * layer 1 ``(n, n_granule)``: granule cells, ``h_1 = relu(W_1 h_0 + b_1)``. ``W_1`` is random and
      **frozen** (no plasticity at mossy-fibre -> granule synapses in this model). With
      ``mossy_per_granule = k`` each granule cell receives exactly ``k`` random mossy fibres (about 4
      in the real cerebellum); the surviving weights are rescaled by ``sqrt(n_mossy / k)`` to keep the
      input variance. ``None`` keeps the dense random expansion;
    * layer 2 ``(n, n_out)``: Purkinje cells (the output, logits). Their parallel-fibre synapses
      ``W_2`` are plastic with the heterosynaptic rule ``ΔW_2 = -η(u_2 h_1ᵀ/n + λ W_2)``, where
      ``u_2 = e = ∂ℓ/∂p_2`` is the climbing-fibre error (one teaching signal per Purkinje cell) at
      time t' and ``h_1`` the parallel-fibre (granule) activity at time t.

    The rule is ``Freeze(HSP(λ), layers=(1,))``: the granule layer and its (unused) feedback edge
    never change. Not modelled: Golgi-cell inhibition, the sign inversion of Purkinje output in the
    deep nuclei, the complex-spike timing; the error is the exact output error of the loss.

    Args:
        n_mossy: input width.
        n_granule: expansion width (``>> n_mossy``).
        n_out: output width.
        mossy_per_granule: fan-in ``k`` of each granule cell, ``1 <= k <= n_mossy``, or ``None`` (dense).
        weight_decay: ``λ`` of the Purkinje synapses.
        seed: as for `Circuit`; so are dtype and device.
    """
    if mossy_per_granule is not None and not 1 <= mossy_per_granule <= n_mossy:
        raise HeterogradError(
            f"mossy_per_granule must be in 1..{n_mossy} (the number of mossy fibres) or None, got {mossy_per_granule}"
        )
    circuit = Circuit([n_mossy, n_granule, n_out], "relu", topology="layered", seed=seed, dtype=dtype, device=device)
    if mossy_per_granule is not None and mossy_per_granule < n_mossy:
        g = torch.Generator().manual_seed(int(seed) + 7919)
        scores = torch.rand(n_granule, n_mossy, generator=g)
        idx = scores.topk(mossy_per_granule, dim=1).indices  # (n_granule, k) random distinct fibres
        mask = torch.zeros(n_granule, n_mossy).scatter_(1, idx, 1.0) * math.sqrt(n_mossy / mossy_per_granule)
        with torch.no_grad():  # construction of the fixed expansion, before any learning
            circuit.W[0].mul_(mask.to(circuit.W[0]))
    rule = Freeze(HSP(weight_decay=weight_decay, feedback_gain=1.0), layers=(1,))
    fan = "dense" if mossy_per_granule is None else f"{mossy_per_granule} mossy fibres per granule cell"
    desc = (
        f"cerebellum: {n_mossy} mossy fibres -> {n_granule} granule cells (frozen random relu expansion, {fan}) "
        f"-> {n_out} Purkinje cells taught by a climbing-fibre error (ΔW = -η(u·h + λW), u = output error)"
    )
    return BuiltMotif(circuit, rule, desc)


def pyramidal_circuit(
    sizes: Sequence[int],
    *,
    activation: str = "tanh",
    topology: str = "layered",
    density: float = 1.0,
    weight_decay: float = 1e-4,
    feedback_gain: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> BuiltMotif:
    """A network of two-compartment pyramidal neurons: basal forward and apical feedback dendrites.

    Every hidden unit is read as a pyramidal neuron with two compartments:

    * **basal** (time t): ``p_l = W_l h_{l-1} + b_l`` from the layer below; the soma fires
      ``h_l = σ(p_l)``;
    * **apical** (time t'): ``u_l = σ'(p_l) ⊙ (B u_{l+1})`` from the layer above (``topology``:
      ``layered`` = the area just above; ``direct`` = straight from the output error). The factor
      ``σ'(p_l)`` is the gating of the apical signal by the somatic state (an apical input only
      changes plasticity when the soma is in its sensitive range).

    Plasticity is the bilinear heterosynaptic rule: basal synapses change by apical potential ×
    presynaptic rate, ``ΔW = -η(u hᵀ + λ W)``, and apical synapses by the mirror product
    ``ΔB = -η(c h uᵀ + λ B)``, starting from random ``B``.

    Honest scope: this *is* the layered heterosynaptic circuit of docs/theory.md section 1 with a
    biological reading of ``p`` and ``u``; it adds no dendritic nonlinearity, no bursts and no
    separate interneurons. Its value is to show that the two-compartment neuron carries exactly the
    two signals the rule needs.

    Args:
        sizes: widths ``(n_0, ..., n_L)``.
        activation: somatic nonlinearity ``σ``.
        topology: apical wiring (see `heterograd.circuits.TOPOLOGIES`).
        density: mask density of the apical wiring (``sparse`` / ``amorphous``).
        weight_decay: ``λ`` of the rule.
        feedback_gain: ``c`` of the rule.
        seed: as for `Circuit`; so are dtype and device.
    """
    circuit = Circuit(
        list(sizes),
        activation,
        topology=topology,
        density=density,
        feedback_init="random",
        seed=seed,
        dtype=dtype,
        device=device,
    )
    rule = HSP(weight_decay=weight_decay, feedback_gain=feedback_gain)
    desc = (
        f"pyramidal network {list(circuit.sizes)}: basal dendrites carry p = W h (forward), apical dendrites "
        f"carry u = σ'(p) ⊙ B u_above ({topology} feedback), plastic by ΔW = -η(u·h + λW), ΔB = -η(c h·u + λB)"
    )
    return BuiltMotif(circuit, rule, desc)


__all__ = ["BuiltMotif", "cerebellar_circuit", "pyramidal_circuit"]
