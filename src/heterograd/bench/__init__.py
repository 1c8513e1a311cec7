"""Benchmarks, in one place: the training-step runner and its cases, and the evolution back-end benchmark.

* `heterograd.bench.runner`: ``heterograd bench`` (or ``python -m heterograd.bench``), one training step of
  heterograd's rules against autograd backprop and autograd feedback alignment, timed side by side; with
  ``--models``, one step of a model of `heterograd.models` converted by each rule against autograd;
* `heterograd.bench.evolve`: ``python -m heterograd.bench.evolve --out DIR``, a batched population of
  circuits against a Python loop over circuits;
* `heterograd.bench.cli`: the ``bench`` command of the ``heterograd`` app.
"""

from .runner import (
    BASELINE,
    IMPLS,
    MODEL_IMPLS,
    BenchConfig,
    Case,
    FALinear,
    ModelStep,
    Resident,
    autograd_mlp,
    fuse_optimizer,
    make_step,
    markdown,
    model_for,
    parse_sizes_arg,
    peak_step_memory,
    resident_bytes,
    run_benchmark,
    targets,
    tensor_bytes,
    write_results,
)

__all__ = [
    "BASELINE",
    "IMPLS",
    "MODEL_IMPLS",
    "BenchConfig",
    "Case",
    "FALinear",
    "ModelStep",
    "Resident",
    "autograd_mlp",
    "fuse_optimizer",
    "make_step",
    "markdown",
    "model_for",
    "parse_sizes_arg",
    "peak_step_memory",
    "resident_bytes",
    "run_benchmark",
    "targets",
    "tensor_bytes",
    "write_results",
]
