"""Name -> rule class registry. Adding a rule never touches the training loop."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from ..errors import HeterogradError, unknown_choice
from .base import Rule

R = TypeVar("R", bound=type[Rule])

RULES: dict[str, type[Rule]] = {}


def register_rule(cls: R) -> R:
    """Class decorator: make a `Rule` subclass available by its ``name``."""
    name = cls.name
    if name in RULES and RULES[name] is not cls:
        raise HeterogradError(f"a rule named {name!r} is already registered; choose another name")
    RULES[name] = cls
    return cls


def rule_hyperparameters(name: str) -> tuple[str, ...]:
    """The hyperparameters rule ``name`` takes: the fields of its dataclass that ``__init__`` accepts."""
    try:
        cls = RULES[name]
    except KeyError:
        raise unknown_choice("rule", name, RULES) from None
    if not dataclasses.is_dataclass(cls):
        return ()
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def check_rule_hyperparameters(name: str, **hyper: Any) -> None:
    """Raise a `HeterogradError` for a hyperparameter that rule ``name`` would ignore.

    ``hyper`` maps hyperparameter names to values; ``None`` means "not set" and is never an error.
    A value is an error when the rule has no such field (e.g. ``feedback_gain`` with ``fa``: its
    feedback is fixed) or when the rule says the other values make it meaningless
    (`Rule.unused_hyperparameters`, e.g. ``feedback_gain`` with ``poly`` given ``theta_b``).
    """
    given = {k: v for k, v in hyper.items() if v is not None}
    fields = rule_hyperparameters(name)
    for k in given:
        if k not in fields:
            takes = ", ".join(_flag(f) for f in fields if f in _CONFIG_HYPER) or "none of the rule options"
            raise HeterogradError(
                f"{_flag(k)} does not apply to rule {name!r}, which would ignore it (rule {name!r} takes {takes}); "
                f"drop {_flag(k)} or choose a rule that has it"
            )
    for k, why in RULES[name].unused_hyperparameters(given).items():
        if k in given:
            raise HeterogradError(f"{_flag(k)} has no effect on rule {name!r} here: {why}; drop {_flag(k)}")


def make_rule(name: str, **hyper: Any) -> Rule:
    """Build a registered rule by name.

    ``None`` values mean "not set" (the rule's default). A value the rule would ignore, because it
    has no such hyperparameter or the other values override it, is a `HeterogradError`
    (see `check_rule_hyperparameters`): an option is never dropped in silence.

    >>> make_rule("hsp", weight_decay=1e-4, feedback_gain=0.5).feedback_gain
    0.5
    """
    check_rule_hyperparameters(name, **hyper)
    return RULES[name](**{k: v for k, v in hyper.items() if v is not None})


# the rule options TrainConfig and the command line pass to make_rule (named in error messages)
_CONFIG_HYPER = ("weight_decay", "feedback_gain", "theta_w", "theta_b")

#: The defaults of a *run*: ``TrainConfig`` / ``heterograd train`` and ``convert(model, "name")`` fill them in
#: where the rule takes the option and it was not set. ``λ = 1e-4``: the decay term is what lets ``B`` forget
#: its random start (``B - cWᵀ`` shrinks as ``(1 - ηλ)^t``, docs/theory.md); ``c = 1`` except ``hsp``, whose
#: default gain is ``0.5`` (at ``c = 1`` it would be ``kp``). A rule built directly (``make_rule``, the rule
#: classes) is the bare equation: ``λ = 0`` unless given.
RUN_DEFAULTS: dict[str, float] = {"weight_decay": 1e-4, "feedback_gain": 1.0}
#: per-rule exceptions to `RUN_DEFAULTS`.
RULE_RUN_DEFAULTS: dict[str, dict[str, float]] = {"hsp": {"feedback_gain": 0.5}}


def run_defaults(name: str, given: dict[str, Any]) -> dict[str, float]:
    """The run defaults (`RUN_DEFAULTS`) of rule ``name`` for the options not in ``given`` (``None``: unset).

    Only options the rule takes and that the given ones leave meaningful (``poly`` given ``theta_b`` has no
    ``feedback_gain``).

    >>> run_defaults("hsp", {})
    {'weight_decay': 0.0001, 'feedback_gain': 0.5}
    >>> run_defaults("fa", {"weight_decay": 0.0})
    {}
    """
    takes = rule_hyperparameters(name)
    set_ = {k: v for k, v in given.items() if v is not None}
    unused = RULES[name].unused_hyperparameters(set_)
    out: dict[str, float] = {}
    for k, v in {**RUN_DEFAULTS, **RULE_RUN_DEFAULTS.get(name, {})}.items():
        if k in takes and k not in unused and k not in set_:
            out[k] = v
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
