"""Back ends that evaluate populations: one batched computation here, or shards on Ray.

Both back ends run `heterograd.evolve.population.evaluate_population`; because every circuit's
init and data derive from ``(seed, generation, index)`` and the batched computation treats circuits
independently, splitting a population into shards does not change any number: the Ray back end
returns exactly what the batched back end returns (tested).
"""

from __future__ import annotations

import itertools
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import HeterogradError, unknown_choice
from .population import EvalResult, Problem, evaluate_population

BACKENDS: tuple[str, ...] = ("batched", "ray")
RAY_MISSING = '--backend ray needs Ray, which is not installed; install it with: pip install "heterograd[ray]"'


@dataclass(frozen=True)
class Job:
    """Circuits ``indices`` of ``generation`` with rules ``theta_w`` ``(P, L, 8)``, ``theta_b`` ``(P, L-1, 8)``."""

    theta_w: Tensor
    theta_b: Tensor
    indices: tuple[int, ...]
    generation: int


class Backend(ABC):
    """Evaluates jobs; ``close()`` releases what the back end started."""

    name: str

    @abstractmethod
    def run(self, problem: Problem, jobs: Sequence[Job]) -> list[EvalResult]:
        """One `EvalResult` per job, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (default: nothing)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BatchedBackend(Backend):
    """The whole population in this process, batched (in blocks of ``problem.block`` circuits).

    Args:
        device: ``cpu`` or ``cuda``.
    """

    name = "batched"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def run(self, problem: Problem, jobs: Sequence[Job]) -> list[EvalResult]:
        return [
            evaluate_population(problem, job.theta_w, job.theta_b, job.indices, job.generation, self.device)
            for job in jobs
        ]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise HeterogradError(RAY_MISSING) from None
    return ray


_REMOTE: dict[str, Any] = {}


def _eval_shard(problem: Problem, theta_w: Tensor, theta_b: Tensor, indices: tuple[int, ...], generation: int) -> Any:
    return evaluate_population(problem, theta_w, theta_b, indices, generation)


class RayBackend(Backend):
    """Shards of the population (whole blocks of ``problem.block`` circuits) evaluated by Ray tasks.

    Args:
        workers: shards per job (and CPUs of a local Ray started here).
        address: a Ray cluster address (``ray://host:10001`` or ``host:6379``); ``None`` starts a local Ray
            with ``num_cpus=workers``. The cluster's nodes need heterograd installed.
    """

    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None) -> None:
        if workers < 1:
            raise HeterogradError(f"--workers must be >= 1, got {workers}")
        self.ray = _import_ray()
        self.workers = workers
        self._started = False
        if not self.ray.is_initialized():
            if address:
                try:
                    self.ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
                except Exception as exc:
                    raise HeterogradError(
                        f"cannot connect to the Ray cluster at {address!r} ({type(exc).__name__}); "
                        "check --ray-address or leave it out to start a local Ray"
                    ) from None
            else:
                self.ray.init(
                    num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
                )
            self._started = True
        if "eval" not in _REMOTE:
            _REMOTE["eval"] = self.ray.remote(num_cpus=1)(_eval_shard)
        self._problem_key: int | None = None
        self._problem_ref: Any = None

    def run(self, problem: Problem, jobs: Sequence[Job]) -> list[EvalResult]:
        if self._problem_key != id(problem):
            self._problem_ref = self.ray.put(problem)
            self._problem_key = id(problem)
        remote = _REMOTE["eval"]
        pending: list[list[Any]] = []
        for job in jobs:
            n = len(job.indices)
            n_blocks = math.ceil(n / problem.block)  # shards are whole blocks: see Problem.block
            cuts = torch.linspace(0, n_blocks, min(self.workers, n_blocks) + 1).round().long().tolist()
            bounds = [min(n, c * problem.block) for c in cuts]
            refs = []
            for a, b in itertools.pairwise(bounds):
                if b > a:
                    refs.append(
                        remote.remote(
                            self._problem_ref, job.theta_w[a:b], job.theta_b[a:b], job.indices[a:b], job.generation
                        )
                    )
            pending.append(refs)
        return [EvalResult.cat(self.ray.get(refs)) for refs in pending]

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False


def make_backend(name: str, *, workers: int = 2, ray_address: str | None = None, device: str = "cpu") -> Backend:
    """``batched`` or ``ray`` (see the classes)."""
    if name == "batched":
        return BatchedBackend(device)
    if name == "ray":
        return RayBackend(workers, ray_address)
    raise unknown_choice("backend", name, BACKENDS)
