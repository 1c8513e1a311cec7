"""A circuit on devices: every plastic tensor in its own `DeviceArray`, read and written through it.

`HardwareCircuit` attaches to a `Circuit` as its ``reader`` (the
circuit asks it for the weights it multiplies with) and is the update path of
`heterograd.train.apply_steps`. Forward weights ``W_l`` with biases ``b_l`` and every feedback
matrix ``B_k`` sit on separate arrays with their own device-to-device variation and stuck devices.

Reads are noisy only inside `HardwareCircuit.noisy_reads` (the training step): the forward
pass reads ``W``/``b`` and the feedback pass reads ``B``, with independent draws. Evaluation and
probes read the stored conductances without noise: they measure what was learned.

**Backprop on a device.** ``bp`` has no ``B`` arrays: its feedback pathway is a second, transposed
read of the forward array, ``B_k := read(W_src)ᵀ`` with its own read noise, and its teaching signal
is the circuit's feedback pass through those reads (`TransposedReadBP`). Without noise this is
backprop exactly (``u_l = σ'(p_l) ⊙ u_{l+1} W_{l+1}``); with noise it is the hardware backprop baseline.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from ..errors import HeterogradError
from ..rules import BP, Deltas, Params, Rule, Signals
from .devices import DeviceArray, DeviceModel, make_device_model

if TYPE_CHECKING:
    from ..circuits import Circuit, Trace
    from ..losses import Loss

_SEED_MULT = 1_000_003


def _generator(seed: int, stream: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((int(seed) * _SEED_MULT + stream) % (2**63))


@dataclass(frozen=True)
class TransposedReadBP(Rule):
    """Backprop on a device: ``bp``'s deltas, teaching signal from transposed reads of ``W``.

    ``teaching`` returns ``None`` so the circuit's feedback pass runs; the attached
    `HardwareCircuit` serves ``B_k = read(W_src)ᵀ`` to it. Needs a layered circuit.
    """

    name: ClassVar[str] = "bp-on-device"
    rule: BP = field(default_factory=BP)

    def init(self, circuit: Circuit) -> Any:
        return self.rule.init(circuit)

    def teaching(self, circuit: Circuit, trace: Trace, x: Tensor, y: Tensor, loss: Loss) -> list[Tensor] | None:
        return None

    def deltas(self, signals: Signals, params: Params, state: Any) -> tuple[Deltas, Any]:
        return self.rule.deltas(signals, params, state)

    def describe(self) -> str:
        return f"{self.rule.describe()} with u from transposed reads of W (B := read(W)ᵀ each step)"


class HardwareCircuit:
    """Device arrays for every plastic tensor of ``circuit``, installed as its reader.

    Args:
        circuit: the circuit; its initial weights are programmed into the arrays (changed in place).
        model: the device model of every array (``W``/``b`` and ``B`` arrays are separate instances).
        seed: seeds three independent streams: fixed per-device parameters, reads, updates.
        transposed_feedback: ``bp`` mode, the feedback pathway is ``read(W)ᵀ`` (no ``B`` arrays).

    Array scales ``s`` (see `heterograd.hardware.devices`): ``W_l`` and ``b_l``: ``1/sqrt(n_{l-1})``;
    ``B_k`` ``(n_dst, n_src)``: ``1/sqrt(n_dst)`` (the circuit's initialisation bounds).
    """

    def __init__(self, circuit: Circuit, model: DeviceModel, *, seed: int, transposed_feedback: bool = False) -> None:
        if transposed_feedback and not all(e.adjacent for e in circuit.edges):
            raise HeterogradError(
                f"bp on a device reads its feedback as the transpose of W, which needs the layered topology; "
                f"got topology {circuit.topology!r}: use --topology layered"
            )
        self.model = model
        self.transposed_feedback = transposed_feedback
        dev = circuit.W[0].device
        init_gen = _generator(seed, 1, dev)
        self.read_generator = _generator(seed, 2, dev)
        self.update_generator = _generator(seed, 3, dev)
        L, sizes = circuit.depth, circuit.sizes
        scales = [1 / math.sqrt(sizes[l - 1]) for l in range(1, L + 1)] * 2
        scales += [1 / math.sqrt(sizes[e.dst]) for e in circuit.edges]
        tensors = circuit.plastic_tensors()
        self.arrays: list[DeviceArray | None] = []
        for i, (t, s) in enumerate(zip(tensors, scales, strict=True)):
            is_B = i >= 2 * L
            self.arrays.append(None if (is_B and transposed_feedback) else DeviceArray(model, t, s, init_gen))
        with torch.no_grad():
            for t, a in zip(tensors, self.arrays, strict=True):
                if a is not None:
                    t.copy_(a.program(t))
        self._L = L
        self._noisy = False
        circuit.reader = self

    # ------------------------------------------------------------------ reads (called by the circuit)
    @contextlib.contextmanager
    def noisy_reads(self) -> Iterator[None]:
        """Within this block the circuit's reads carry read noise (the training step)."""
        old, self._noisy = self._noisy, True
        try:
            yield
        finally:
            self._noisy = old

    def read_forward(self, Ws: list[Tensor], bs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """What the forward pass multiplies with: ``W_l`` ``(n_l, n_{l-1})`` and ``b_l`` ``(n_l,)`` as read."""
        if not self._noisy or self.model.read_noise == 0:
            return Ws, bs
        g, L = self.read_generator, self._L
        Wr = [a.read(w, g) if a is not None else w for a, w in zip(self.arrays[:L], Ws, strict=True)]
        br = [a.read(b, g) if a is not None else b for a, b in zip(self.arrays[L : 2 * L], bs, strict=True)]
        return Wr, br

    def read_feedback(self, circuit: Circuit, Bs: list[Tensor]) -> list[Tensor]:
        """What the feedback pass multiplies with: ``B_k`` ``(n_dst, n_src)`` as read (``read(W_src)ᵀ`` for bp)."""
        noisy = self._noisy and self.model.read_noise > 0
        g = self.read_generator
        if self.transposed_feedback:
            Ws = circuit.plastic_tensors()[: self._L]
            out = []
            for e in circuit.edges:
                a, w = self.arrays[e.src - 1], Ws[e.src - 1]
                out.append((a.read(w, g) if noisy and a is not None else w).t())
            return out
        if not noisy:
            return Bs
        return [a.read(b, g) if a is not None else b for a, b in zip(self.arrays[2 * self._L :], Bs, strict=True)]

    # ------------------------------------------------------------------ writes (called by apply_steps)
    @torch.no_grad()
    def apply(self, tensors: Sequence[Tensor], steps: Sequence[Tensor | None]) -> None:
        """Write ``steps`` (canonical order; ``None``: unchanged) through the arrays, in place.

        ``steps`` may be an `heterograd.optim.ScaledSteps` (``alpha * s`` requested).
        """
        alpha = float(getattr(steps, "alpha", 1.0))
        g = self.update_generator
        for t, s, a in zip(tensors, steps, self.arrays, strict=True):
            if s is None:
                continue
            if a is None or a.model.ideal_update:
                t.add_(s, alpha=alpha)
            else:
                t.copy_(a.apply_update(t, s * alpha if alpha != 1.0 else s, g))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Tensor]:
        """The random streams' states (per-device parameters are redrawn from the seed)."""
        return {"read": self.read_generator.get_state(), "update": self.update_generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.read_generator.set_state(state["read"])
        self.update_generator.set_state(state["update"])


def attach_hardware(
    circuit: Circuit, rule: Rule, name: str, options: dict[str, Any] | None, seed: int
) -> tuple[HardwareCircuit | None, Rule]:
    """Put ``circuit`` on the device model ``name`` (+ ``options``); returns ``(hardware, rule to train with)``.

    An ideal model attaches nothing: ``(None, rule)``, the plain circuit bit for bit. ``bp`` becomes
    `TransposedReadBP`.
    """
    model = make_device_model(name, options)
    if model.is_ideal:
        return None, rule
    is_bp = isinstance(rule, BP)
    if rule.uses_autograd and not is_bp:
        raise HeterogradError(f"rule {rule.name!r} uses autograd and cannot run on a device model; use bp, fa or hsp")
    hw = HardwareCircuit(circuit, model, seed=seed, transposed_feedback=is_bp)
    return hw, (TransposedReadBP(rule) if is_bp else rule)
