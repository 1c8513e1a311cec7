"""Converted ``torch.nn`` models on devices: `attach` puts every plastic synapse on device arrays.

A model converted by `heterograd.nn.convert` trains with the standard loop (``loss.backward()`` runs
the feedback sweep and writes the rule's update into ``.grad``; ``optimizer.step()`` applies it).
`attach` puts each plastic ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` on separate
`DeviceArray` s: one for the weight ``W``, one for the bias ``b``, one
for the feedback ``B`` (when the rule keeps one). Then

* **forward**: while training (grad enabled), every forward pass multiplies with a read of ``W`` and ``b``
  (fresh read noise per read);
* **feedback**: the backward transports with a read of ``B``'s array, independent of the forward read. Rules
  without ``B`` (``bp``, and the sign-symmetry rules ``usf``, ``brsf`` that build their transport from ``W``)
  transport with a second, *transposed read of the forward array* with its own read noise: for ``bp`` the
  hardware backprop baseline;
* **update**: `DeviceHandle.step` lets the optimiser compute its step, then programs the devices:
  ``W_new = apply_update(W_old, W_after - W_old)`` (pulses, asymmetric soft bounds, cycle-to-cycle noise,
  bounds, states, stuck devices). ``B``'s array likewise where ``B`` is plastic; a frozen ``B`` is written
  once (programmed at `attach`).

Evaluation under ``torch.no_grad()`` reads the stored conductances without noise (what was learned), and so
do probes (`heterograd.nn.probe`: reads are exact while a layer records); `DeviceHandle.noiseless`
turns read noise off for any other grad-enabled pass. Normalisation layers' affine parameters and embeddings stay
digital (exact). The ``ideal`` device changes nothing: `attach` then installs no hook and
`DeviceHandle.step` is ``optimizer.step()``, the plain run bit for bit.

Array scales ``s`` (the unit of a `DeviceModel`'s magnitudes): ``1/sqrt(fan_in)`` of the layer
(``in_features``; ``C_in/groups · prod(kernel)`` for a conv), for ``W``, ``b`` and ``B`` alike: the bound of
torch's default initialisation and of ``convert``'s random ``B``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import HeterogradError
from ..nn.layers import PlasticModule
from .devices import DeviceArray, DeviceModel, make_device_model
from .session import _generator


@dataclass(eq=False)
class LayerDevices:
    """The device arrays of one converted layer; installed as its ``plasticity.device`` hook.

    Attributes:
        name: the module path; module: the plastic layer.
        W, b, B: the arrays of ``weight``, ``bias`` (``None`` without bias) and ``feedback`` (``None`` when the
            rule keeps no ``B``: the transport is then a transposed read of ``W``'s array).
        handle: the `DeviceHandle` holding the random streams.
    """

    name: str
    module: nn.Module
    W: DeviceArray
    b: DeviceArray | None
    B: DeviceArray | None
    handle: DeviceHandle

    def read_forward(self, W: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``(W, b)`` as the forward pass reads: ``W`` ``(out, in)`` / ``(C_out, C_in/g, *k)``, ``b`` ``(out,)``."""
        h = self.handle
        if not h.noisy or self.module.plasticity.record is not None:  # type: ignore[union-attr]
            return W, b
        g = h.read_generator
        return self.W.read(W, g), (None if b is None or self.b is None else self.b.read(b, g))

    def read_feedback(self, M: Tensor) -> Tensor:
        """The transport matrix ``M`` (laid out like ``B``) as the feedback pathway reads it.

        A read of ``B``'s array, or, for rules without ``B``, a second (transposed) read of ``W``'s array: the
        same fresh-noise model, an independent draw from the forward read.
        """
        h = self.handle
        if not h.noisy or self.module.plasticity.record is not None:  # type: ignore[union-attr]
            return M
        return (self.B if self.B is not None else self.W).read(M, h.read_generator)


class DeviceHandle:
    """A converted model on devices (made by `attach`).

    Attributes:
        model: the forward arrays' device model; feedback_model: the feedback arrays' (``B``) model.
        seed: seeds three independent streams: per-device parameters, reads, updates.
        layers: one `LayerDevices` per plastic synapse layer, in module order (empty when ideal).
        noisy: reads carry read noise (``True``; see `noiseless`).
    """

    def __init__(
        self, net: nn.Module, model: DeviceModel, feedback_model: DeviceModel, seed: int, layers: list[tuple[str, Any]]
    ) -> None:
        self.model, self.feedback_model, self.seed = model, feedback_model, int(seed)
        self.noisy = True
        self.layers: list[LayerDevices] = []
        ideal = model.is_ideal and (feedback_model.is_ideal or all(m.feedback is None for _, m in layers))
        dev = layers[0][1].weight.device if layers else torch.device("cpu")
        self.read_generator = _generator(seed, 2, dev)
        self.update_generator = _generator(seed, 3, dev)
        if ideal:
            return
        init = _generator(seed, 1, dev)
        for name, m in layers:
            W: Tensor = m.weight
            if W.device != dev:
                raise HeterogradError(
                    f"hardware.attach: layer {name!r} is on {W.device}, the first layer on {dev}; move the whole "
                    "model to one device before attaching"
                )
            s = 1.0 / math.sqrt(max(1, W[0].numel()))
            b: Tensor | None = m.bias
            B: Tensor | None = getattr(m, "feedback", None)
            self.layers.append(
                LayerDevices(
                    name,
                    m,
                    DeviceArray(model, W.detach(), s, init),
                    None if b is None else DeviceArray(model, b.detach(), s, init),
                    None if B is None else DeviceArray(feedback_model, B.detach(), s, init),
                    self,
                )
            )
        with torch.no_grad():
            for ld in self.layers:
                for t, a in self._pairs(ld):
                    t.copy_(a.program(t))
                ld.module.plasticity.device = ld  # type: ignore[union-attr]

    @staticmethod
    def _pairs(ld: LayerDevices) -> list[tuple[Tensor, DeviceArray]]:
        m = ld.module
        out: list[tuple[Tensor, DeviceArray]] = [(m.weight, ld.W)]  # type: ignore[list-item]
        if ld.b is not None:
            out.append((m.bias, ld.b))  # type: ignore[arg-type]
        if ld.B is not None:
            out.append((m.feedback, ld.B))  # type: ignore[arg-type]
        return out

    @property
    def is_ideal(self) -> bool:
        """True when nothing is on a device (the ideal model): the plain converted model."""
        return not self.layers

    # ------------------------------------------------------------------ reads
    @contextlib.contextmanager
    def noiseless(self) -> Iterator[None]:
        """Within this block reads return the stored conductances (e.g. probes with grad enabled)."""
        old, self.noisy = self.noisy, False
        try:
            yield
        finally:
            self.noisy = old

    # ------------------------------------------------------------------ writes
    @contextlib.contextmanager
    def programming(self) -> Iterator[None]:
        """Within this block parameter changes (e.g. ``scaler.step(opt)``) are written through the devices.

        On entry the stored tensors are remembered; on exit each changed one becomes
        ``apply_update(W_old, W_new - W_old)``. Tensors that do not require grad (a frozen ``B``) or did not change
        are not written; arrays with an ideal update keep the optimiser's result exactly.
        """
        before = [
            (t, a, t.detach().clone())
            for ld in self.layers
            for t, a in self._pairs(ld)
            if t.requires_grad and not a.model.ideal_update
        ]
        yield
        g = self.update_generator
        with torch.no_grad():
            for t, a, old in before:
                if not torch.equal(t, old):  # a tensor the optimiser left alone gets no pulses
                    t.copy_(a.apply_update(old, t - old, g))

    def step(self, optimizer: Any, closure: Any = None) -> Any:
        """``optimizer.step()`` (the requested change), then program the devices; returns what the step returns."""
        with self.programming():
            return optimizer.step() if closure is None else optimizer.step(closure)

    # ------------------------------------------------------------------ life cycle
    def detach(self) -> None:
        """Remove the hooks: the model reads and updates its tensors plainly again (the stored values stay)."""
        for ld in self.layers:
            ld.module.plasticity.device = None  # type: ignore[union-attr]
        self.layers = []

    def state_dict(self) -> dict[str, Any]:
        """The random streams' states (the stored conductances are the model's own ``state_dict``).

        Per-device parameters (variation, stuck devices) are redrawn from ``seed`` by `attach`; to resume,
        convert and attach a fresh model with the same arguments, load the model's, the optimiser's and this
        state.
        """
        return {
            "seed": self.seed,
            "model": dataclasses.asdict(self.model),
            "feedback_model": dataclasses.asdict(self.feedback_model),
            "read": self.read_generator.get_state(),
            "update": self.update_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict`; the seed and device models must be the ones this handle was attached with."""
        if int(state["seed"]) != self.seed:
            raise HeterogradError(
                f"device state was saved with seed {state['seed']}, this handle has seed {self.seed}; attach with "
                f"seed={state['seed']} (the per-device parameters are drawn from it)"
            )
        for key in ("model", "feedback_model"):
            mine = dataclasses.asdict(getattr(self, key))
            if state[key] != mine:
                diff = sorted(k for k in mine if state[key].get(k) != mine[k])
                raise HeterogradError(
                    f"device state was saved with another {key.replace('_', ' ')} (differs in {', '.join(diff)}); "
                    "attach with the device model it was saved with"
                )
        self.read_generator.set_state(state["read"])
        self.update_generator.set_state(state["update"])

    def describe(self) -> str:
        """E.g. ``"2 layers on devices: read_noise=0.2, w_range=3.0, ...; feedback: ideal"``."""
        fb = "" if self.feedback_model == self.model else f"; feedback: {_short(self.feedback_model)}"
        return f"{len(self.layers)} layers on devices: {_short(self.model)}{fb}"


def _short(m: DeviceModel) -> str:
    """The fields of ``m`` that differ from the ideal device (``"ideal"`` when none)."""
    base = DeviceModel()
    names = [f.name for f in dataclasses.fields(m)]
    diff = [f"{k}={getattr(m, k)}" for k in names if getattr(m, k) != getattr(base, k)]
    return ", ".join(diff) or "ideal"


def _resolve(spec: str | DeviceModel, options: dict[str, Any], what: str) -> DeviceModel:
    if isinstance(spec, DeviceModel):
        if options:
            raise HeterogradError(f"{what}: option overrides apply to a preset name only; put them in the DeviceModel")
        return spec
    return make_device_model(spec, options)


def attach(
    model: nn.Module,
    device_model: str | DeviceModel = "moderate",
    *,
    seed: int = 0,
    feedback: str | DeviceModel | None = None,
    **options: Any,
) -> DeviceHandle:
    """Put every plastic synapse of a converted ``model`` on device arrays; returns the `DeviceHandle`.

    Args:
        model: a model converted by `heterograd.nn.convert` (its initial weights are programmed into the
            arrays: changed in place).
        device_model: a preset name (``ideal``, ``moderate``, ``harsh``) or a `DeviceModel`.
        seed: seeds the per-device parameters, the reads and the updates (independent streams).
        feedback: the device model of the ``B`` arrays (default: the same as ``W``'s); ``"ideal"`` gives an exact
            feedback pathway. Rules without ``B`` read their feedback from ``W``'s array.
        **options: overrides of the preset's fields, e.g. ``read_noise=0.1, levels=16``.

    Train with ``handle.step(optimizer)`` in place of ``optimizer.step()``.

    Raises:
        HeterogradError: an unconverted model, a model attached twice, ``dfa`` (its feedback is not a read of a
            layer's array), an unknown preset or option.
    """
    if not isinstance(model, nn.Module):
        raise HeterogradError(f"hardware.attach expects a converted torch.nn.Module, got {type(model).__name__}")
    fw = _resolve(device_model, options, "hardware.attach")
    fb = fw if feedback is None else _resolve(feedback, {}, "hardware.attach feedback")
    layers: list[tuple[str, Any]] = []
    for name, m in model.named_modules():
        if not isinstance(m, PlasticModule):
            continue
        pl = m.plasticity
        if pl.device is not None:
            raise HeterogradError(f"layer {name!r} is already on devices; call handle.detach() before attaching again")
        if pl.synapse is None or pl.synapse.kind not in ("dense", "conv"):
            continue  # normalisation layers and embeddings stay digital
        if pl.rule.feedback == "direct":
            raise HeterogradError(
                "rule 'dfa' transports the output error through D, not through a layer's array; put bp, fa, hsp or "
                "kp on devices"
            )
        layers.append((name, m))
    if not layers:
        raise HeterogradError(
            "hardware.attach found no plastic Linear/Conv layer: convert the model first, "
            "e.g. heterograd.convert(model, 'hsp')"
        )
    return DeviceHandle(model, fw, fb, seed, layers)


__all__ = ["DeviceHandle", "LayerDevices", "attach"]
