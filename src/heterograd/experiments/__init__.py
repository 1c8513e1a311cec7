"""Reproductions of the theory's claims (docs/theory.md): ``heterograd repro NAME`` / ``heterograd repro all``.

Each module in `EXPERIMENT_MODULES` registers one or more experiments with
`heterograd.experiments.base.experiment`.
"""

from __future__ import annotations

from .base import EXPERIMENT_MODULES, EXPERIMENTS, Context, Verdict, experiment, load_all, run_experiment

EXPERIMENT_NAMES: tuple[str, ...] = (
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
    "hardware-lenet",
    "rewire",
    "dynamics",
    "plasticity",
    "convnets",
    "definitions",
    "language",
    "rewire-ablation",
)
"""The names `EXPERIMENT_MODULES` register, in report order, known without importing them (``repro --help``;
a test keeps the two in step)."""

__all__ = [
    "EXPERIMENTS",
    "EXPERIMENT_MODULES",
    "EXPERIMENT_NAMES",
    "Context",
    "Verdict",
    "experiment",
    "load_all",
    "run_experiment",
]
