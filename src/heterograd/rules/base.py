"""The rule contract: pure functions of local signals that return deltas.

A rule sees, for every forward layer, the presynaptic activity at time t and
the postsynaptic feedback potential at time t' (`ForwardSignals`), and
for every feedback edge the postsynaptic activity at t and the presynaptic
feedback potential at t' (`FeedbackSignals`). It returns
`Deltas`: the change per unit learning rate, so plain SGD applies
``W ← W + η ΔW``. Rules never mutate their inputs and never call autograd
(the ``bp`` baseline is the one documented exception; it sets
``uses_autograd = True``).

Sign convention: ``ΔW = -F(...)`` with ``F`` as in docs/theory.md, so the bilinear
rule returns ``ΔW_l = -(u_lᵀ h_{l-1} / n + λ W_l)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from ..synapses import DENSE, Synapse

if TYPE_CHECKING:
    from ..circuits import Circuit, Trace
    from ..losses import Loss


@dataclass(frozen=True)
class ForwardSignals:
    """Local signals at the synapses ``W_l`` of forward layer ``l``.

    Attributes:
        h_pre: ``(n, n_{l-1})`` presynaptic activity at time t.
        p: ``(n, n_l)`` postsynaptic forward potential at time t.
        h: ``(n, n_l)`` postsynaptic activity at time t.
        u: ``(n, n_l)`` postsynaptic feedback potential at time t'.
        synapse: the connection type (`heterograd.synapses`); the Circuit engine's is dense. For a
            conv synapse the tensors are ``(n, C, *S)`` and ``W`` is ``(C_out, C_in/g, *k)``.
        scale: the correlation's batch factor, ``C(u, h) = scale · Σ u ⊗ h``. ``None`` (the Circuit
            engine): ``u`` is per sample and ``scale = 1/n``. A converted ``torch.nn`` layer passes the
            loss gradient at its output as ``u`` (already carrying the loss's ``1/n``) and ``scale = 1``.
        C: ``C(u, h_pre)`` at that scale when the engine already computed it (a conv layer gets it from
            the same native call as the transport), else ``None``.
        Cb: likewise the bias correlation ``C(u, 1)`` ``(n_l,)``, or ``None``.

    ``p`` and ``h`` may be ``None`` for a converted layer (it sees its potential, not the activity after the
    next nonlinearity); rules that need them say so (`Rule.needs_potential`).
    """

    h_pre: Tensor
    p: Tensor
    h: Tensor
    u: Tensor
    synapse: Synapse = DENSE
    scale: float | None = None
    C: Tensor | None = None
    Cb: Tensor | None = None

    def batch_scale(self) -> float:
        """The factor of ``C(u, h) = scale · Σ u ⊗ h``: ``1/n`` for the Circuit engine."""
        return 1.0 / self.u.shape[0] if self.scale is None else self.scale


@dataclass(frozen=True)
class FeedbackSignals:
    """Local signals at the synapses ``B`` of a feedback edge ``src -> dst``.

    Attributes:
        h_post: ``(n, n_dst)`` postsynaptic (lower-layer) activity at time t.
        p_post: ``(n, n_dst)`` postsynaptic forward potential at time t.
        u_pre: ``(n, n_src)`` presynaptic (upper-layer) feedback potential at time t'.
        adjacent: True when the edge mirrors ``W_src`` (``src == dst + 1``); then
            ``h_post`` is the very tensor ``h_pre`` of forward layer ``src`` and
            ``u_pre`` its ``u``, so a rule may reuse that layer's outer product.
        src, dst: layer indices of the edge.
        synapse, scale: as in `ForwardSignals` (an adjacent edge's synapse type is ``W_src``'s).
            A converted layer has no presynaptic potential: there ``p_post`` is ``None``.
    """

    h_post: Tensor
    p_post: Tensor | None
    u_pre: Tensor
    adjacent: bool
    src: int
    dst: int
    synapse: Synapse = DENSE
    scale: float | None = None

    def batch_scale(self) -> float:
        return 1.0 / self.u_pre.shape[0] if self.scale is None else self.scale


@dataclass(frozen=True)
class Params:
    """Read-only view of the plastic tensors a rule may look at.

    Attributes:
        W: ``L`` tensors ``(n_l, n_{l-1})``.
        b: ``L`` tensors ``(n_l,)``.
        B: one tensor ``(n_dst, n_src)`` per feedback edge.
    """

    W: tuple[Tensor, ...]
    b: tuple[Tensor, ...]
    B: tuple[Tensor, ...]

    @classmethod
    def of(cls, circuit: Circuit) -> Params:
        return cls(tuple(circuit.W), tuple(circuit.b), tuple(circuit.B))


@dataclass(frozen=True)
class Signals:
    """Everything local that a rule may use in one step.

    Attributes:
        forward: one `ForwardSignals` per forward layer ``1..L`` (index ``l-1``).
        feedback: one `FeedbackSignals` per feedback edge (same order as ``circuit.B``).
    """

    forward: tuple[ForwardSignals, ...]
    feedback: tuple[FeedbackSignals, ...]

    @classmethod
    def collect(cls, circuit: Circuit, trace: Trace, u: list[Tensor]) -> Signals:
        """Gather the signals from a forward trace and the feedback potentials ``u``."""
        fwd = []
        for l in range(1, circuit.depth + 1):
            p = trace.p[l]
            assert p is not None
            fwd.append(ForwardSignals(trace.h[l - 1], p, trace.h[l], u[l]))
        fb = []
        for e in circuit.edges:
            p = trace.p[e.dst]
            assert p is not None
            fb.append(FeedbackSignals(trace.h[e.dst], p, u[e.src], e.adjacent, e.src, e.dst))
        return cls(tuple(fwd), tuple(fb))


class PendingDelta(ABC):
    """A delta of `Rule.layer_deltas` not formed yet, which a plain-SGD step adds to its tensor in fewer passes.

    ``materialize()`` forms it exactly (bit for bit) as `Rule.deltas` returns it; ``add_to(t, alpha)`` does
    ``t += alpha · delta`` without forming it (a matrix product accumulated into ``t``, or a view added with the
    gain folded into ``alpha``), equal to ``t.add_(materialize(), alpha=alpha)`` to rounding. A pending
    piece reads the signals and tensors it was made from: use it (either call) before asking for the next piece.
    """

    @abstractmethod
    def materialize(self) -> Tensor:
        """The delta as a fresh tensor, laid out like its target."""

    @abstractmethod
    def add_to(self, t: Tensor, alpha: float) -> None:
        """``t += alpha · delta`` in place (``t`` is the tensor the delta belongs to)."""


@dataclass
class Deltas:
    """Per-unit-learning-rate changes; ``None`` means "this tensor does not change".

    Attributes:
        W: ``L`` tensors ``(n_l, n_{l-1})``.
        b: ``L`` tensors ``(n_l,)`` or ``None``.
        B: one ``(n_dst, n_src)`` tensor or ``None`` per feedback edge.
    """

    W: list[Tensor | None]
    b: list[Tensor | None]
    B: list[Tensor | None]

    def flat(self) -> list[Tensor | None]:
        """Deltas in the canonical order of `Circuit.plastic_tensors`."""
        return [*self.W, *self.b, *self.B]


class Rule(ABC):
    """A plasticity rule.

    Subclasses are dataclasses holding hyperparameters; register them with
    `heterograd.rules.register_rule` to make them available by name in the
    CLI and the training loop (which never needs to change for a new rule).
    """

    name: ClassVar[str]
    uses_autograd: ClassVar[bool] = False
    plastic_feedback: ClassVar[bool] = False
    feedback: ClassVar[str] = "frozen"
    """What ``B`` is in a converted model: ``plastic`` (a parameter the rule updates), ``frozen`` (a fixed
    buffer), ``none`` (no ``B``: transport is derived from ``W``, see `transport_weights`),
    ``direct`` (a fixed buffer ``D`` from the output error, direct feedback alignment)."""
    heterosynaptic: ClassVar[bool] = False
    """True when the feedback pathway learns by its own local rule (never by reading ``W``)."""
    circuit_engine: ClassVar[bool] = True
    """Whether the rule applies to the `Circuit` engine."""
    uses_correlation: ClassVar[bool] = False
    """Whether `deltas` reads the bilinear correlation ``C(u, h)`` (an engine may then precompute it)."""
    nn_engine: ClassVar[bool] = True
    """Whether the rule applies to converted ``torch.nn`` models (`heterograd.nn.convert`)."""

    def transport_weights(self, W: Tensor, B: Tensor | None, synapse: Synapse, generator: Any = None) -> Tensor:
        """The matrix that carries the feedback through a converted layer, laid out like ``B``.

        Default: ``B`` itself. ``bp`` returns ``W`` (exact adjoint); the sign-symmetry rules build it from
        ``sign(W)``. ``generator`` is the layer's own ``torch.Generator`` (for batchwise-random draws).
        """
        assert B is not None
        return B

    def layer_grads(
        self, sig: ForwardSignals, W: Tensor, b: Tensor | None, B: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None] | None:
        """Optional fast path for one converted layer: ``(-ΔW, -Δb, -ΔB)`` directly, the ``.grad`` to write.

        ``B`` is passed only when it is plastic. Must equal the negated `deltas` of the same one-layer
        signals (a test checks every rule that implements it). ``None`` (the default): the engine calls
        `deltas`.
        """
        return None

    def layer_deltas(
        self, signals: Signals, params: Params, state: Any
    ) -> Iterator[tuple[str, int, Tensor | PendingDelta | None]] | None:
        """Optional: `deltas` one piece at a time, so a plain-SGD step can apply and free each as it comes.

        Yields ``(kind, index, delta)`` with ``kind`` in ``"W"``, ``"b"``, ``"B"`` (``index`` into ``params.W``,
        ``params.b``, ``params.B``), every delta exactly (bit for bit) the one `deltas` returns, and
        each final when yielded: the caller may add it to its tensor at once, which later pieces never read.
        A delta may be a `PendingDelta` (added without being formed); the caller uses it before the next
        piece. Only for rules whose state is unchanged by a step. ``None`` (the default): not supported.
        """
        return None

    def needs_potential(self) -> bool:
        """Whether `deltas` reads ``p`` (a converted layer then keeps its output for the backward)."""
        return False

    @classmethod
    def unused_hyperparameters(cls, given: dict[str, Any]) -> dict[str, str]:
        """Hyperparameters (among the fields) that ``given`` makes meaningless, each with the reason.

        ``given`` holds the hyperparameters set for `make_rule` (no ``None``).
        The default: every field always matters. A rule whose fields override each other says so
        here, and setting an overridden one is an error rather than silently ignored.
        """
        return {}

    def init(self, circuit: Circuit) -> Any:
        """Create the rule's own state (default: none)."""
        return None

    def teaching(self, circuit: Circuit, trace: Trace, x: Tensor, y: Tensor, loss: Loss) -> list[Tensor] | None:
        """Optionally supply the feedback potentials ``u`` instead of the ``B`` pathway.

        Returns ``None`` (the default) to use ``circuit.run_feedback``.
        """
        return None

    @abstractmethod
    def deltas(self, signals: Signals, params: Params, state: Any) -> tuple[Deltas, Any]:
        """Compute the deltas of one step. Must not mutate ``signals``, ``params`` or ``state``."""

    def describe(self) -> str:
        """A readable equation of the rule."""
        return self.name
