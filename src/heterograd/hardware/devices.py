"""Device models: what a physical synapse array does to the weights it stores, reads and updates.

Pure torch, functional on tensors, seeded. A `DeviceModel` is a frozen set of parameters
(one device technology); a `DeviceArray` is one physical array of such devices holding one
weight tensor, with its device-to-device variation and stuck devices drawn once, at construction,
from a generator. Two operations act on the stored tensor ``W``:

* ``read(W, generator) -> W_read`` what a read of the array returns (read noise; fresh draws each call);
* ``apply_update(W, step, generator) -> W_new`` what a requested change ``step`` turns into after the
  devices' update physics (pulses, asymmetry, soft bounds, cycle-to-cycle noise, bounds, finite
  states, stuck devices).

Neither mutates its inputs. ``program(W)`` is the first write (bounds, states and stuck devices
applied to the initial weights).

Units. Every magnitude of a model is given in units of the array's *scale* ``s``: the bound of the
array's random initialisation (``1/sqrt(fan-in)``, so the initial weights lie in ``[-s, s]``). A
model therefore means the same thing for a 784-input layer and a 10-input one.

The device physics, per device ``i`` (all element-wise):

* **bounds**: ``w_max = +R s (1 + d2d ξ)``, ``w_min = -R s (1 + d2d ξ')`` with ``R = w_range``
  (``inf``: unbounded). A stored weight is always clipped to ``[w_min, w_max]``.
* **soft bounds, asymmetry**: one potentiation pulse moves ``w`` by ``α+ (1 - w/w_max)``, one
  depression pulse by ``-α- (1 - w/w_min)`` (steps shrink to zero at the bound they approach), with
  ``α± = Δw (1 ± a) (1 + d2d ξ±)``: ``a = asymmetry``, ``Δw`` the nominal step at ``w = 0``.
  Closed form after ``n`` pulses of one sign (a geometric approach to the bound)::

      w_n = w_max - (w_max - w_0) (1 - α+/w_max)^n          (potentiation)
      w_n = w_min + (w_0 - w_min) (1 - α-/|w_min|)^n         (depression)

  Under alternating ``+,-`` pulses the weight does not return: the pair map
  ``w -> (w (1 - α+/w_max) + α+)(1 - α-/|w_min|) - α-`` has the fixed point
  ``w* = (α+ (1 - α-/|w_min|) - α-) / (α+/w_max + α-/|w_min| - α+ α-/(w_max |w_min|))``
  (``≈ a w_max`` for small steps and symmetric bounds): an asymmetric device drifts there at the
  geometric rate ``r = (1 - α+/w_max)(1 - α-/|w_min|)`` per pair.
* **pulses**: a requested change ``x`` becomes ``n = |x| / Δw`` pulses of its sign, rounded
  stochastically (``floor`` plus a Bernoulli draw of the fraction: unbiased, as stochastic pulse
  trains are) or to the nearest integer (``rounding=nearest``: changes below half a pulse are lost).
  ``Δw = pulse_step s``; by default one pulse moves one conductance state (``2R s / (levels - 1)``).
  Without levels and with ``pulse_step = 0`` the update is *analog*: the limit of infinitely many
  infinitesimal pulses, ``w_max - (w_max - w) exp(-x (1 + a) / w_max)`` for ``x > 0`` (likewise
  towards ``w_min`` for ``x < 0``), which is ``w + x (1 ± a)`` when unbounded.
* **cycle-to-cycle noise**: every pulse's step has a relative error of std ``c2c``; the ``n``
  independent errors add up to ``c2c |Δ| / sqrt(n)`` on an update ``Δ`` of ``n`` pulses (``n = 1``
  for an analog update).
* **finite states**: with ``levels = N`` a device holds one of ``N`` equally spaced conductances
  between its ``w_min`` and ``w_max``; after every update the weight snaps to the nearest one.
* **stuck devices**: a fraction ``stuck_fraction`` of devices, drawn once, never changes: it holds a
  value drawn uniformly in ``[w_min, w_max]`` (``stuck_at=random``; ``[-s, s]`` when unbounded) or its
  initial value (``stuck_at=init``).
* **read noise**: a read returns ``W + read_noise s ξ``, a fresh Gaussian draw per device and read.

``d2d`` is the relative spread (std) of the per-device parameters ``α+``, ``α-``, ``w_max``,
``|w_min|`` around their nominal values (drawn once, clipped to stay positive).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import HeterogradError, unknown_choice
from ..runtime import key_values

ROUNDINGS: tuple[str, ...] = ("stochastic", "nearest")
STUCK_AT: tuple[str, ...] = ("random", "init")


@dataclass(frozen=True)
class DeviceModel:
    """Parameters of one device technology (magnitudes in units of the array scale ``s``).

    Attributes:
        read_noise: std of the additive Gaussian read noise, in ``s``.
        w_range: bounds ``±w_range s`` (``inf``: unbounded; finite bounds are soft bounds).
        levels: number of conductance states ``N`` (``0``: analog, a continuum).
        pulse_step: nominal pulse step ``Δw`` in ``s``; ``None``: one state when ``levels > 0``, else
            analog updates (``0`` also means analog).
        asymmetry: ``a`` in ``(-1, 1)``: ``α+ = Δw (1 + a)``, ``α- = Δw (1 - a)``.
        c2c: relative std of each pulse's step (cycle-to-cycle noise).
        d2d: relative std of the per-device ``α±`` and bounds (device-to-device variation).
        stuck_fraction: fraction of devices that never change.
        stuck_at: ``random`` (uniform in the bounds) or ``init`` (the initial weight).
        rounding: pulse counts ``stochastic`` (unbiased) or ``nearest``.
    """

    read_noise: float = 0.0
    w_range: float = math.inf
    levels: int = 0
    pulse_step: float | None = None
    asymmetry: float = 0.0
    c2c: float = 0.0
    d2d: float = 0.0
    stuck_fraction: float = 0.0
    stuck_at: str = "random"
    rounding: str = "stochastic"

    def __post_init__(self) -> None:
        def num(name: str, lo: float, hi: float = math.inf, *, lo_open: bool = False, inf_ok: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(float(v)):
                raise HeterogradError(f"device option {name} must be a number, got {v!r}; e.g. {name}=0.1")
            v = float(v)
            if math.isinf(v) and not inf_ok:
                raise HeterogradError(f"device option {name} must be finite, got {v}")
            ok = (v > lo if lo_open else v >= lo) and (v <= hi or (inf_ok and math.isinf(v)))
            if not ok:
                rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
                raise HeterogradError(f"device option {name} must be in {rng}, got {v:g}")

        num("read_noise", 0.0)
        num("w_range", 0.0, math.inf, lo_open=True, inf_ok=True)
        num("c2c", 0.0)
        num("d2d", 0.0)
        num("stuck_fraction", 0.0, 1.0)
        if not -1.0 < float(self.asymmetry) < 1.0 or isinstance(self.asymmetry, bool):
            raise HeterogradError(f"device option asymmetry must be in (-1, 1), got {self.asymmetry!r}")
        if self.pulse_step is not None:
            num("pulse_step", 0.0)
        lv = self.levels
        if isinstance(lv, bool) or not isinstance(lv, numbers.Integral) or lv < 0 or lv == 1:
            raise HeterogradError(f"device option levels must be 0 (analog) or an integer >= 2, got {lv!r}")
        if lv and math.isinf(self.w_range):
            raise HeterogradError("device option levels needs finite bounds: set w_range too, e.g. w_range=4")
        if self.stuck_at not in STUCK_AT:
            raise unknown_choice("device option stuck_at", self.stuck_at, STUCK_AT)
        if self.rounding not in ROUNDINGS:
            raise unknown_choice("device option rounding", self.rounding, ROUNDINGS)

    # ------------------------------------------------------------------ derived
    @property
    def ideal_read(self) -> bool:
        """True when a read returns the stored tensor itself."""
        return self.read_noise == 0

    @property
    def ideal_update(self) -> bool:
        """True when an update is the plain ``W + step`` and programming changes nothing."""
        return (
            math.isinf(self.w_range)
            and self.levels == 0
            and not self.pulse_step
            and self.asymmetry == 0
            and self.c2c == 0
            and self.stuck_fraction == 0
        )

    @property
    def is_ideal(self) -> bool:
        """True when the model changes nothing (the ``ideal`` preset)."""
        return self.ideal_read and self.ideal_update

    def step_size(self) -> float:
        """Nominal pulse step ``Δw`` in units of ``s`` (``0``: analog updates)."""
        if self.pulse_step is not None:
            return float(self.pulse_step)
        if self.levels:
            return 2.0 * self.w_range / (self.levels - 1)
        return 0.0


PRESETS: dict[str, DeviceModel] = {
    "ideal": DeviceModel(),
    "moderate": DeviceModel(
        read_noise=0.05, w_range=4.0, levels=0, asymmetry=0.1, c2c=0.1, d2d=0.1, stuck_fraction=0.002
    ),
    "harsh": DeviceModel(read_noise=0.2, w_range=3.0, levels=64, asymmetry=0.4, c2c=0.3, d2d=0.3, stuck_fraction=0.02),
}
"""Named device models.

* ``ideal``: no non-ideality (the plain circuit, bit for bit).
* ``moderate``: a good analog device (in the spirit of well-behaved filamentary ReRAM or
  electrochemical ECRAM cells): many states (analog), soft bounds at ``±4 s``, 10% asymmetry,
  10% cycle-to-cycle and device-to-device spread, 5%-of-``s`` read noise, 0.2% stuck devices.
* ``harsh``: a difficult device (in the spirit of phase-change memory or early ReRAM): 64 states in
  ``±3 s``, strongly asymmetric (``a = 0.4``), 30% cycle-to-cycle and device-to-device spread,
  20%-of-``s`` read noise, 2% stuck devices.
"""

OPTION_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DeviceModel))


def parse_device_options(text: str | None) -> dict[str, Any]:
    """``"read_noise=0.1,levels=16,stuck_at=init"`` -> ``{"read_noise": 0.1, "levels": 16, "stuck_at": "init"}``.

    Numbers become ``int`` when integral and written without a point, else ``float``; ``inf`` and
    names (``random``, ``nearest``, ``auto`` for ``pulse_step=None``) stay as given.
    """
    out: dict[str, Any] = {}
    for k, v in key_values(text, "--device-model-options", "read_noise=0.1,levels=16"):
        if k not in OPTION_KEYS:
            raise unknown_choice("device option", k, OPTION_KEYS)
        if k == "pulse_step" and v.lower() in ("auto", "none"):
            out[k] = None
            continue
        try:
            out[k] = int(v) if v.lstrip("+-").isdigit() else float(v)
        except ValueError:
            out[k] = v
    return out


def make_device_model(name: str, options: dict[str, Any] | None = None) -> DeviceModel:
    """The preset ``name`` with ``options`` overriding its fields (validated; clear errors)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise unknown_choice("device model", name, PRESETS)
    options = dict(options or {})
    if not all(isinstance(k, str) for k in options):
        raise HeterogradError(f"device_model_options must map option names to values, got {options!r}")
    bad = [k for k in options if k not in OPTION_KEYS]
    if bad:
        raise unknown_choice("device option", bad[0], OPTION_KEYS)
    if "levels" in options and isinstance(options["levels"], float) and options["levels"].is_integer():
        options["levels"] = int(options["levels"])
    return dataclasses.replace(PRESETS[name], **options)


def _spread(shape: torch.Size, d2d: float, gen: torch.Generator, like: Tensor, floor: float) -> Tensor | float:
    """Per-device multipliers ``max(1 + d2d ξ, floor)`` (a plain ``1.0`` without variation)."""
    if d2d == 0:
        return 1.0
    xi = torch.randn(shape, generator=gen, dtype=torch.float64, device=like.device)
    return (1.0 + d2d * xi).clamp_min(floor).to(like.dtype)


def _nonneg(x: Tensor | float) -> Tensor | float:
    return x.clamp_min(0.0) if isinstance(x, Tensor) else max(x, 0.0)


class DeviceArray:
    """One physical array of devices holding one weight tensor.

    Args:
        model: the device technology.
        like: a tensor of the stored weights' shape, dtype and device (e.g. the initial ``W``);
            with ``stuck_at=init`` its values are the stuck values.
        scale: the unit ``s`` of the model's magnitudes (the initialisation bound of this tensor).
        generator: draws the fixed per-device parameters (device-to-device variation, stuck devices)
            once, here; it must live on ``like``'s device.

    Per-device tensors (shape of ``like``) are fixed for the array's life: ``alpha_plus`` and
    ``alpha_minus`` (per-pulse step multipliers, ``(1 ± a)(1 + d2d ξ)``), ``w_max`` and ``w_min``,
    ``stuck`` (bool mask) and ``stuck_value``.
    """

    def __init__(self, model: DeviceModel, like: Tensor, scale: float, generator: torch.Generator) -> None:
        if not (isinstance(scale, numbers.Real) and math.isfinite(scale) and scale > 0):
            raise HeterogradError(f"device array scale must be a positive number, got {scale!r}")
        self.model, self.scale = model, float(scale)
        self.shape = like.shape
        m, s, shape = model, self.scale, like.shape
        self.alpha_plus: Tensor | float = (1.0 + m.asymmetry) * _spread(shape, m.d2d, generator, like, 0.0)
        self.alpha_minus: Tensor | float = (1.0 - m.asymmetry) * _spread(shape, m.d2d, generator, like, 0.0)
        bounded = math.isfinite(m.w_range)
        self.w_max: Tensor | float = m.w_range * s * _spread(shape, m.d2d if bounded else 0.0, generator, like, 0.1)
        self.w_min: Tensor | float = -m.w_range * s * _spread(shape, m.d2d if bounded else 0.0, generator, like, 0.1)
        self.stuck: Tensor | None = None
        self.stuck_value: Tensor | None = None
        if m.stuck_fraction > 0:
            r = torch.rand(shape, generator=generator, dtype=torch.float64, device=like.device)
            self.stuck = r < m.stuck_fraction
            if m.stuck_at == "init":
                self.stuck_value = like.detach().clone()
            else:
                u = torch.rand(shape, generator=generator, dtype=torch.float64, device=like.device).to(like.dtype)
                lo, hi = (self.w_min, self.w_max) if bounded else (-s, s)
                self.stuck_value = lo + u * (hi - lo) if bounded else (u * 2 - 1) * s
                self.stuck_value = torch.as_tensor(self.stuck_value, dtype=like.dtype, device=like.device)

    # ------------------------------------------------------------------ the three operations
    def read(self, W: Tensor, generator: torch.Generator) -> Tensor:
        """``W + read_noise s ξ``, ``ξ ~ N(0, 1)`` fresh per device and call; ``W`` itself when noiseless."""
        if self.model.read_noise == 0:
            return W
        noise = torch.randn(W.shape, generator=generator, dtype=W.dtype, device=W.device)
        return W + noise * (self.model.read_noise * self.scale)

    def program(self, W: Tensor) -> Tensor:
        """The first write: ``W`` clipped to the bounds, snapped to the states, stuck devices set."""
        if self.model.ideal_update:
            return W
        return self._finish(W)

    def apply_update(self, W: Tensor, step: Tensor, generator: torch.Generator) -> Tensor:
        """The stored weights after the requested change ``step`` (same shape as ``W``).

        Pulses (or the analog limit) with asymmetric soft-bounded steps, cycle-to-cycle noise,
        clipping to the bounds, snapping to the states, stuck devices restored; see the module text.
        """
        m = self.model
        if m.ideal_update:
            return W + step
        dw = m.step_size() * self.scale
        pos = step > 0
        w_max, w_min = self.w_max, self.w_min
        if dw > 0:  # pulses: closed-form response to n pulses of one sign
            x = step.abs() / dw
            if m.rounding == "stochastic":
                n = x.floor()
                n = n + (torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) < (x - n)).to(x.dtype)
            else:
                n = x.round()
            a_p, a_m = dw * self.alpha_plus, dw * self.alpha_minus
            if math.isfinite(m.w_range):
                up = w_max - (w_max - W) * _nonneg(1 - a_p / w_max) ** n
                down = w_min + (W - w_min) * _nonneg(1 - a_m / (-w_min)) ** n
            else:
                up, down = W + n * a_p, W - n * a_m
            new = torch.where(pos, up, down)
            pulses = n.clamp_min(1.0)
        else:  # analog: the limit of infinitely many infinitesimal pulses
            if math.isfinite(m.w_range):
                up = w_max - (w_max - W) * torch.exp(-step.clamp_min(0.0) * self.alpha_plus / w_max)
                down = w_min + (W - w_min) * torch.exp(step.clamp_max(0.0) * self.alpha_minus / (-w_min))
                new = torch.where(pos, up, down)
            else:
                new = W + step * torch.where(pos, torch.as_tensor(self.alpha_plus), torch.as_tensor(self.alpha_minus))
            pulses = None
        if m.c2c > 0:
            delta = new - W
            xi = torch.randn(W.shape, generator=generator, dtype=W.dtype, device=W.device)
            sd = delta.abs() * m.c2c
            new = new + xi * (sd if pulses is None else sd / pulses.sqrt())
        return self._finish(new)

    # ------------------------------------------------------------------ helpers
    def _finish(self, W: Tensor) -> Tensor:
        """Clip to the bounds, snap to the nearest state, restore stuck devices."""
        m = self.model
        if math.isfinite(m.w_range):
            W = W.clamp(self.w_min, self.w_max)  # both floats or both per-device tensors
            if m.levels:
                span = self.w_max - self.w_min
                k = ((W - self.w_min) / span * (m.levels - 1)).round()
                W = self.w_min + k * (span / (m.levels - 1))
        if self.stuck is not None:
            assert self.stuck_value is not None
            W = torch.where(self.stuck, self.stuck_value, W)
        return W
