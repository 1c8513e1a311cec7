"""Circuits: who feeds whom, forward weights ``W`` and feedback weights ``B``."""

from .activations import ACTIVATIONS, Activation, get_activation
from .circuit import FEEDBACK_INITS, Circuit, Trace, block_mask, parse_hidden, parse_sizes
from .topology import TOPOLOGIES, FeedbackEdge, build_edges

__all__ = [
    "ACTIVATIONS",
    "FEEDBACK_INITS",
    "TOPOLOGIES",
    "Activation",
    "Circuit",
    "FeedbackEdge",
    "Trace",
    "block_mask",
    "build_edges",
    "get_activation",
    "parse_hidden",
    "parse_sizes",
]
