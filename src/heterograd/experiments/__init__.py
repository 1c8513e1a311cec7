"""Reproductions of the theory's claims (docs/theory.md): ``heterograd repro NAME`` / ``heterograd repro all``.

Each module in :data:`EXPERIMENT_MODULES` registers one or more experiments with
:func:`heterograd.experiments.base.experiment`.
"""

from __future__ import annotations

import importlib

from .base import EXPERIMENTS, Context, Verdict, experiment, run_experiment

EXPERIMENT_MODULES: tuple[str, ...] = (
    "hs",
    "dc",
    "metaplasticity",
    "hebbian",
    "flexibility",
    "benchmark",
    "optimizers",
    "meta",
    "evolution",
    "hardware",
    "hardware_lenet",
    "rewire",
    "rewire_ablation",
    "dynamics",
    "plasticity_curve",
    "convnets",
    "language",
)
"""Modules (relative to this package) that register experiments, in report order."""


def load_all() -> dict[str, object]:
    """Import every experiment module so that :data:`EXPERIMENTS` is complete."""
    for mod in EXPERIMENT_MODULES:
        importlib.import_module(f"{__name__}.{mod}")
    return dict(EXPERIMENTS)


__all__ = ["EXPERIMENTS", "EXPERIMENT_MODULES", "Context", "Verdict", "experiment", "load_all", "run_experiment"]
