"""Plasticity rules: pure functions of local signals that return deltas.

Registered rules (by name): ``bp``, ``fa``, ``hsp``, ``poly``. Add your own with
:func:`register_rule`; the training loop needs no change.
"""

from .base import Deltas, FeedbackSignals, ForwardSignals, Params, Rule, Signals

# Registration side effects: importing the modules fills RULES.
from .classic import BP, FA, HSP
from .combinators import Freeze
from .poly import B_FEATURES, N_FEATURES, W_FEATURES, Poly, bilinear_theta, format_poly, poly_delta
from .registry import RULES, check_rule_hyperparameters, make_rule, register_rule, rule_hyperparameters

__all__ = [
    "BP",
    "B_FEATURES",
    "FA",
    "HSP",
    "N_FEATURES",
    "RULES",
    "W_FEATURES",
    "Deltas",
    "FeedbackSignals",
    "ForwardSignals",
    "Freeze",
    "Params",
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
]
