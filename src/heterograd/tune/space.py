"""The search space of a study: which hyperparameters ``heterograd tune`` samples, and from which ranges.

A space is data: a mapping ``name -> spec`` read from a TOML, YAML or JSON file (``--space``) or built by
`default_space`. A spec is one of

- ``{low = 1e-4, high = 0.3, log = true}``: a float, uniform or log-uniform (``int = true`` for integers,
  ``step`` for a grid);
- ``{choices = ["momentum", "adam"]}``: a categorical choice;
- a bare value (``weight_decay = 1e-4``) or ``{value = 1e-4}``: fixed.

A name is a field of `heterograd.config.TrainConfig` (``lr``, ``weight_decay``, ``feedback_gain``,
``batch_size``, ``optimizer``, ``schedule``, ...) or an option of the optimiser (``momentum``, ``dampening``,
``nesterov``, ``eps``, ``alpha``, ``centered``, ``amsgrad``, ``optimizer_weight_decay``); an optimiser option is
sampled only in the trials whose optimiser takes it. The gain ``c`` (``feedback_gain``) is sampled only under
SGD-type optimisers (``sgd``, ``momentum``): the adaptive ones (``rmsprop``, ``adam``, ``adamw``) divide each
element of ``B``'s update by its own running scale, which cancels ``c`` (docs/tune.md).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import TrainConfig, read_config_file
from ..errors import HeterogradError
from ..optim import motif_options
from ..rules import rule_hyperparameters
from ..train_module import TORCH_OPTIMIZERS

#: optimisers that scale each element of an update by its own running magnitude: they cancel the gain ``c``.
ADAPTIVE_OPTIMIZERS: tuple[str, ...] = ("rmsprop", "adam", "adamw")
#: optimisers under which ``c`` sets the size of ``B``'s update (``tune`` searches ``c`` only under these).
SGD_OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum")
#: search-space names that are optimiser options -> the option's key in ``TrainConfig.optimizer_options``.
OPTIMIZER_OPTIONS: dict[str, str] = {
    "momentum": "momentum",
    "dampening": "dampening",
    "nesterov": "nesterov",
    "eps": "eps",
    "alpha": "alpha",
    "centered": "centered",
    "amsgrad": "amsgrad",
    "optimizer_weight_decay": "weight_decay",
}
#: config fields a study never searches: the budget, the data, what is trained, where and how it is logged.
NOT_SEARCHED = frozenset(
    {
        "data", "rule", "model", "epochs", "seed", "n_train", "n_test", "device", "dtype", "log_every", "probes",
        "probe_size", "checkpoint_every", "compile", "divergence_threshold", "optimizer_options", "model_options",
        "device_model_options", "theta_w", "theta_b",
    }
)  # fmt: skip
#: default learning-rate range (log-uniform) per optimiser.
LR_RANGES: dict[str, tuple[float, float]] = {
    "sgd": (1e-3, 1.0),
    "momentum": (1e-4, 0.3),
    "rmsprop": (1e-5, 1e-2),
    "adam": (1e-5, 1e-2),
    "adamw": (1e-5, 1e-2),
}


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) hyperparameter.

    Attributes:
        name: a `TrainConfig` field or a key of `OPTIMIZER_OPTIONS`.
        kind: ``"float"``, ``"int"``, ``"categorical"`` or ``"fixed"``.
        low, high: the range (float / int); log: log-uniform; step: a grid step (or ``None``).
        choices: the values of a categorical; value: the value of a fixed one.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    def describe(self) -> str:
        """``lr: log-uniform [0.0001, 0.3]``-style text for reports."""
        if self.kind == "fixed":
            return f"{self.name} = {self.value!r}"
        if self.kind == "categorical":
            return f"{self.name} in {list(self.choices)!r}"
        how = "log-uniform" if self.log else "uniform"
        return f"{self.name}: {how}{' integer' if self.kind == 'int' else ''} [{self.low:g}, {self.high:g}]"

    def to_dict(self) -> dict[str, Any]:
        """The spec as a file would hold it (for ``space.json`` and the study's record)."""
        if self.kind == "fixed":
            return {"value": self.value}
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        d: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.kind == "int":
            d["int"] = True
        if self.step is not None:
            d["step"] = self.step
        return d


@dataclass(frozen=True)
class SearchSpace:
    """The hyperparameters of a study, in the order they are sampled (``optimizer`` first)."""

    params: tuple[Param, ...]

    def names(self) -> list[str]:
        """The names of the searched (not fixed) hyperparameters."""
        return [p.name for p in self.params if p.kind != "fixed"]

    def to_dict(self) -> dict[str, Any]:
        return {p.name: p.to_dict() for p in self.params}

    def sample(self, trial: Any, base: TrainConfig) -> dict[str, Any]:
        """Draw one trial's values (``trial`` an ``optuna.Trial``); ``{name: value}`` of what applies to it.

        An optimiser option is drawn only when the trial's optimiser takes it; ``feedback_gain`` only under an
        SGD-type optimiser.
        """
        values: dict[str, Any] = {}
        optimizer = base.optimizer
        for p in self.params:
            if p.name != "optimizer" and not applies(p.name, optimizer, base):
                continue
            if p.kind == "fixed":
                v = p.value
            elif p.kind == "categorical":
                v = trial.suggest_categorical(p.name, list(p.choices))
            elif p.kind == "int":
                assert p.low is not None and p.high is not None
                v = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                assert p.low is not None and p.high is not None
                v = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
            values[p.name] = v
            if p.name == "optimizer":
                optimizer = v
        return values


def applies(name: str, optimizer: str, base: TrainConfig) -> bool:
    """Whether hyperparameter ``name`` has an effect in a run of ``base`` under ``optimizer``."""
    if name in OPTIMIZER_OPTIONS:
        return OPTIMIZER_OPTIONS[name] in optimizer_takes(optimizer, module=base.model is not None)
    if name == "feedback_gain":
        return optimizer in SGD_OPTIMIZERS
    return True


def optimizer_takes(optimizer: str, *, module: bool) -> tuple[str, ...]:
    """Option keys of ``optimizer``: ``torch.optim``'s for a converted model, the motif's for a circuit."""
    if module:
        return TORCH_OPTIMIZERS[optimizer][1] if optimizer in TORCH_OPTIMIZERS else ()
    try:
        return tuple(o for o in motif_options(optimizer) if o != "lr")
    except HeterogradError:
        return ()


def apply(base: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """``base`` with a trial's values set (optimiser options merged into ``optimizer_options``); not validated."""
    fields: dict[str, Any] = {}
    options = dict(base.optimizer_options)
    if "optimizer" in values and values["optimizer"] != base.optimizer:
        options = {}  # another optimiser: the base's options belong to the base's optimiser
    for name, v in values.items():
        if name in OPTIMIZER_OPTIONS:
            options[OPTIMIZER_OPTIONS[name]] = v
        else:
            fields[name] = v
    return replace(base, **fields, optimizer_options=options)


def _param(name: str, spec: Any, where: str) -> Param:
    """One spec of a space file (see the module docstring) as a `Param`."""
    if not isinstance(spec, Mapping):
        return Param(name, "fixed", value=spec)
    keys = set(spec)
    if keys <= {"value"} and keys:
        return Param(name, "fixed", value=spec["value"])
    if "choices" in keys:
        choices = spec["choices"]
        if keys != {"choices"} or not isinstance(choices, list) or not choices:
            raise HeterogradError(f'{where}: {name!r} needs only a non-empty list, e.g. choices = ["sgd", "momentum"]')
        return Param(name, "categorical", choices=tuple(choices))
    bad = keys - {"low", "high", "log", "int", "step"}
    if bad or not {"low", "high"} <= keys:
        raise HeterogradError(
            f"{where}: {name!r} must be a value, {{choices = [...]}} or {{low = ..., high = ..., log = true}}; "
            f"got keys {sorted(keys)}"
        )
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for what, v in (("low", low), ("high", high), ("step", step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)):
            raise HeterogradError(f"{where}: {name}.{what} must be a finite number, got {v!r}")
    if not isinstance(log, bool) or not isinstance(spec.get("int", False), bool):
        raise HeterogradError(f"{where}: {name}.log and {name}.int must be true or false")
    if not low < high or (log and low <= 0):
        raise HeterogradError(
            f"{where}: {name} needs low < high{' and low > 0 (log scale)' if log else ''}, got [{low}, {high}]"
        )
    if log and step is not None:
        raise HeterogradError(f"{where}: {name} cannot have both log = true and a step; drop one")
    kind = "int" if spec.get("int", False) else "float"
    return Param(name, kind, float(low), float(high), log, None if step is None else float(step))


def space_from_mapping(data: Mapping[str, Any], base: TrainConfig, where: str = "--space") -> SearchSpace:
    """A `SearchSpace` from ``{name: spec}``, checked against the run it tunes (``base``).

    Errors (one `HeterogradError` each): an unknown name, a name a study never searches (``epochs``,
    ``seed``, ...), an optimiser option no optimiser of the space takes, ``feedback_gain`` for a rule without
    it or with only adaptive optimisers, a bad range.
    """
    fields = {f for f in TrainConfig.__dataclass_fields__}
    params: list[Param] = []
    for name, spec in data.items():
        if name in NOT_SEARCHED:
            raise HeterogradError(
                f"{where}: {name!r} is not a hyperparameter a study searches (the budget, data and model are fixed); "
                f"set it with --{name.replace('_', '-')} instead"
            )
        if name not in fields and name not in OPTIMIZER_OPTIONS:
            known = sorted((fields - NOT_SEARCHED) | set(OPTIMIZER_OPTIONS))
            raise HeterogradError(f"{where}: unknown hyperparameter {name!r}; searchable: {', '.join(known)}")
        params.append(_param(name, spec, where))
    params.sort(key=lambda p: p.name != "optimizer")  # the optimiser first: other names depend on it
    by_name = {p.name: p for p in params}
    opt = by_name.get("optimizer")
    optimizers = [base.optimizer] if opt is None else list(opt.choices if opt.kind == "categorical" else [opt.value])
    for o in optimizers:
        if not isinstance(o, str) or o not in LR_RANGES:
            raise HeterogradError(f"{where}: optimizer {o!r} is not one of {', '.join(LR_RANGES)}")
    module = base.model is not None
    for p in params:
        if p.name in OPTIMIZER_OPTIONS and not any(
            OPTIMIZER_OPTIONS[p.name] in optimizer_takes(o, module=module) for o in optimizers
        ):
            raise HeterogradError(
                f"{where}: {p.name!r} is not an option of optimizer {', '.join(optimizers)}; "
                "remove it or search an optimizer that takes it"
            )
    if "feedback_gain" in by_name:
        if "feedback_gain" not in rule_hyperparameters(base.rule):
            raise HeterogradError(f"{where}: rule {base.rule!r} has no feedback gain c; remove feedback_gain")
        if not any(o in SGD_OPTIMIZERS for o in optimizers):
            raise HeterogradError(
                f"{where}: feedback_gain is not searched under {', '.join(optimizers)}: adaptive optimisers divide "
                "each element of B's update by its own scale, which cancels c; remove feedback_gain or use sgd/momentum"
            )
    if "weight_decay" in by_name and "weight_decay" not in rule_hyperparameters(base.rule):
        raise HeterogradError(f"{where}: rule {base.rule!r} has no weight decay; remove weight_decay")
    return SearchSpace(tuple(params))


def load_space(path: str | Path, base: TrainConfig) -> SearchSpace:
    """Read a space file (TOML, YAML or JSON; see the module docstring) and check it against ``base``."""
    try:
        data = read_config_file(path)
    except HeterogradError as exc:
        raise HeterogradError(str(exc).replace("--config", "--space", 1)) from None
    if not data:
        raise HeterogradError(
            f"--space {path}: the file names no hyperparameter; add e.g. lr = {{low = 1e-4, high = 0.3, log = true}}"
        )
    return space_from_mapping(data, base, where=f"--space {path}")


def default_space(base: TrainConfig, fixed: frozenset[str] = frozenset()) -> SearchSpace:
    """The space searched without ``--space``: per optimiser, leaving out the names in ``fixed``.

    - ``lr`` log-uniform over `LR_RANGES` of the optimiser;
    - ``momentum`` in [0.5, 0.99] under ``momentum``;
    - ``weight_decay`` log-uniform in [1e-6, 1e-2] for rules with a weight decay;
    - ``feedback_gain`` (``c``) uniform in [0.1, 2] for ``hsp`` under SGD-type optimisers only.

    ``fixed`` holds the names the user set on the command line: they keep that value and are not searched.
    """
    spec: dict[str, Any] = {}
    lo, hi = LR_RANGES.get(base.optimizer, (1e-4, 0.3))
    spec["lr"] = {"low": lo, "high": hi, "log": True}
    if base.optimizer == "momentum":
        spec["momentum"] = {"low": 0.5, "high": 0.99}
    takes = rule_hyperparameters(base.rule)
    if "weight_decay" in takes:
        spec["weight_decay"] = {"low": 1e-6, "high": 1e-2, "log": True}
    if base.rule == "hsp" and base.optimizer in SGD_OPTIMIZERS:
        spec["feedback_gain"] = {"low": 0.1, "high": 2.0}
    return space_from_mapping({k: v for k, v in spec.items() if k not in fixed}, base, where="default space")
