"""Circuits: who feeds whom, forward weights ``W`` and feedback weights ``B``."""

from .activations import ACTIVATIONS, Activation, get_activation
from .circuit import FEEDBACK_INITS, Circuit, Trace, parse_sizes
from .motifs import BuiltMotif, cerebellar_circuit, pyramidal_circuit
from .topology import TOPOLOGIES, FeedbackEdge, build_edges

__all__ = [
    "ACTIVATIONS",
    "FEEDBACK_INITS",
    "TOPOLOGIES",
    "Activation",
    "BuiltMotif",
    "Circuit",
    "FeedbackEdge",
    "Trace",
    "build_edges",
    "cerebellar_circuit",
    "get_activation",
    "parse_sizes",
    "pyramidal_circuit",
]
