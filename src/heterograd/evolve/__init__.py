"""Evolution of plasticity rules (docs/theory.md section 7): gradient learning from rules that compute no gradient.

A population of circuits, each with a random polynomial rule genome, is trained as one batched
computation (`.population`) or in shards on Ray (`.backends`), selected on final loss and
mutated (`.run`). ``heterograd evolve --help`` is the command line.
"""

from .backends import BACKENDS, BatchedBackend, Job, RayBackend, make_backend
from .genome import DEFAULT_B_TERMS, DEFAULT_W_TERMS, GenomeSpec, random_genomes
from .population import EvalResult, Problem, circuit_seed, evaluate_population, init_population, train_population
from .run import EvolveConfig, EvolveResult, evolve, load_checkpoint, next_generation

__all__ = [
    "BACKENDS",
    "DEFAULT_B_TERMS",
    "DEFAULT_W_TERMS",
    "BatchedBackend",
    "EvalResult",
    "EvolveConfig",
    "EvolveResult",
    "GenomeSpec",
    "Job",
    "Problem",
    "RayBackend",
    "circuit_seed",
    "evaluate_population",
    "evolve",
    "init_population",
    "load_checkpoint",
    "make_backend",
    "next_generation",
    "random_genomes",
    "train_population",
]
