"""Physically learnable hardware: circuits whose synapses are imperfect devices.

* `.devices`: `DeviceModel` (one device technology: read noise, bounds, finite states,
  asymmetric soft-bounded pulses, cycle-to-cycle and device-to-device variation, stuck devices),
  `DeviceArray` (one physical array; ``read`` / ``apply_update`` / ``program`` on tensors) and the
  named `PRESETS` ``ideal``, ``moderate``, ``harsh``.
* `.session`: `HardwareCircuit` puts a whole circuit on devices (the circuit reads through
  it, `heterograd.train.apply_steps` writes through it); ``bp`` on a device uses transposed
  reads of ``W`` as its feedback (`TransposedReadBP`).
* `.modules`: `attach` puts a model converted by `heterograd.nn.convert` on devices
  (``handle = attach(model, "harsh", seed=0)``, then ``handle.step(optimizer)`` in the standard loop).

``heterograd train --device-model harsh --device-model-options read_noise=0.1`` uses them.
"""

from .devices import (
    OPTION_KEYS,
    PRESETS,
    DeviceArray,
    DeviceModel,
    make_device_model,
    parse_device_options,
)
from .modules import DeviceHandle, LayerDevices, attach
from .session import HardwareCircuit, TransposedReadBP, attach_hardware

__all__ = [
    "OPTION_KEYS",
    "PRESETS",
    "DeviceArray",
    "DeviceHandle",
    "DeviceModel",
    "HardwareCircuit",
    "LayerDevices",
    "TransposedReadBP",
    "attach",
    "attach_hardware",
    "make_device_model",
    "parse_device_options",
]
