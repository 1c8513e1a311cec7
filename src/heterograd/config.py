"""Configuration of a training run: :class:`TrainConfig` and the validation of every field.

Kept apart from the loop (:mod:`heterograd.train`) so that the command line, experiments and
evolution can build and check a configuration without importing the trainer.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .circuits import ACTIVATIONS, FEEDBACK_INITS, TOPOLOGIES, parse_hidden
from .errors import HeterogradError, unknown_choice
from .losses import LOSSES
from .optim import MOTIFS
from .rules import RULES, check_rule_hyperparameters, rule_hyperparameters
from .runtime import DTYPES, resolve_device


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved resolved as ``config.json``).

    Defaults reproduce ``heterograd train --data digits --rule hsp``.

    ``weight_decay``, ``feedback_gain`` and ``density`` default to ``None``, "not set":
    :meth:`validate` fills in the default (``1e-4``, ``1.0``, ``1.0``) only where the rule or the
    topology uses it, and leaves ``None`` where it would be ignored, so ``config.json`` never
    records a value that had no effect. Setting one where it has no effect (``feedback_gain``
    with ``fa``, ``density`` with ``layered``) is a :class:`HeterogradError`.
    """

    data: str = "digits"
    rule: str = "hsp"
    epochs: int = 20
    seed: int = 0
    hidden: tuple[int, ...] = (128, 128)
    activation: str = "tanh"
    lr: float = 0.05
    batch_size: int = 32
    weight_decay: float | None = None
    feedback_gain: float | None = None
    topology: str = "layered"
    density: float | None = None
    feedback_init: str = "random"
    loss: str | None = None
    optimizer: str = "sgd"
    device: str = "cpu"
    dtype: str = "float32"
    log_every: int | None = None
    probes: bool = True
    probe_size: int = 512
    n_train: int | None = None
    n_test: int | None = None
    theta_w: list[float] | None = None
    theta_b: list[float] | None = None
    divergence_threshold: float = 1e6
    checkpoint_every: int | None = None
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    compile: bool = False

    def validate(self) -> TrainConfig:
        """Check every field; raise :class:`HeterogradError` naming the first problem and the fix."""
        for name in ("rule", "activation", "topology", "feedback_init", "optimizer", "dtype", "device"):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise HeterogradError(f"{name} must be a name (str), got {v!r}; e.g. {name}={_EXAMPLES[name]!r}")
        if not isinstance(self.data, str) or not self.data.strip():
            raise HeterogradError(f"data must be a dataset name, got {self.data!r}; e.g. data='digits' or 'idx:<dir>'")
        if self.rule not in RULES:
            raise unknown_choice("rule", self.rule, RULES)
        if self.activation not in ACTIVATIONS:
            raise unknown_choice("activation", self.activation, ACTIVATIONS)
        if self.topology not in TOPOLOGIES:
            raise unknown_choice("topology", self.topology, TOPOLOGIES)
        if self.feedback_init not in FEEDBACK_INITS:
            raise unknown_choice("feedback init", self.feedback_init, FEEDBACK_INITS)
        if self.loss is not None and (not isinstance(self.loss, str) or self.loss not in LOSSES):
            raise unknown_choice("loss", self.loss, LOSSES)
        if self.optimizer not in MOTIFS:
            raise unknown_choice("optimizer", self.optimizer, MOTIFS)
        if self.dtype not in DTYPES:
            raise unknown_choice("dtype", self.dtype, DTYPES)
        self.hidden = parse_hidden(self.hidden)
        for name, lo in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("probe_size", 1)):
            _check_int(name, getattr(self, name), lo)
        if self.seed >= 2**63:
            raise HeterogradError(f"--seed must be < 2**63, got {self.seed}; pass a smaller seed")
        for name in ("log_every", "n_train", "n_test", "checkpoint_every"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1, optional=True)
        for name in ("lr", "divergence_threshold"):
            _check_real(name, getattr(self, name))
        for name in ("weight_decay", "feedback_gain", "density"):
            if getattr(self, name) is not None:
                _check_real(name, getattr(self, name))
        wd, dens = self.weight_decay, self.density
        checks: list[tuple[bool, str]] = [
            (self.lr > 0, f"--lr must be a positive number, got {self.lr}; e.g. --lr 0.05"),
            (wd is None or wd >= 0, f"--weight-decay must be >= 0, got {wd}; e.g. --weight-decay 1e-4"),
            (dens is None or 0 < dens <= 1, f"--density must be in (0, 1], got {dens}; e.g. --density 0.2"),
            (
                self.divergence_threshold > 0,
                f"divergence_threshold must be > 0, got {self.divergence_threshold}; e.g. 1e6",
            ),
            (isinstance(self.probes, bool), f"probes must be True or False, got {self.probes!r}"),
            (
                isinstance(self.optimizer_options, dict) and all(isinstance(k, str) for k in self.optimizer_options),
                f"optimizer_options must be a dict of name -> value, got {self.optimizer_options!r}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise HeterogradError(msg)
        for name in ("theta_w", "theta_b"):
            theta = getattr(self, name)
            if theta is None:
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(theta, str) or not isinstance(theta, Sequence):
                raise HeterogradError(
                    f"{flag} must be a list of numbers, got {theta!r}; e.g. {flag} 1,0,0,0,0,0,1e-4,0"
                )
            try:
                vals = [float(v) for v in theta]
            except (TypeError, ValueError):
                raise HeterogradError(
                    f"{flag} must be a list of numbers, got {theta!r}; e.g. {flag} 1,0,0,0,0,0,1e-4,0"
                ) from None
            if not all(math.isfinite(v) for v in vals):
                raise HeterogradError(f"{flag} must hold finite numbers, got {theta!r}")
            setattr(self, name, vals)
        self._resolve_applicable()
        self.device = resolve_device(self.device)
        return self

    def _resolve_applicable(self) -> None:
        """Reject options that would be ignored; fill in the defaults of the unset ones that apply."""
        hyper = {k: getattr(self, k) for k in ("weight_decay", "feedback_gain", "theta_w", "theta_b")}
        check_rule_hyperparameters(self.rule, **hyper)
        given = {k: v for k, v in hyper.items() if v is not None}
        unused = RULES[self.rule].unused_hyperparameters(given)
        takes = rule_hyperparameters(self.rule)
        for name, default in RULE_DEFAULTS.items():
            if getattr(self, name) is None and name in takes and name not in unused:
                setattr(self, name, default)
        if self.topology in MASKED_TOPOLOGIES:
            if self.density is None:
                self.density = 1.0
        elif self.density is not None:
            raise HeterogradError(
                f"--density sets the feedback mask of the sparse and amorphous topologies; topology "
                f"{self.topology!r} has no mask and would ignore it; drop --density or use --topology sparse"
            )
        if self.feedback_init != "random" and self.topology in ("direct", "amorphous") and len(self.hidden) >= 2:
            raise HeterogradError(
                f"--feedback-init {self.feedback_init} sets B = ±Wᵀ, which exists only for feedback edges between "
                f"adjacent layers; topology {self.topology!r} with {len(self.hidden)} hidden layers has edges that "
                "skip layers, which would start random; use --feedback-init random or --topology layered/sparse"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def without_ignored_options(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the options its rule or topology ignored set to ``None``.

    heterograd 0.1.0 recorded every option in ``config.json`` and checkpoints, also those the run
    ignored (``feedback_gain`` of an ``fa`` run, ``density`` of a ``layered`` one); they had no effect,
    so resuming such a run reads them as unset instead of rejecting the checkpoint.
    """
    out = dict(saved)
    rule, topology = out.get("rule"), out.get("topology")
    if isinstance(rule, str) and rule in RULES:
        takes = rule_hyperparameters(rule)
        for name in ("weight_decay", "feedback_gain", "theta_w", "theta_b"):
            if name in out and name not in takes:
                out[name] = None
        given = {k: out.get(k) for k in ("weight_decay", "feedback_gain", "theta_w", "theta_b")}
        for name in RULES[rule].unused_hyperparameters({k: v for k, v in given.items() if v is not None}):
            out[name] = None
    if isinstance(topology, str) and topology not in MASKED_TOPOLOGIES:
        out["density"] = None
    return out


RULE_DEFAULTS: dict[str, float] = {"weight_decay": 1e-4, "feedback_gain": 1.0}  # where the rule has them
MASKED_TOPOLOGIES = ("sparse", "amorphous")  # the topologies --density applies to

_EXAMPLES = {
    "rule": "hsp",
    "activation": "tanh",
    "topology": "layered",
    "feedback_init": "random",
    "optimizer": "sgd",
    "dtype": "float32",
    "device": "cpu",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_int(name: str, value: Any, lo: int, optional: bool = False) -> None:
    """``value`` must be an int (not bool) ``>= lo``; the error names the flag and an example."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < lo:
        unset = " or leave it unset" if optional else ""
        raise HeterogradError(f"{_flag(name)} must be an integer >= {lo}, got {value!r}; pass e.g. {max(lo, 1)}{unset}")


def _check_real(name: str, value: Any) -> None:
    """``value`` must be a finite real number (not bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise HeterogradError(f"{_flag(name)} must be a finite number, got {value!r}; pass e.g. {_flag(name)} 0.05")
