"""The motif contract, the name registry, option parsing and checkpointable state.

A motif is a pair of pure functions ``init(tensors) -> state`` and
``update(deltas, state, tensors) -> (steps, state)``. ``deltas`` are the rule's
per-unit-learning-rate changes ``δ`` in the circuit's canonical order
(`heterograd.Circuit.plastic_tensors`); ``δ = -g`` where ``g`` is what
``torch.optim`` would call the gradient (the rule's L2 decay already included).

The state is a plain ``dict`` that ``torch.save`` / ``torch.load(weights_only=True)``
round-trip: ``{"motif": name, "step": int, <buffer>: [Tensor | None, ...], "count": [int, ...]}``
with one entry per plastic tensor (``None`` for a tensor that never had a delta: frozen
tensors keep no state). `Motif.state_dict` / `Motif.load_state_dict` copy and
check it for checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from torch import Tensor

from ..errors import HeterogradError, unknown_choice
from ..runtime import key_values

State = dict[str, Any]
"""``{"motif": str, "step": int, "count": list[int], <buffer>: list[Tensor | None]}``."""


class ScaledSteps(list):  # type: ignore[type-arg]
    """Steps to be added scaled by one factor: the training step does ``t += alpha * s`` in one fused pass.

    Lets a stateless motif (plain SGD) skip a separate ``s = η δ`` pass over every matrix, like
    ``torch.optim.SGD``'s ``param.add_(grad, alpha=-lr)``. Behaves as a plain list of steps otherwise;
    `materialize` returns the scaled tensors for code that wants the steps themselves.
    """

    def __init__(self, steps: Sequence[Tensor | None], alpha: float) -> None:
        super().__init__(steps)
        self.alpha = float(alpha)

    def materialize(self) -> list[Tensor | None]:
        """The steps as tensors ``alpha * s`` (new tensors)."""
        return [None if s is None else s * self.alpha for s in self]


class Motif(ABC):
    """Synapse-local optimiser motif.

    Subclasses are frozen dataclasses of hyperparameters (``lr`` first) and list the
    names of their per-synapse buffers in `buffers`. ``deltas`` and ``tensors`` are
    in the circuit's canonical order; a ``None`` delta means the tensor is frozen this step
    and gets a ``None`` step and no state. ``update`` may reuse the storage of the delta
    tensors it is given (they belong to the step); it never changes the old state.
    """

    name: ClassVar[str]
    buffers: ClassVar[tuple[str, ...]] = ()

    def init(self, tensors: Sequence[Tensor]) -> State:
        """Empty per-synapse state for ``tensors`` (buffers are created at a tensor's first delta)."""
        n = len(tensors)
        state: State = {"motif": self.name, "step": 0, "count": [0] * n}
        for b in self.buffers:
            state[b] = [None] * n
        return state

    @abstractmethod
    def update(
        self, deltas: Sequence[Tensor | None], state: State, tensors: Sequence[Tensor]
    ) -> tuple[list[Tensor | None], State]:
        """Return the changes to add to each tensor (``None``: no change) and the new state."""

    # ------------------------------------------------------------------ helpers for subclasses
    def _next(self, state: State, n: int) -> State:
        """A shallow copy of ``state`` with fresh lists (so the old state is never changed)."""
        if state.get("motif") != self.name:
            raise HeterogradError(
                f"optimizer state belongs to {state.get('motif')!r}, not {self.name!r}; "
                f"create it with this motif's init() or load a matching checkpoint"
            )
        new: State = {"motif": self.name, "step": int(state["step"]) + 1, "count": list(state["count"])}
        for b in self.buffers:
            new[b] = list(state[b])
        if len(new["count"]) != n:
            raise HeterogradError(
                f"optimizer state has {len(new['count'])} entries but the circuit has {n} plastic tensors; "
                "re-create the state with motif.init(circuit.plastic_tensors())"
            )
        return new

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, state: State) -> dict[str, Any]:
        """A detached deep copy of ``state`` (tensors, lists, ints, str) for ``torch.save``."""
        return state_dict(state)

    def load_state_dict(self, saved: Mapping[str, Any], tensors: Sequence[Tensor]) -> State:
        """Check a saved state against this motif and ``tensors``; return it on their device/dtype."""
        if saved.get("motif") != self.name:
            raise HeterogradError(
                f"checkpoint holds {saved.get('motif')!r} optimizer state but the run uses {self.name!r}; "
                f"resume with --optimizer {saved.get('motif')}"
            )
        n = len(tensors)
        expect = {"motif", "step", "count", *self.buffers}
        if set(saved) != expect:
            raise HeterogradError(
                f"{self.name} optimizer state has keys {sorted(saved)}, expected {sorted(expect)}; "
                "the checkpoint is from another version or motif"
            )
        if len(saved["count"]) != n or any(len(saved[b]) != n for b in self.buffers):
            raise HeterogradError(
                f"{self.name} optimizer state is for a different circuit (not {n} plastic tensors); "
                "resume with the same --hidden/--topology"
            )
        out: State = {"motif": self.name, "step": int(saved["step"]), "count": [int(c) for c in saved["count"]]}
        for b in self.buffers:
            lst: list[Tensor | None] = []
            for k, (v, t) in enumerate(zip(saved[b], tensors, strict=True)):
                if v is not None and tuple(v.shape) != tuple(t.shape):
                    raise HeterogradError(
                        f"{self.name} state {b}[{k}] has shape {tuple(v.shape)} but the tensor has "
                        f"{tuple(t.shape)}; resume with the same circuit sizes"
                    )
                lst.append(None if v is None else v.detach().to(device=t.device, dtype=t.dtype).clone())
            out[b] = lst
        return out

    def describe(self) -> str:
        """Hyperparameters as ``name(k=v, ...)``."""
        fields = dataclasses.fields(self) if dataclasses.is_dataclass(self) else ()
        return f"{self.name}({', '.join(f'{f.name}={getattr(self, f.name)!r}' for f in fields)})"


def state_dict(state: State) -> dict[str, Any]:
    """Detached deep copy of a motif state: safe to ``torch.save`` and load with ``weights_only=True``."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, Tensor):
            out[k] = v.detach().clone()
        elif isinstance(v, list):
            out[k] = [x.detach().clone() if isinstance(x, Tensor) else x for x in v]
        else:
            out[k] = v
    return out


def load_state_dict(motif: Motif, saved: Mapping[str, Any], tensors: Sequence[Tensor]) -> State:
    """Function form of `Motif.load_state_dict`."""
    return motif.load_state_dict(saved, tensors)


# ---------------------------------------------------------------------- checks used by motifs
def check_lr(lr: float) -> None:
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise HeterogradError(f"learning rate must be a positive number, got {lr!r}; pass e.g. --lr 0.05")


def check_range(what: str, value: float, lo: float, hi: float, hi_open: bool = True, hint: str = "") -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and lo <= value and (value < hi if hi_open else value <= hi)
    if not ok:
        bracket = ")" if hi_open else "]"
        raise HeterogradError(f"{what} must be in [{lo:g}, {hi:g}{bracket}, got {value!r}{hint}")


# ---------------------------------------------------------------------- registry
M = TypeVar("M", bound=type[Motif])
MOTIFS: dict[str, type[Motif]] = {}


def register_motif(cls: M) -> M:
    """Class decorator: make a motif available by its ``name``."""
    if cls.name in MOTIFS and MOTIFS[cls.name] is not cls:
        raise HeterogradError(f"an optimizer named {cls.name!r} is already registered; choose another name")
    MOTIFS[cls.name] = cls
    return cls


_HINTS = {
    ("sgd", "momentum"): " (use --optimizer momentum for SGD with momentum)",
    ("sgd", "nesterov"): " (use --optimizer momentum --nesterov)",
    (
        "adam",
        "weight_decay",
    ): " (Adam's L2 decay is the rule's --weight-decay; use --optimizer adamw for decoupled decay)",
}


def motif_options(name: str) -> tuple[str, ...]:
    """Hyperparameter names of a registered motif (``lr`` first)."""
    try:
        cls = MOTIFS[name]
    except KeyError:
        raise unknown_choice("optimizer", name, MOTIFS) from None
    return tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else ()


def make_motif(name: str, **hyper: Any) -> Motif:
    """Build a motif by name, e.g. ``make_motif("adam", lr=1e-3, betas=(0.9, 0.999))``.

    ``None`` values mean "default". An option the motif does not have is an error (a typo
    must not pass silently), e.g. ``make_motif("sgd", momentum=0.9)``.
    """
    fields = motif_options(name)
    given = {k: v for k, v in hyper.items() if v is not None}
    for k in given:
        if k not in fields:
            hint = _HINTS.get((name, k), "")
            raise HeterogradError(f"optimizer {name!r} has no option {k!r}; its options: {', '.join(fields)}{hint}")
    return MOTIFS[name](**given)


# ---------------------------------------------------------------------- option parsing (CLI / config)
def _parse_value(key: str, text: str) -> Any:
    t = text.strip()
    low = t.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    try:
        if "," in t or ":" in t:
            return tuple(float(v) for v in t.replace(":", ",").split(","))
        return float(t)
    except ValueError:
        raise HeterogradError(
            f"optimizer option {key}={text!r} is not a number, a boolean or a list like 0.9:0.999; "
            "write e.g. --optimizer-options momentum=0.9,nesterov=true"
        ) from None


def parse_options(text: str | None) -> dict[str, Any]:
    """``"momentum=0.9,nesterov=true,betas=0.9:0.999"`` -> ``{"momentum": 0.9, "nesterov": True, ...}``.

    Values are numbers, booleans (``true``/``false``) or ``:``-separated number lists (betas).
    """
    return {k: _parse_value(k, v) for k, v in key_values(text, "--optimizer-options", "momentum=0.9,nesterov=true")}


def parse_betas(text: str | None) -> tuple[float, float] | None:
    """``"0.9,0.999"`` -> ``(0.9, 0.999)``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.replace(":", ",").split(","))
    except ValueError:
        vals = ()
    if len(vals) != 2:
        raise HeterogradError(f"--betas must be two comma-separated numbers like 0.9,0.999, got {text!r}")
    return vals  # type: ignore[return-value]


def cli_options(
    *,
    momentum: float | None = None,
    dampening: float | None = None,
    nesterov: bool = False,
    betas: str | None = None,
    eps: float | None = None,
    optimizer_weight_decay: float | None = None,
    extra: str | None = None,
) -> dict[str, Any]:
    """Collect the ``train`` command's optimiser flags into ``TrainConfig.optimizer_options``.

    Only options the user set are included; a key given twice (a flag and ``--optimizer-options``)
    is an error.
    """
    named: dict[str, Any] = {
        "momentum": momentum,
        "dampening": dampening,
        "nesterov": True if nesterov else None,
        "betas": parse_betas(betas),
        "eps": eps,
        "weight_decay": optimizer_weight_decay,
    }
    opts = {k: v for k, v in named.items() if v is not None}
    for k, v in parse_options(extra).items():
        if k in opts:
            raise HeterogradError(f"optimizer option {k!r} given twice (flag and --optimizer-options); keep one")
        if k == "lr":
            raise HeterogradError("set the learning rate with --lr, not --optimizer-options")
        opts[k] = v
    return opts
