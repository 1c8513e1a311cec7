"""Hyperparameter studies on Optuna (``heterograd tune``): an equal tuning budget for every rule.

`run_study` tunes a `heterograd.config.TrainConfig` (circuit or converted model) over a
`SearchSpace` (`default_space` per optimiser, or `load_space` from a TOML/YAML/JSON file),
on a validation split carved from the training set (`validation_split`); see docs/tune.md.
"""

from __future__ import annotations

from .space import (
    ADAPTIVE_OPTIMIZERS,
    SGD_OPTIMIZERS,
    Param,
    SearchSpace,
    apply,
    default_space,
    load_space,
    space_from_mapping,
)
from .study import (
    DIVERGED_ERROR,
    StudyOptions,
    StudyResult,
    config_differences,
    default_study_name,
    run_study,
    validation_split,
)

__all__ = [
    "ADAPTIVE_OPTIMIZERS",
    "DIVERGED_ERROR",
    "SGD_OPTIMIZERS",
    "Param",
    "SearchSpace",
    "StudyOptions",
    "StudyResult",
    "apply",
    "config_differences",
    "default_space",
    "default_study_name",
    "load_space",
    "run_study",
    "space_from_mapping",
    "validation_split",
]
