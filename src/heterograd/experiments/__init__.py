"""Reproductions of the theory's claims (docs/theory.md): ``heterograd repro NAME`` / ``heterograd repro all``.

Each module in `EXPERIMENT_MODULES` registers one or more experiments with
`heterograd.experiments.base.experiment`.
"""

from __future__ import annotations

from .base import EXPERIMENT_MODULES, EXPERIMENTS, Context, Verdict, experiment, load_all, run_experiment

__all__ = ["EXPERIMENTS", "EXPERIMENT_MODULES", "Context", "Verdict", "experiment", "load_all", "run_experiment"]
