"""Plasticity rules: pure functions of local signals that return deltas.

Registered rules (by name): ``bp``, ``fa``, ``hsp``, ``kp``, ``poly``, ``dfa``, ``usf``, ``brsf``, ``frsf``
(and the ``freeze`` combinator). Add your own with
`register_rule`; the training loop needs no change.
"""

from .base import Deltas, FeedbackSignals, ForwardSignals, Params, PendingDelta, Rule, Signals

# Registration side effects: importing the modules fills RULES.
from .baselines import BRSF, DFA, FRSF, USF
from .classic import BP, FA, HSP, KP
from .combinators import Freeze
from .poly import B_FEATURES, N_FEATURES, W_FEATURES, Poly, bilinear_theta, format_poly, poly_delta
from .registry import (
    RULES,
    RUN_DEFAULTS,
    check_rule_hyperparameters,
    make_rule,
    register_rule,
    rule_hyperparameters,
    run_defaults,
)

__all__ = [
    "BP",
    "BRSF",
    "B_FEATURES",
    "DFA",
    "FA",
    "FRSF",
    "HSP",
    "KP",
    "N_FEATURES",
    "RULES",
    "RUN_DEFAULTS",
    "USF",
    "W_FEATURES",
    "Deltas",
    "FeedbackSignals",
    "ForwardSignals",
    "Freeze",
    "Params",
    "PendingDelta",
    "Poly",
    "Rule",
    "Signals",
    "bilinear_theta",
    "check_rule_hyperparameters",
    "format_poly",
    "make_rule",
    "poly_delta",
    "register_rule",
    "rule_hyperparameters",
    "run_defaults",
]
