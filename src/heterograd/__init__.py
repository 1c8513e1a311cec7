"""heterograd: heterosynaptic circuits that learn by local two-signal plasticity.

The theory in brief is docs/theory.md (after Ziyin, Chuang, Poggio, arXiv:2505.02248).
"""

from . import _startup  # noqa: F401  (first, before torch: a Ctrl-C while the CLI starts is one line)
from ._version import __version__
from .circuits import Circuit, Trace
from .data import Dataset, load_dataset
from .errors import HeterogradError
from .losses import get_loss
from .nn import convert, probe
from .optim import make_motif
from .rules import RULES, Deltas, Rule, Signals, make_rule, register_rule
from .train import RunResult, TrainConfig, Trainer, TrainingInterrupted, apply_steps, evaluate, local_step, train

__all__ = [
    "RULES",
    "Circuit",
    "Dataset",
    "Deltas",
    "HeterogradError",
    "Rule",
    "RunResult",
    "Signals",
    "Trace",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "__version__",
    "apply_steps",
    "convert",
    "evaluate",
    "get_loss",
    "load_dataset",
    "local_step",
    "make_motif",
    "make_rule",
    "probe",
    "register_rule",
    "train",
]
