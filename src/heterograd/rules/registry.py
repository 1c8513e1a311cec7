"""Name -> rule class registry. Adding a rule never touches the training loop."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from ..errors import HeterogradError, unknown_choice
from .base import Rule

R = TypeVar("R", bound=type[Rule])

RULES: dict[str, type[Rule]] = {}


def register_rule(cls: R) -> R:
    """Class decorator: make a :class:`Rule` subclass available by its ``name``."""
    name = cls.name
    if name in RULES and RULES[name] is not cls:
        raise HeterogradError(f"a rule named {name!r} is already registered; choose another name")
    RULES[name] = cls
    return cls


def make_rule(name: str, **hyper: Any) -> Rule:
    """Build a registered rule by name.

    Hyperparameters the rule does not have are ignored (so one call site can pass
    ``weight_decay`` and ``feedback_gain`` to any rule); ``None`` values mean "default".

    >>> make_rule("hsp", weight_decay=1e-4, feedback_gain=0.5).feedback_gain
    0.5
    """
    try:
        cls = RULES[name]
    except KeyError:
        raise unknown_choice("rule", name, RULES) from None
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    kwargs = {k: v for k, v in hyper.items() if k in fields and v is not None}
    return cls(**kwargs)
