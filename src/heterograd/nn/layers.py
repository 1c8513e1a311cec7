"""Plastic layers of converted models and the custom autograd functions that run their t' sweep.

Autograd is only the scheduler here: it orders the feedback sweep through the parameter-free operations
(nonlinearities, pooling, residual sums, reshapes, softmax carry the feedback by their local derivative)
and, at every plastic connection, calls `PlasticFunction.backward`, which

* sends the feedback to the presynaptic side by transport with the layer's ``B`` (or what the rule says:
  ``W`` for ``bp``, ``sign(W)``-built matrices for sign symmetry, ``D e`` for direct feedback), and only
  when the input needs feedback at all (never into the model's input);
* hands the local signals ``(u, h)`` to the rule and returns ``-Δ/η`` as the "gradient" of ``W``, ``b``
  and (when plastic) ``B``; autograd accumulates it into ``.grad`` so that ``torch.optim``, schedulers,
  clipping and data-parallel hooks work unchanged. Autograd never computes ``∇W`` of a plastic layer.

Signals of a converted layer: ``u`` is the loss gradient arriving at the layer's output (it carries the
loss's ``1/n``), so the correlation has ``scale = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import HeterogradError
from ..rules import FeedbackSignals, ForwardSignals, Params, Rule, Signals
from ..synapses import Conv, Synapse


@dataclass
class DirectContext:
    """The output error ``e`` ``(n, ...)`` captured at the model output, shared by a model's dfa layers."""

    e: Tensor | None = None


class GradientGuard:
    """Catches a plastic parameter whose gradient did not come from its own plastic layer (one per converted model).

    ``F.linear(x, model.fc1.weight)`` instead of ``model.fc1(x)`` would let autograd's ``∇W`` into ``.grad`` and
    bypass the rule in silence. An eager forward of a plastic layer arms the guard; each plastic layer's backward
    records the parameters it delivered a gradient to; a hook on every plastic parameter (`GuardHook`)
    raises `HeterogradError` naming a parameter whose gradient arrived without that record. The state is
    reset at the end of every backward pass. Under ``torch.compile`` the layers run compiled and nothing is
    armed (no check). The hooks are (re)installed when the guard arms, so copies of the model are guarded too.

    Attributes:
        layers: ``(path, module)`` of the model's plastic modules (set by `heterograd.nn.convert`).
    """

    def __init__(self) -> None:
        self.armed = False
        self.delivered: set[int] = set()
        self._reset_queued = False
        self.layers: list[tuple[str, nn.Module]] = []

    def arm(self) -> None:
        """An eager forward of a plastic layer with gradients on: the next backward is checked."""
        if not self.armed:
            self.install_hooks()
            self.armed = True

    def install_hooks(self) -> None:
        """A `GuardHook` on every trainable parameter of `layers` that has none of this guard."""
        for name, m in self.layers:
            for pname, p in m.named_parameters(recurse=False):
                hooks = (getattr(p, "_backward_hooks", None) or {}).values()  # copies and loads lose them
                if p.requires_grad and not any(isinstance(h, GuardHook) and h.guard is self for h in hooks):
                    p.register_hook(GuardHook(self, f"{name}.{pname}" if name else pname, p))

    def deliver(self, *ids: int | None) -> None:
        """A plastic layer's backward returned the rule's update for the parameters of these ``id()``s."""
        self.delivered.update(i for i in ids if i is not None)
        self._queue_reset()

    def _queue_reset(self) -> None:
        if not self._reset_queued:
            self._reset_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self.reset)

    def reset(self) -> None:
        """Forget this backward pass (queued to run when it ends)."""
        self.armed, self._reset_queued = False, False
        self.delivered.clear()

    def check(self, param: Tensor, name: str) -> None:
        """Raise when ``param``'s gradient arrives in an armed backward without its plastic layer's record."""
        if not self.armed:
            return
        self._queue_reset()
        if id(param) not in self.delivered:
            self.reset()
            raise HeterogradError(
                f"plastic parameter {name!r} received a gradient that did not come from its plastic layer (the "
                "model uses it outside its module, e.g. F.linear(x, self.fc1.weight)), so autograd's gradient would "
                f"replace the rule's update; call the module itself (self.{name.rpartition('.')[0] or name}(x))"
            )


class GuardHook:
    """The gradient hook of one plastic parameter: ``guard.check(param, name)`` (a picklable object, not a closure)."""

    def __init__(self, guard: GradientGuard, name: str, param: Tensor) -> None:
        self.guard, self.name, self.param = guard, name, param

    def __call__(self, grad: Tensor | None) -> None:
        if grad is not None:  # autograd.grad calls hooks with None for an input that got no gradient
            self.guard.check(self.param, self.name)


def _arm(pl: Plasticity) -> None:
    if pl.guard is not None and not torch.compiler.is_compiling():
        pl.guard.arm()


def _ids(*tensors: Tensor | None) -> tuple[int | None, ...]:
    """``id()`` of each parameter as the forward received it (before any autocast copy), ``None`` for ``None``."""
    return tuple(None if t is None else id(t) for t in tensors)


def _deliver(pl: Plasticity, ids: tuple[int | None, ...], *given: bool) -> None:
    """Record that the backward returned a gradient for ``ids[i]`` where ``given[i]``."""
    if pl.guard is not None and not torch.compiler.is_compiling():
        pl.guard.deliver(*(i for i, ok in zip(ids, given, strict=False) if ok))


@dataclass(eq=False)
class Plasticity:
    """What a plastic layer needs at t': its rule, synapse type and per-layer state (never in ``state_dict``).

    Attributes:
        rule: the learning rule; synapse: the connection type (``None`` for normalisation layers).
        name: the module path in the converted model.
        generator: the layer's own seeded generator (batchwise-random feedback), or ``None``.
        direct: the shared output-error holder of direct feedback alignment, or ``None``.
        exact: probes only: transport with ``W`` and return the true gradient (a bp pass).
        norm_feedback: normalisation layers only: ``"exact"`` (the derivative of the normalisation, through its
            batch / sample statistics) or ``"local"`` (``γ/σ`` per channel, the statistics held fixed); see
            `NORM_FEEDBACK`. Probes' true-gradient pass always uses ``"exact"``.
        record: probes only: when a dict, the backward stores ``u``, ``h``, ``p`` and the returned ``W`` grad.
        device: hardware hook (set by `heterograd.hardware.attach`), ``None`` by default (no cost): the
            forward multiplies with ``device.read_forward(W, b)`` and the feedback transports with
            ``device.read_feedback(M)``, reads of the layer's device arrays.
        guard: the model's `GradientGuard` (set by `heterograd.nn.convert`), or ``None``.
    """

    rule: Rule
    synapse: Synapse | None
    name: str
    generator: torch.Generator | None = None
    direct: DirectContext | None = None
    exact: bool = False
    norm_feedback: str = "exact"
    record: dict[str, Tensor] | None = field(default=None, repr=False)
    device: Any = field(default=None, repr=False)
    guard: GradientGuard | None = field(default=None, repr=False)
    keep_potential: bool = field(init=False)
    plastic_feedback: bool = field(init=False)

    def __post_init__(self) -> None:
        self.keep_potential = self.rule.needs_potential()
        self.plastic_feedback = self.rule.feedback == "plastic"


NORM_FEEDBACK: tuple[str, ...] = ("exact", "local")
"""How feedback crosses a normalisation layer ``y = γ ⊙ (x - μ)/σ + β`` at t'.

``exact`` (the default): the full derivative of the normalisation, as backprop's: BatchNorm's runs through the
batch statistics ``μ``, ``σ`` (``native_batch_norm_backward``), so in training mode the feedback to one sample
depends on every sample of the batch; LayerNorm's and GroupNorm's run through each sample's own statistics.
This holds under every rule. ``local``: ``v = u ⊙ γ/σ``, the per-channel gain of the layer with its statistics
held fixed (BatchNorm: the batch ``σ`` the forward divided by in training mode, the running ``σ`` in eval
mode; LayerNorm / GroupNorm: each sample's ``σ``), with no coupling across samples or channels.
"""


def _local_norm(pl: Plasticity) -> bool:
    """Feedback through a norm layer by ``γ/σ`` only (not in the probes' true-gradient pass)."""
    return pl.norm_feedback == "local" and not pl.exact


def _weight_decay(rule: Rule) -> float:
    return float(getattr(rule, "weight_decay", 0.0) or 0.0)


def _direct_transport(pl: Plasticity, D: Tensor | None, x: Tensor, g: Tensor) -> Tensor:
    """The direct feedback to the layer's input ``x`` ``(n, ...)`` from the captured output error ``e`` ``(n, K...)``.

    Conv layer (``D`` ``(K, C_in, *k)``): ``e`` flattened to ``(n, K)`` and spread over the layer's ``P``
    output positions (those of ``g`` ``(n, C_out, *S')``): ``e/P`` at each (the rule's ``spread="mean"``,
    the adjoint of global average pooling) or ``e`` at each (``spread="repeat"``, as biotorch), then sent back
    by the convolution transpose with ``D`` (the layer's stride, padding and dilation) to ``(n, C_in, *S)``.
    Dense layer (``D`` ``(K, ...)``): ``e D``; a sequence layer (``x`` ``(n, T, d)``, ``e`` ``(n, T, K)``,
    ``D`` ``(K, d)``) gets ``e_t D`` at each position ``t`` (per-token DFA).
    """
    assert pl.direct is not None
    e = pl.direct.e
    if e is None:
        raise HeterogradError(
            f"dfa layer {pl.name!r}: no output error was captured; the loss must be computed from the converted "
            "model's output tensor"
        )
    if D is None:
        raise HeterogradError(
            f"dfa layer {pl.name!r}: its input needs feedback but the layer has no direct feedback D (its input "
            "took none when the model was converted); convert the model again after changing what is trainable"
        )
    if D.dim() == 2 and e.dim() > 2 and e.shape[:-1] == x.shape[:-1] and D.shape[1] == x.shape[-1]:
        return e.to(D.dtype) @ D  # per position: (n, T, K) @ (K, d_in) -> (n, T, d_in)
    n = x.shape[0]
    e = e.reshape(n, -1).to(D.dtype)
    syn = pl.synapse
    if isinstance(syn, Conv):
        fb = Conv(tuple(D.shape), syn.stride, syn.padding, syn.dilation, 1)
        positions = g[0, 0].numel()
        spread = e.reshape(*e.shape, *([1] * syn.dims)).expand(*e.shape, *g.shape[2:])
        spread = spread.div(positions) if getattr(pl.rule, "spread", "mean") == "mean" else spread.contiguous()
        return fb.transport(spread, D, x)
    return (e @ D.reshape(D.shape[0], -1)).reshape(x.shape)


class PlasticFunction(torch.autograd.Function):
    """``p = W ⋆ x + b`` at t; at t' transport and the rule's update (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, W: Tensor, b: Tensor | None, B: Tensor | None, pl: Plasticity) -> Tensor:
        syn = pl.synapse
        assert syn is not None
        ctx.ids = _ids(W, b, B)
        dev = W.device.type
        if syn.has_transport and torch.is_autocast_enabled(dev):  # AMP: compute and keep in its dtype
            dt = torch.get_autocast_dtype(dev)
            x, W, b, B = (None if t is None else t.to(dt) for t in (x, W, b, B))
            with torch.autocast(dev, enabled=False):
                p = syn.forward(x, W, b) if pl.device is None else syn.forward(x, *pl.device.read_forward(W, b))
        else:
            p = syn.forward(x, W, b) if pl.device is None else syn.forward(x, *pl.device.read_forward(W, b))
        ctx.pl = pl
        ctx.save_for_backward(x, W, b, B, p if (pl.keep_potential or pl.record is not None) else None)
        _arm(pl)
        return p

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, W, b, B, p = ctx.saved_tensors
        pl: Plasticity = ctx.pl
        rule, syn = pl.rule, pl.synapse
        assert syn is not None
        need_x, need_W, need_b, need_B = ctx.needs_input_grad[:4]
        need_x = need_x and syn.has_transport
        if not g.is_contiguous():
            g = g.contiguous()
        if pl.exact:  # probes: the true gradient (transport with W, update C(u, h))
            v, C = syn.transport_and_correlation(g, syn.as_feedback(W) if need_x else None, x, 1.0, need_x)
            if pl.record is not None:
                pl.record.update(u=g, h=x, p=p, dW=-C)
            gb = syn.bias_correlation(g, 1.0) if (need_b and b is not None) else None
            _deliver(pl, ctx.ids, need_W, gb is not None)
            return v, (C if need_W else None), gb, None, None
        need_b = need_b and b is not None
        # transport: to the presynaptic side only where it needs feedback (never into the model's input)
        direct = pl.direct is not None
        M = rule.transport_weights(W, B, syn, pl.generator) if (need_x and not direct) else None
        if M is not None and pl.device is not None:  # hardware hook: a read of the feedback pathway's array
            M = pl.device.read_feedback(M)
        v: Tensor | None = _direct_transport(pl, B, x, g) if (need_x and direct) else None
        C: Tensor | None = None
        Cb: Tensor | None = None
        if rule.uses_correlation and need_W and isinstance(syn, Conv):  # transport, C(u, h), C(u, 1): one call
            v_conv, C, Cb = syn.transport_correlation_bias(g, M, x, 1.0, M is not None, need_b)
            if M is not None:
                v = v_conv
        elif M is not None:
            v = syn.transport(g, M, x)
        if not (need_W or need_b or need_B):
            _deliver(pl, ctx.ids, False, False, need_B)
            return v, None, None, None, None
        plastic_B = pl.plastic_feedback and B is not None and need_B
        fsig = ForwardSignals(x, p, p, g, syn, 1.0, C, Cb)
        grads = rule.layer_grads(fsig, W, b if need_b else None, B if plastic_B else None)
        if grads is None:  # the general path: the rule's deltas on one layer's signals
            fb = (FeedbackSignals(x, None, g, True, 1, 0, syn, 1.0),) if plastic_B else ()
            params = Params((W,), (b,), (B,) if plastic_B else ())
            d, _ = rule.deltas(Signals((fsig,), fb), params, None)
            grads = tuple(None if t is None else t.neg_() for t in (d.W[0], d.b[0], d.B[0] if plastic_B else None))
        gW, gb, gB = grads
        if pl.record is not None and gW is not None:
            pl.record.update(u=g, h=x, p=p, dW=-gW)
        _deliver(pl, ctx.ids, need_W, need_b, need_B)
        return v, (gW if need_W else None), (gb if need_b else None), (gB if plastic_B else None), None


def plastic_forward(x: Tensor, W: Tensor, b: Tensor | None, B: Tensor | None, pl: Plasticity) -> Tensor:
    """Run a plastic connection: through `PlasticFunction` when anything needs feedback, else plainly."""
    if torch.is_grad_enabled() and (
        W.requires_grad or x.requires_grad or (b is not None and b.requires_grad) or (B is not None and B.requires_grad)
    ):
        return PlasticFunction.apply(x, W, b, B, pl)
    assert pl.synapse is not None
    return pl.synapse.forward(x, W, b)


class AffineFunction(torch.autograd.Function):
    """``y = γ ⊙ x̂ + β`` of a normalisation layer, with the local rule ``Δγ = -(Σ u ⊙ x̂ + λγ)``, ``Δβ = -(Σ u + λβ)``.

    ``x̂`` ``(n, ...)``; ``γ``, ``β`` broadcast to it through ``view`` (e.g. ``(1, C, 1, 1)``). The feedback to
    ``x̂`` is ``γ ⊙ u`` (the per-neuron gain, a local derivative). ``λ`` is the rule's weight decay.
    """

    @staticmethod
    def forward(
        ctx: Any, xhat: Tensor, gamma: Tensor, beta: Tensor | None, view: tuple[int, ...], pl: Plasticity
    ) -> Tensor:
        y = xhat * gamma.view(view)
        if beta is not None:
            y = y + beta.view(view)
        ctx.view, ctx.pl, ctx.ids = view, pl, _ids(gamma, beta)
        ctx.save_for_backward(xhat, gamma, beta)
        _arm(pl)
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        xhat, gamma, beta = ctx.saved_tensors
        view = ctx.view
        if len(view) == g.dim() and view[0] == 1:  # channel view (1, C, 1, ...)
            dims = [i for i, s in enumerate(view) if s == 1]
        else:  # trailing view (LayerNorm's normalized_shape)
            dims = list(range(g.dim() - len(view)))
        lam = 0.0 if ctx.pl.exact else _weight_decay(ctx.pl.rule)
        v = g * gamma.view(view) if ctx.needs_input_grad[0] else None
        gg = gb = None
        if ctx.needs_input_grad[1]:
            gg = (g * xhat).sum(dims).reshape(gamma.shape)
            if lam:
                gg.add_(gamma, alpha=lam)
        if beta is not None and ctx.needs_input_grad[2]:
            gb = g.sum(dims).reshape(beta.shape)
            if lam:
                gb.add_(beta, alpha=lam)
        _deliver(ctx.pl, ctx.ids, gg is not None, gb is not None)
        return v, gg, gb, None, None


def _affine(xhat: Tensor, gamma: Tensor | None, beta: Tensor | None, view: tuple[int, ...], pl: Plasticity) -> Tensor:
    if gamma is None:
        return xhat if beta is None else xhat + beta.view(view)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (xhat, gamma, beta)):
        return AffineFunction.apply(xhat, gamma, beta, view, pl)
    y = xhat * gamma.view(view)
    return y if beta is None else y + beta.view(view)


class BatchNormFunction(torch.autograd.Function):
    """Fused BatchNorm with a plastic affine map: ``y = γ ⊙ x̂ + β`` with ``x̂`` normalised over ``(n, *S)``.

    One native kernel each way (no activation-sized ``x̂`` is kept: the same memory as torch's BatchNorm).
    The backward returns the local derivative of the normalisation times ``γ`` to the input, and the local
    rule ``(Σ u ⊙ x̂ + λγ, Σ u + λβ)`` as the "gradient" of ``γ``, ``β`` (from the same kernel).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        gamma: Tensor,
        beta: Tensor,
        rm: Tensor | None,
        rv: Tensor | None,
        training: bool,
        momentum: float,
        eps: float,
        pl: Plasticity,
    ) -> Tensor:
        out, mean, invstd = torch.ops.aten.native_batch_norm(x, gamma, beta, rm, rv, training, momentum, eps)
        ctx.training, ctx.eps, ctx.pl, ctx.ids = training, eps, pl, _ids(gamma, beta)
        ctx.save_for_backward(x, gamma, beta, rm, rv, mean, invstd)
        _arm(pl)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, gamma, beta, rm, rv, mean, invstd = ctx.saved_tensors
        local = _local_norm(ctx.pl)
        mask = [ctx.needs_input_grad[0] and not local, ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        g = g.contiguous()
        gx, gg, gb = torch.ops.aten.native_batch_norm_backward(
            g, x, gamma, rm, rv, mean, invstd, ctx.training, ctx.eps, mask
        )
        if local and ctx.needs_input_grad[0]:  # u ⊙ γ/σ per channel; σ: the one the forward divided by
            if not ctx.training or invstd.numel() == 0:
                assert rv is not None
                invstd = torch.rsqrt(rv + ctx.eps)
            view = (1, -1) + (1,) * (x.dim() - 2)
            gx = g * (gamma * invstd.to(gamma.dtype)).view(view)
        lam = 0.0 if ctx.pl.exact else _weight_decay(ctx.pl.rule)
        if lam and gg is not None:
            gg.add_(gamma, alpha=lam)
        if lam and gb is not None:
            gb.add_(beta, alpha=lam)
        _deliver(ctx.pl, ctx.ids, gg is not None, gb is not None)
        return gx, gg, gb, None, None, None, None, None, None


class LayerNormFunction(torch.autograd.Function):
    """Fused LayerNorm with a plastic affine map (``γ``, ``β`` shaped ``normalized_shape``; ``β`` may be ``None``).

    As `BatchNormFunction`: one native kernel each way, the local rule for ``γ``, ``β``.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, gamma: Tensor, beta: Tensor | None, shape: list[int], eps: float, pl: Plasticity
    ) -> Tensor:
        out, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, gamma, beta, eps)
        ctx.shape, ctx.pl, ctx.ids = shape, pl, _ids(gamma, beta)
        ctx.save_for_backward(x, gamma, beta, mean, rstd)
        _arm(pl)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, gamma, beta, mean, rstd = ctx.saved_tensors
        local = _local_norm(ctx.pl)
        mask = [
            ctx.needs_input_grad[0] and not local,
            ctx.needs_input_grad[1],
            beta is not None and ctx.needs_input_grad[2],
        ]
        g = g.contiguous()
        gx, gg, gb = torch.ops.aten.native_layer_norm_backward(g, x, ctx.shape, mean, rstd, gamma, beta, mask)
        if local and ctx.needs_input_grad[0]:  # u ⊙ γ/σ, σ: each sample's own (rstd (*lead, 1, ...))
            gx = g * gamma * rstd.to(g.dtype)
        lam = 0.0 if ctx.pl.exact else _weight_decay(ctx.pl.rule)
        if lam and gg is not None:
            gg.add_(gamma, alpha=lam)
        if lam and gb is not None:
            gb.add_(beta, alpha=lam)
        _deliver(ctx.pl, ctx.ids, gg is not None, gb is not None)
        return gx, gg, gb, None, None, None


def _needs_plastic_norm(x: Tensor, gamma: Tensor | None, beta: Tensor | None) -> bool:
    return (
        gamma is not None
        and torch.is_grad_enabled()
        and (x.requires_grad or gamma.requires_grad or (beta is not None and beta.requires_grad))
    )


def _group_norm_fixed_stats(x: Tensor, groups: int, eps: float, pl: Plasticity) -> Tensor:
    """``x̂`` ``(n, C, ...)`` of GroupNorm whose feedback is ``u / σ`` (local mode): the statistics are held fixed.

    In the probes' true-gradient pass (``pl.exact``) the statistics are part of the graph again, so the pass
    stays the exact gradient.
    """
    if pl.exact:
        return F.group_norm(x, groups, None, None, eps)
    n = x.shape[0]
    xg = x.reshape(n, groups, -1)
    with torch.no_grad():
        var, mean = torch.var_mean(xg, dim=2, unbiased=False, keepdim=True)
        rstd = torch.rsqrt(var + eps)
    return ((xg - mean) * rstd).reshape(x.shape)


# --------------------------------------------------------------------------- plastic modules
class PlasticModule:
    """Marker mixin of converted modules; ``plasticity`` holds the rule and synapse type."""

    plasticity: Plasticity


class PlasticLinear(nn.Linear, PlasticModule):
    """``nn.Linear`` learning by a local rule: ``weight`` ``(out, in)``, ``feedback`` ``(in, out)`` like ``Wᵀ``."""

    feedback: Tensor | None

    def forward(self, x: Tensor) -> Tensor:
        return plastic_forward(x, self.weight, self.bias, self.feedback, self.plasticity)


class PlasticConv1d(nn.Conv1d, PlasticModule):
    """``nn.Conv1d`` learning by a local rule. ``feedback`` ``B`` shaped like ``weight``."""

    feedback: Tensor | None

    def forward(self, x: Tensor) -> Tensor:
        return plastic_forward(x, self.weight, self.bias, self.feedback, self.plasticity)


class PlasticConv2d(nn.Conv2d, PlasticModule):
    """``nn.Conv2d`` learning by a local rule. ``feedback`` ``B`` shaped like ``weight``."""

    feedback: Tensor | None

    def forward(self, x: Tensor) -> Tensor:
        return plastic_forward(x, self.weight, self.bias, self.feedback, self.plasticity)


class PlasticEmbedding(nn.Embedding, PlasticModule):
    """``nn.Embedding`` learning by a local rule (lookup synapse; no feedback to send: its input is an index)."""

    feedback: Tensor | None

    def forward(self, x: Tensor) -> Tensor:
        return plastic_forward(x, self.weight, None, None, self.plasticity)


class _PlasticBatchNorm(PlasticModule):
    """BatchNorm whose affine parameters learn by the local rule (`BatchNormFunction`)."""

    def forward(self, x: Tensor) -> Tensor:
        bn: Any = self
        bn._check_input_dim(x)
        eaf = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            eaf = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        training = bn.training or (bn.running_mean is None and bn.running_var is None)
        use_stats = not bn.training or bn.track_running_stats
        rm = bn.running_mean if use_stats else None
        rv = bn.running_var if use_stats else None
        if _needs_plastic_norm(x, bn.weight, bn.bias):
            if torch.is_autocast_enabled(x.device.type):  # as autocast runs batch_norm: in the input's dtype
                with torch.autocast(x.device.type, enabled=False):
                    return BatchNormFunction.apply(
                        x, bn.weight, bn.bias, rm, rv, training, eaf, bn.eps, self.plasticity
                    )
            return BatchNormFunction.apply(x, bn.weight, bn.bias, rm, rv, training, eaf, bn.eps, self.plasticity)
        return F.batch_norm(x, rm, rv, bn.weight, bn.bias, training, eaf, bn.eps)


class PlasticBatchNorm1d(_PlasticBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose affine ``γ``, ``β`` ``(C,)`` learn by the local rule."""


class PlasticBatchNorm2d(_PlasticBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose affine ``γ``, ``β`` ``(C,)`` learn by the local rule."""


class PlasticBatchNorm3d(_PlasticBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` whose affine ``γ``, ``β`` ``(C,)`` learn by the local rule."""


class PlasticLayerNorm(nn.LayerNorm, PlasticModule):
    """``nn.LayerNorm`` whose elementwise affine ``γ``, ``β`` (``normalized_shape``) learn by the local rule."""

    def forward(self, x: Tensor) -> Tensor:
        shape = list(self.normalized_shape)
        if not _needs_plastic_norm(x, self.weight, self.bias):
            return F.layer_norm(x, shape, self.weight, self.bias, self.eps)
        if torch.is_autocast_enabled(x.device.type):  # autocast runs layer_norm in float32
            with torch.autocast(x.device.type, enabled=False):
                return LayerNormFunction.apply(x.float(), self.weight, self.bias, shape, self.eps, self.plasticity)
        return LayerNormFunction.apply(x, self.weight, self.bias, shape, self.eps, self.plasticity)


class PlasticGroupNorm(nn.GroupNorm, PlasticModule):
    """``nn.GroupNorm`` whose per-channel affine ``γ``, ``β`` ``(C,)`` learn by the local rule."""

    def forward(self, x: Tensor) -> Tensor:
        if self.plasticity.norm_feedback == "local" and torch.is_grad_enabled() and x.requires_grad:
            xhat = _group_norm_fixed_stats(x, self.num_groups, self.eps, self.plasticity)
        else:
            xhat = F.group_norm(x, self.num_groups, None, None, self.eps)
        view = (1, -1) + (1,) * (x.dim() - 2)
        return _affine(xhat, self.weight, self.bias, view, self.plasticity)


__all__ = [
    "NORM_FEEDBACK",
    "AffineFunction",
    "BatchNormFunction",
    "DirectContext",
    "GradientGuard",
    "GuardHook",
    "LayerNormFunction",
    "PlasticBatchNorm1d",
    "PlasticBatchNorm2d",
    "PlasticBatchNorm3d",
    "PlasticConv1d",
    "PlasticConv2d",
    "PlasticEmbedding",
    "PlasticFunction",
    "PlasticGroupNorm",
    "PlasticLayerNorm",
    "PlasticLinear",
    "PlasticModule",
    "Plasticity",
    "plastic_forward",
]
