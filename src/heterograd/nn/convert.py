"""``convert(model, rule)``: any ``torch.nn`` module tree learns by a local plasticity rule.

Every ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Embedding`` becomes a plastic equivalent (same
module object and parameters; its class is swapped) that carries its own feedback weights ``B``;
BatchNorm / LayerNorm / GroupNorm affine parameters learn by the local rule ``Δγ = -mean(u ⊙ x̂)``,
``Δβ = -mean(u)``; the feedback crosses them exactly (through the batch statistics: backprop's derivative,
under every rule) or, with ``norm_feedback="local"``, by ``γ/σ`` per channel (`NORM_FEEDBACK`).
Parameter-free modules need nothing. A module with trainable parameters that no synapse
type covers is an error (all of them named at once): nothing is silently trained by autograd.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import HeterogradError, unknown_choice
from ..rules import RULES, Rule, make_rule, run_defaults
from ..synapses import DENSE, Conv, Embedding, Synapse
from .layers import (
    NORM_FEEDBACK,
    DirectContext,
    GradientGuard,
    PlasticBatchNorm1d,
    PlasticBatchNorm2d,
    PlasticBatchNorm3d,
    PlasticConv1d,
    PlasticConv2d,
    PlasticEmbedding,
    PlasticGroupNorm,
    Plasticity,
    PlasticLayerNorm,
    PlasticLinear,
    PlasticModule,
)

FEEDBACK_INITS: tuple[str, ...] = ("random", "transpose", "anti")
"""``random``: Xavier (Glorot) uniform on ``±√(6/(fan_in + fan_out))`` of ``W``'s shape (`xavier_bound`),
the published implementation's draw (biotorch, Sanfiz & Akrout 2021); ``transpose``: ``B = W`` as transport
(backprop's start); ``anti``: ``B = -W`` as transport."""

FEEDBACK_SCALES: tuple[str, ...] = ("xavier", "fan_in")
"""The bound of a random feedback draw (``convert(..., feedback_scale=...)``): ``xavier`` (default),
`xavier_bound` ``√(6/(fan_in + fan_out))`` of ``W``'s shape, the published implementation's; ``fan_in``,
`fan_in_bound` ``1/√fan_in``, this library's draw before 0.3.0 (kept to measure the difference,
docs/convnets.md)."""

_SYNAPSE_TYPES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: PlasticLinear,
    nn.Conv1d: PlasticConv1d,
    nn.Conv2d: PlasticConv2d,
    nn.Embedding: PlasticEmbedding,
}
_NORM_TYPES: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: PlasticBatchNorm1d,
    nn.BatchNorm2d: PlasticBatchNorm2d,
    nn.BatchNorm3d: PlasticBatchNorm3d,
    nn.LayerNorm: PlasticLayerNorm,
    nn.GroupNorm: PlasticGroupNorm,
}


def _build_rule(rule: str | Rule, options: dict[str, Any]) -> Rule:
    if isinstance(rule, Rule):
        if options:
            raise HeterogradError(f"rule options {sorted(options)} apply only to a rule given by name")
        r = rule
    else:
        if rule not in RULES:
            raise unknown_choice("rule", rule, RULES)
        cls = RULES[rule]
        fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
        bad = sorted(k for k in options if k not in fields)
        if bad:
            raise HeterogradError(
                f"rule {rule!r} has no option {', '.join(bad)}; its options: {', '.join(sorted(fields)) or 'none'}"
            )
        r = make_rule(rule, **{**options, **run_defaults(rule, options)})
    if not r.nn_engine:
        raise HeterogradError(
            f"rule {r.name!r} applies to the Circuit engine only; in a converted model freeze a layer with "
            "module.requires_grad_(False) and pick one of: "
            + ", ".join(sorted(n for n, c in RULES.items() if c.nn_engine))
        )
    return r


def _base_type(m: nn.Module, table: dict[type[nn.Module], type[nn.Module]]) -> type[nn.Module] | None:
    """The supported torch type ``m`` is (exactly, or a subclass that keeps its ``forward``), else ``None``."""
    for base in table:
        if type(m) is base or (isinstance(m, base) and type(m).forward is base.forward):
            return base
    return None


def _synapse_of(name: str, m: nn.Module, base: type[nn.Module]) -> Synapse:
    if base is nn.Linear:
        return DENSE
    if base is nn.Embedding:
        e: Any = m
        if e.max_norm is not None or e.sparse or e.scale_grad_by_freq:
            raise HeterogradError(
                f"embedding {name!r} uses max_norm/sparse/scale_grad_by_freq, which the lookup synapse does not "
                "support; build it without them"
            )
        return Embedding(e.num_embeddings, e.padding_idx)
    c: Any = m
    if c.padding_mode != "zeros":
        raise HeterogradError(
            f"conv {name!r} has padding_mode={c.padding_mode!r}; the conv synapse supports zero padding only"
        )
    return Conv(tuple(c.weight.shape), c.stride, c.padding, c.dilation, c.groups)


def xavier_bound(shape: tuple[int, ...] | torch.Size) -> float:
    """``√(6 / (fan_in + fan_out))``: the bound of Xavier (Glorot) uniform for a weight of ``shape``.

    ``shape`` is ``(out, in)`` (dense) or ``(out, in, *k)`` (conv): ``fan_in = in·∏k``, ``fan_out = out·∏k``.
    The draw has standard deviation ``√(2 / (fan_in + fan_out))``. The random feedback of every rule
    (``fa``, ``frsf``, ``brsf``, ``dfa``, and the start of ``hsp``/``kp``) and ``usf``'s scale use it, as the
    published implementation does (biotorch, Sanfiz & Akrout 2021; docs/convnets.md).
    """
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    return math.sqrt(6.0 / max(1, fan_in + fan_out))


def fan_in_bound(shape: tuple[int, ...] | torch.Size) -> float:
    """``1/√fan_in`` with ``fan_in = ∏ shape[1:]`` (``in`` dense, ``in·∏k`` conv): the bound of every random
    feedback draw before 0.3.0 (``feedback_scale="fan_in"``), the scale of torch's default ``W`` init."""
    return 1.0 / math.sqrt(max(1, math.prod(shape[1:])))


def _initial_feedback(W: Tensor, syn: Synapse, init: str, gen: torch.Generator, scale: str = "xavier") -> Tensor:
    """``B`` laid out like the synapse wants (dense: ``(in, out)`` stored in ``W``'s memory order).

    ``random``: uniform on ``±`` `xavier_bound` (``scale="xavier"``) or ``±`` `fan_in_bound` (``"fan_in"``)
    of ``W``'s shape ``(out, in[, *k])``; the same draws from ``gen`` either way, only the bound differs.
    """
    if init == "random":
        bound = xavier_bound(W.shape) if scale == "xavier" else fan_in_bound(W.shape)
        R = (torch.rand(W.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        M = R.to(dtype=W.dtype, device=W.device)
    else:
        M = W.detach().clone() * (1.0 if init == "transpose" else -1.0)
    return syn.as_feedback(M)


def _unsupported_message(bad: list[tuple[str, nn.Module]]) -> str:
    names = "; ".join(f"{n or '<root>'!r} ({type(m).__name__})" for n, m in bad)
    return (
        f"heterograd.convert cannot train these modules by a local rule: {names}. Build them from nn.Linear / "
        "nn.Conv1d / nn.Conv2d / nn.Embedding / norm layers (see heterograd.models.transformer for attention), "
        "or freeze their parameters with module.requires_grad_(False) before converting"
    )


def convert(
    model: nn.Module,
    rule: str | Rule = "hsp",
    *,
    feedback_init: str | None = None,
    seed: int = 0,
    example_input: Tensor | None = None,
    norm_feedback: str = "exact",
    feedback_scale: str | None = None,
    **rule_options: Any,
) -> nn.Module:
    """Make every plastic connection of ``model`` learn by ``rule``, in place; returns ``model``.

    Args:
        model: any module tree. ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` (zero padding, any stride, dilation,
            groups) and ``nn.Embedding`` become plastic synapses; BatchNorm/LayerNorm/GroupNorm affine
            parameters learn by the local rule; modules without parameters are left as they are.
        rule: a registered rule name (``bp``, ``fa``, ``dfa``, ``hsp``, ``kp``, ``poly``, ``usf``, ``brsf``,
            ``frsf``) or a `Rule`.
        feedback_init: ``random`` (default), ``transpose`` (``B = W`` as transport) or ``anti``; only for rules
            that carry a ``B`` (plastic or frozen).
        seed: seeds every random feedback matrix (and the per-layer generators of ``brsf``).
        example_input: a batch the model accepts; required by ``dfa`` (it sizes each layer's ``D``).
        norm_feedback: how the feedback crosses BatchNorm / LayerNorm / GroupNorm layers: ``"exact"`` (default:
            the normalisation's full derivative, for BatchNorm in training mode through the batch mean and
            variance, which couples the samples of a batch; the same under every rule) or ``"local"``
            (``u ⊙ γ/σ`` per channel, statistics held fixed: BatchNorm's batch ``σ`` in training mode, its
            running ``σ`` in eval mode; LayerNorm's and GroupNorm's per-sample ``σ``). ``"local"`` on a model
            without a normalisation layer to convert is an error.
        feedback_scale: the bound of the random feedback draws (`FEEDBACK_SCALES`): ``"xavier"`` (default,
            Xavier uniform ``±√(6/(fan_in + fan_out))`` of ``W``'s shape) or ``"fan_in"`` (uniform ``±1/√fan_in``,
            this library's draw before 0.3.0: ``fa``'s and the start of ``hsp``/``kp``'s ``B``, ``frsf``'s fixed
            and ``brsf``'s redrawn magnitudes). Only for rules that draw random feedback from ``W``'s shape
            (``fa``, ``frsf``, ``brsf``, ``hsp``, ``kp``, ``poly``) with ``feedback_init="random"``; ``usf``'s
            old scale is ``follow_weights=True``.
        **rule_options: the rule's hyperparameters, e.g. ``weight_decay=0.0``, ``feedback_gain=1.0``. A rule given
            by name gets the same defaults as ``heterograd train`` where it takes them: ``weight_decay=1e-4``,
            ``feedback_gain=0.5`` for ``hsp`` (``1.0`` for ``poly``); a `heterograd.rules.Rule` object
            keeps its own values.

    The loop is the standard one: ``loss.backward()`` is the t' sweep, after which each plastic parameter's
    ``.grad`` holds ``-Δ/η`` of the rule (``B``'s too where it is plastic), so any ``torch.optim`` optimiser
    applies the update. ``B`` is a parameter named ``feedback`` when plastic, a buffer when frozen, absent
    (``None``) when the rule derives the transport from ``W`` (``bp``, ``usf``, ``brsf``).

    Raises:
        HeterogradError: an unknown rule or option (``norm_feedback`` and ``feedback_scale`` included, or
        ``"local"`` without a norm layer; ``feedback_scale`` for a rule that draws no random feedback), a rule
        that does not apply to converted models, a module with trainable parameters no synapse type covers (all
        named), a model converted twice.
    """
    if not isinstance(model, nn.Module):
        raise HeterogradError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    if feedback_scale is not None and feedback_scale not in FEEDBACK_SCALES:
        raise unknown_choice("feedback scale", feedback_scale, FEEDBACK_SCALES)
    if feedback_scale is not None and isinstance(rule, str) and rule == "brsf":  # redrawn each step, by the rule
        rule_options = {**rule_options, "feedback_scale": feedback_scale}
    r = _build_rule(rule, rule_options)
    has_B = r.feedback in ("plastic", "frozen")
    if feedback_scale is not None and not isinstance(rule, str) and r.name == "brsf":
        raise HeterogradError(
            "a brsf rule object draws its own magnitudes: set BRSF(feedback_scale=...) and drop convert's "
            "feedback_scale"
        )
    if feedback_scale is not None and r.name != "brsf":
        if not has_B:
            why = "its old scale, rms(W), is follow_weights=True" if r.name == "usf" else f"feedback: {r.feedback}"
            raise HeterogradError(
                f"feedback_scale sets the bound of a random feedback draw, and rule {r.name!r} draws none ({why}); "
                "drop feedback_scale"
            )
        if feedback_init not in (None, "random"):
            raise HeterogradError(
                f"feedback_scale sets the bound of a random feedback draw, and feedback_init={feedback_init!r} draws "
                "none; drop feedback_scale or use feedback_init='random'"
            )
    if feedback_init is not None:
        if not has_B:
            raise HeterogradError(
                f"rule {r.name!r} keeps no feedback weights of its own (feedback: {r.feedback}); drop feedback_init"
            )
        if feedback_init not in FEEDBACK_INITS:
            raise unknown_choice("feedback init", feedback_init, FEEDBACK_INITS)
    init = feedback_init or "random"
    if norm_feedback not in NORM_FEEDBACK:
        raise unknown_choice("norm feedback", norm_feedback, NORM_FEEDBACK)
    if r.feedback == "direct" and example_input is None:
        raise HeterogradError("rule 'dfa' sizes each layer's direct feedback D: pass example_input=<a batch>")
    if r.feedback != "direct" and example_input is not None:
        raise HeterogradError(f"example_input is only used by rule 'dfa', not {r.name!r}; drop it")

    plan: list[tuple[str, nn.Module, type[nn.Module], bool]] = []
    bad: list[tuple[str, nn.Module]] = []
    converted: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, PlasticModule):
            converted.append(name or "<root>")
            continue
        syn_base = _base_type(m, _SYNAPSE_TYPES)
        norm_base = _base_type(m, _NORM_TYPES)
        if syn_base is not None:
            plan.append((name, m, syn_base, True))
        elif norm_base is not None:
            if any(p.requires_grad for p in m.parameters(recurse=False)):
                plan.append((name, m, norm_base, False))
        elif any(p.requires_grad for p in m.parameters(recurse=False)):
            bad.append((name, m))
    if converted:
        raise HeterogradError(
            f"model is already converted ({', '.join(converted[:3])}...); convert a fresh model for another rule"
        )
    if bad:
        raise HeterogradError(_unsupported_message(bad))
    if norm_feedback != "exact" and not any(not is_syn for _, _, _, is_syn in plan):
        raise HeterogradError(
            f"norm_feedback={norm_feedback!r} sets the feedback through normalisation layers, and this model has "
            "none with trainable parameters; drop norm_feedback"
        )

    gen = torch.Generator().manual_seed(int(seed))
    in_shapes: dict[str, tuple[int, ...]] = {}
    needs_feedback: dict[str, bool] = {}  # dfa: does the layer's input receive feedback (anything plastic upstream)?
    out_size = 0
    out_shape: tuple[int, ...] = ()  # dfa: the model's output shape (n, ..., K)
    if r.feedback == "direct":
        assert example_input is not None

        def _record(mod: nn.Module, inp: Any, out: Any, nm: str) -> None:
            in_shapes[nm] = tuple(inp[0].shape)
            needs_feedback[nm] = bool(inp[0].requires_grad)

        hooks = [
            m.register_forward_hook(lambda mod, inp, out, nm=name: _record(mod, inp, out, nm))
            for name, m, _, is_syn in plan
            if is_syn
        ]
        saved = [(b, b.detach().clone()) for b in model.buffers()]  # e.g. BatchNorm statistics: leave them be
        try:
            with torch.enable_grad():  # requires_grad of each layer's input: is anything trainable upstream?
                out = model(example_input)
        finally:
            for h in hooks:
                h.remove()
            with torch.no_grad():
                for b, v in saved:
                    b.copy_(v)
        if not isinstance(out, Tensor):
            raise HeterogradError("dfa needs a model whose output is one tensor (the output error is taken there)")
        out_shape = tuple(out.shape)
        out_size = out[0].numel()
    direct = DirectContext() if r.feedback == "direct" else None

    guard = GradientGuard()
    for k, (name, m, base, is_syn) in enumerate(plan):
        if not is_syn:
            m.__class__ = _NORM_TYPES[base]
            m.plasticity = Plasticity(r, None, name, norm_feedback=norm_feedback, guard=guard)  # type: ignore[assignment]
            continue
        syn = _synapse_of(name, m, base)
        W: Tensor = m.weight  # type: ignore[assignment]
        layer_gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + k) if r.name == "brsf" else None
        m.__class__ = _SYNAPSE_TYPES[base]
        m.plasticity = Plasticity(r, syn, name, generator=layer_gen, direct=direct, guard=guard)  # type: ignore[assignment]
        if not syn.has_transport or (not has_B and r.feedback != "direct"):
            m.register_buffer("feedback", None)
        elif r.feedback == "direct":
            shape = in_shapes.get(name)
            if shape is None:
                raise HeterogradError(f"dfa: layer {name!r} was not used by the example input's forward pass")
            if not needs_feedback[name]:  # e.g. the first layer: its input (the data) takes no feedback
                m.register_buffer("feedback", None)
                continue
            if base is nn.Linear and len(shape) > 2 and shape[:-1] == out_shape[:-1]:
                # a sequence (n, T, d_in) with one output per position: D (K, d_in) shared by the positions,
                # each position's feedback from its own output error (per-token DFA, as in published transformers)
                m.register_buffer("feedback", _direct_feedback(W, syn, (shape[0], shape[-1]), out_shape[-1], gen))
                continue
            m.register_buffer("feedback", _direct_feedback(W, syn, shape, out_size, gen))
        else:
            B = _initial_feedback(W.detach(), syn, init, gen, feedback_scale or "xavier")
            if r.feedback == "plastic":
                m.register_parameter("feedback", nn.Parameter(B, requires_grad=W.requires_grad))
            else:
                m.register_buffer("feedback", B)
    if direct is not None:
        model.register_forward_hook(CaptureOutputError(direct))
    guard.layers = [(name, m) for name, m, _, _ in plan]  # a gradient that bypassed its layer is an error
    guard.install_hooks()
    return model


def _direct_feedback(W: Tensor, syn: Synapse, in_shape: tuple[int, ...], K: int, gen: torch.Generator) -> Tensor:
    """The fixed random direct feedback ``D`` of one layer, from the model's ``K`` outputs to the layer's input.

    * conv (``W`` ``(C_out, C_in/groups, *k)``): a kernel ``(K, C_in, *k)`` shaped like the layer's own, as
      the published implementations do it; at t' the output error ``e`` ``(n, K)``, spread over the layer's
      output positions (the rule's ``spread``), is sent to the input by the convolution transpose with ``D``
      (same stride, padding, dilation; no groups: every class reaches every input channel).
    * dense (input ``(n, *F)``): a matrix ``(K, *F)``, ``v = e D``. A sequence layer (input ``(n, T, d)``, one
      output ``(n, T, K)`` per position) is passed ``in_shape = (n, d)`` and ``K`` per position: ``D`` ``(K, d)``,
      shared by the positions.

    Scale: Xavier uniform on ``±√(6/(fan_in + fan_out))`` of ``D``'s shape (`xavier_bound`), i.e.
    normalised by the mean of ``D``'s forward fan-in (``C_in·∏k``, dense ``∏F``) and its feedback fan-in
    ``K·∏k`` (dense ``K``): the number of (class, kernel tap) terms summed into one input unit at stride 1.
    """
    if isinstance(syn, Conv):
        shape: tuple[int, ...] = (K, W.shape[1] * syn.groups, *W.shape[2:])
    else:
        shape = (K, *in_shape[1:])
    bound = xavier_bound((K, math.prod(shape[1:])) if not isinstance(syn, Conv) else shape)
    D = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    return D.to(dtype=W.dtype, device=W.device)


class CaptureOutputError:
    """Forward hook of a dfa model: at t' the gradient at the model's output (the error ``e``) goes to ``context``.

    A picklable object (not a closure), so ``copy.deepcopy`` and ``torch.save(model)`` keep it tied to the
    copied layers' shared context.
    """

    def __init__(self, context: DirectContext) -> None:
        self.context = context

    def _store(self, grad: Tensor) -> None:
        self.context.e = grad

    def __call__(self, module: nn.Module, inputs: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(self._store)


def plastic_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every converted module of ``model`` (synapses and norm layers), in order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PlasticModule)]


__all__ = ["FEEDBACK_INITS", "FEEDBACK_SCALES", "NORM_FEEDBACK", "convert", "plastic_layers"]
