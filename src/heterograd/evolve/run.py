"""The evolution loop (docs/theory.md section 7): train a population of rule genomes, select, mutate, repeat.

Per generation ``g``:

1. every genome ``θ`` (population ``(P, G)``) is expanded to ``poly`` coefficients and one circuit per
   genome is trained for ``T`` steps on the task, with an init drawn from ``(seed, g, index)`` and the
   generation's minibatches (`heterograd.evolve.population`); nothing computes a gradient;
2. fitness = mean minibatch loss over the last ``fitness_frac`` of the steps (default the last 10%);
   diverged circuits get ``+inf``;
3. the bilinear rule (``ΔW = -η(u·h + λW)``, ``ΔB = -η(h·u + λB)``) is trained the same way on the
   same data by ``ref_circuits`` circuits (inits of individuals ``0..R-1``): its median fitness is the
   reference loss;
4. measurements (``generations.csv``): best / median / worst fitness, the fraction of genomes whose top
   layer learns by descent (``u·h`` coefficient of the top layer's ``θ_W`` ``> 0``), the DC fraction
   (circuits whose measured DC score, `measure_population`, is at least ``dc_threshold``), median
   ``φ`` and ``align`` of the hidden layers, the reference loss and the best rule in words;
5. selection (truncation: parents drawn uniformly from the best ``select_frac``; or tournaments) with
   ``elites`` best genomes copied unchanged, and Gaussian mutation ``θ += N(0, σ²)`` (each gene with
   probability ``mutation_rate``); a checkpoint (``checkpoint.pt``, atomic, ``weights_only`` loadable,
   with the selection RNG state) is written, so ``resume`` continues exactly.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import HeterogradError, unknown_choice
from ..results import atomic_open, prepare_out_dir, write_csv, write_json
from ..rules.poly import B_FEATURES, W_FEATURES
from .backends import BACKENDS, Backend, Job, make_backend
from .genome import GenomeSpec, parse_terms, random_genomes
from .population import EvalResult, Problem

TASKS: tuple[str, ...] = ("teacher", "digits", "mnist1d")
SELECTIONS: tuple[str, ...] = ("truncation", "tournament")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
CHECKPOINT = "checkpoint.pt"
FORMAT = "heterograd-evolve-1"
# Options that may change on --resume without changing any result.
_RESUME_FREE = ("generations", "backend", "workers", "ray_address", "device", "threads")


@dataclass
class EvolveConfig:
    """Everything that defines an evolution run (saved as ``config.json`` and in the checkpoint)."""

    task: str = "teacher"
    population: int = 128
    generations: int = 15
    steps: int = 300
    seed: int = 0
    hidden: tuple[int, ...] = (32,)
    activation: str = "tanh"
    lr: float = 0.05
    batch_size: int = 32
    w_terms: tuple[str, ...] = ("u·h", "p·h", "W")
    b_terms: tuple[str, ...] = ("h·u", "B")
    per_layer: bool = False
    init_sigma: float = 1.0
    selection: str = "truncation"
    select_frac: float = 0.25
    tournament_size: int = 3
    mutation_sigma: float = 0.1
    mutation_rate: float = 1.0
    elites: int = 2
    fitness_frac: float = 0.1
    dc_threshold: float = 0.9
    ref_weight_decay: float = 1e-4
    ref_circuits: int = 8
    probe_size: int = 256
    n_train: int | None = None
    dtype: str = "float32"
    backend: str = "batched"
    workers: int = 2
    ray_address: str | None = None
    device: str = "cpu"
    threads: int | None = 1
    block: int = 64

    def validate(self) -> EvolveConfig:
        """Check every field; raise `HeterogradError` naming the first problem and the fix."""
        if self.task not in TASKS:
            raise unknown_choice("task", self.task, TASKS)
        if self.selection not in SELECTIONS:
            raise unknown_choice("selection", self.selection, SELECTIONS)
        if self.backend not in BACKENDS:
            raise unknown_choice("backend", self.backend, BACKENDS)
        if self.dtype not in DTYPES:
            raise unknown_choice("dtype", self.dtype, DTYPES)
        from ..circuits import parse_hidden
        from ..runtime import resolve_device

        self.hidden = parse_hidden(self.hidden)
        self.w_terms = parse_terms(self.w_terms, W_FEATURES, "--w-terms")
        self.b_terms = parse_terms(self.b_terms, B_FEATURES, "--b-terms")
        checks: list[tuple[bool, str]] = [
            (self.population >= 2, f"--population must be >= 2, got {self.population}"),
            (self.generations >= 1, f"--generations must be >= 1, got {self.generations}"),
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}"),
            (self.init_sigma >= 0, f"--init-sigma must be >= 0, got {self.init_sigma}"),
            (0 < self.select_frac <= 1, f"--select-frac must be in (0, 1], got {self.select_frac}"),
            (self.tournament_size >= 1, f"--tournament-size must be >= 1, got {self.tournament_size}"),
            (self.mutation_sigma >= 0, f"--mutation-sigma must be >= 0, got {self.mutation_sigma}"),
            (0 <= self.mutation_rate <= 1, f"--mutation-rate must be in [0, 1], got {self.mutation_rate}"),
            (0 <= self.elites < self.population, f"--elites must be in [0, population), got {self.elites}"),
            (0 < self.fitness_frac <= 1, f"--fitness-frac must be in (0, 1], got {self.fitness_frac}"),
            (0 <= self.dc_threshold <= 1, f"--dc-threshold must be in [0, 1], got {self.dc_threshold}"),
            (self.ref_weight_decay >= 0, f"--ref-weight-decay must be >= 0, got {self.ref_weight_decay}"),
            (self.ref_circuits >= 1, f"--ref-circuits must be >= 1, got {self.ref_circuits}"),
            (self.probe_size >= 1, f"--probe-size must be >= 1, got {self.probe_size}"),
            (self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
            (self.block >= 1, f"--block must be >= 1, got {self.block}"),
            (self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise HeterogradError(msg)
        if "u·h" not in self.w_terms or "h·u" not in self.b_terms:
            raise HeterogradError("the genome needs the u·h (W) and h·u (B) terms; add them to --w-terms/--b-terms")
        self.device = resolve_device(self.device)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("hidden", "w_terms", "b_terms"):
            d[k] = list(d[k])
        return d


@dataclass
class EvolveResult:
    """Outcome of `evolve`: the per-generation rows, the summary and the final population ``(P, G)``."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    population: Tensor
    spec: GenomeSpec
    out_dir: Path | None


# ------------------------------------------------------------------------------------------- setup
def build_problem(cfg: EvolveConfig) -> Problem:
    """Load the task and describe one circuit's training (see `Problem`)."""
    from ..data import load_dataset

    ds = load_dataset(cfg.task, seed=cfg.seed, n_train=cfg.n_train, n_test=1 if cfg.task == "teacher" else None)
    loss = "ce" if ds.n_classes is not None else "mse"
    return Problem(
        x=ds.x_train,
        y=ds.y_train,
        sizes=(ds.input_dim, *cfg.hidden, ds.output_dim),
        activation=cfg.activation,
        loss=loss,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        steps=cfg.steps,
        fitness_frac=cfg.fitness_frac,
        probe_size=cfg.probe_size,
        dc_threshold=cfg.dc_threshold,
        seed=cfg.seed,
        dtype=DTYPES[cfg.dtype],
        block=cfg.block,
    )


def genome_spec(cfg: EvolveConfig) -> GenomeSpec:
    L = len(cfg.hidden) + 1
    return GenomeSpec(tuple(cfg.w_terms), tuple(cfg.b_terms), L, L - 1, cfg.per_layer)


def next_generation(population: Tensor, fitness: Tensor, cfg: EvolveConfig, generator: torch.Generator) -> Tensor:
    """Selection with elitism, then Gaussian mutation.

    Args:
        population: ``(P, G)`` genomes; fitness: ``(P,)`` (lower is better; NaN counts as ``+inf``).

    Returns:
        ``(P, G)``: the ``elites`` best unchanged, then ``P - elites`` mutated copies of selected parents.
    """
    P = population.shape[0]
    f = torch.nan_to_num(fitness.double(), nan=math.inf)
    order = torch.argsort(f, stable=True)
    n_child = P - cfg.elites
    if cfg.selection == "truncation":
        k = max(1, round(cfg.select_frac * P))
        parents = order[:k][torch.randint(0, k, (n_child,), generator=generator)]
    else:
        cand = torch.randint(0, P, (n_child, cfg.tournament_size), generator=generator)
        rank = torch.empty(P, dtype=torch.long)
        rank[order] = torch.arange(P)
        parents = cand.gather(1, rank[cand].argmin(1, keepdim=True)).squeeze(1)
    children = population[parents].clone()
    noise = torch.randn(children.shape, generator=generator, dtype=torch.float64) * cfg.mutation_sigma
    if cfg.mutation_rate < 1:
        noise = noise * (torch.rand(children.shape, generator=generator, dtype=torch.float64) < cfg.mutation_rate)
    return torch.cat([population[order[: cfg.elites]], children + noise])


def _median(t: Tensor) -> float:
    return float(torch.median(t.double())) if t.numel() else math.nan


def _nanmedian(t: Tensor) -> float:
    t = t[torch.isfinite(t)]
    return _median(t) if t.numel() else math.nan


def generation_row(
    gen: int, spec: GenomeSpec, population: Tensor, res: EvalResult, ref: EvalResult, seconds: float
) -> dict[str, Any]:
    """The ``generations.csv`` row of a generation (plain floats / ints / strings)."""
    f = res.fitness
    finite = f[torch.isfinite(f)]
    best = int(torch.argmin(torch.nan_to_num(f, nan=math.inf)))
    ref_loss = _median(ref.fitness)
    med = _median(f)
    top = spec.top_learning_coefficient(population)
    return {
        "generation": gen,
        "best_fitness": float(f[best]),
        "median_fitness": med,
        "worst_fitness": float(finite.max()) if finite.numel() else math.inf,
        "diverged_fraction": float(res.diverged.double().mean()),
        "top_descent_fraction": float((top > 0).double().mean()),
        "dc_fraction": float(res.dc.double().mean()),
        "median_dc_score": _nanmedian(res.dc_score),
        "median_phi": _nanmedian(res.phi),
        "median_align": _nanmedian(res.align),
        "reference_loss": ref_loss,
        "reference_dc_fraction": float(ref.dc.double().mean()),
        "reference_median_dc_score": _nanmedian(ref.dc_score),
        "median_over_reference": med / ref_loss if ref_loss > 0 else math.nan,
        "best_rule": spec.describe(population[best]),
        "best_genome": [float(v) for v in population[best]],
        "seconds": round(seconds, 3),
    }


CSV_COLUMNS = [
    "generation",
    "best_fitness",
    "median_fitness",
    "worst_fitness",
    "diverged_fraction",
    "top_descent_fraction",
    "dc_fraction",
    "median_dc_score",
    "median_phi",
    "median_align",
    "reference_loss",
    "reference_dc_fraction",
    "reference_median_dc_score",
    "median_over_reference",
    "best_rule",
    "seconds",
]


# ------------------------------------------------------------------------------------------- checkpoint
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temp sibling then ``os.replace`` (a kill leaves the previous checkpoint)."""
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` (``weights_only=True``)."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:
        raise HeterogradError(
            f"cannot read checkpoint {path} ({type(exc).__name__}); delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise HeterogradError(f"{path} is not a heterograd evolution checkpoint; choose another --out")
    return state


def _check_resume(saved: dict[str, Any], cfg: EvolveConfig) -> None:
    now = cfg.to_dict()
    for k, v in saved.items():
        if k in _RESUME_FREE:
            continue
        if now.get(k) != v:
            raise HeterogradError(
                f"--resume with {k}={now.get(k)!r} but the run in this folder used {k}={v!r}; "
                "pass the same options (only --generations, --backend, --workers, --ray-address may change)"
            )


# ------------------------------------------------------------------------------------------- loop
def evolve(
    cfg: EvolveConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = False,
    backend: Backend | None = None,
    on_generation: Callable[[dict[str, Any]], None] | None = None,
) -> EvolveResult:
    """Run (or, with ``resume``, continue) an evolution; write the run folder if ``out_dir`` is given.

    The folder gets ``config.json``, ``generations.csv``, ``checkpoint.pt`` (after every generation),
    ``summary.json``, ``best_rule.txt`` and ``evolution.png``. An interrupted run (Ctrl-C, a kill) keeps
    the checkpoint of its last complete generation; ``resume=True`` continues from it and gives the same
    result as an uninterrupted run.
    """
    from ..progress import Progress

    cfg = cfg.validate()
    out = prepare_out_dir(out_dir) if out_dir is not None else None
    ckpt = out / CHECKPOINT if out is not None else None
    spec = genome_spec(cfg)
    rng = torch.Generator().manual_seed(cfg.seed)
    start_gen, rows = 0, []
    if resume:
        if ckpt is None or not ckpt.exists():
            raise HeterogradError(f"--resume: no checkpoint in {out_dir}; run without --resume to start")
        state = load_checkpoint(ckpt)
        _check_resume(state["config"], cfg)
        population = state["population"]
        rng.set_state(state["rng_state"])
        start_gen, rows = int(state["generation"]), list(state["rows"])
    else:
        if ckpt is not None and ckpt.exists():
            raise HeterogradError(
                f"{out_dir} already holds an evolution run; pass --resume to continue it or choose another --out"
            )
        population = random_genomes(spec, cfg.population, cfg.init_sigma, rng)
    if out is not None:
        from ..runtime import environment

        write_json(out / "config.json", {**cfg.to_dict(), "genome": spec.names(), "environment": environment()})
    problem = build_problem(cfg)
    ref_genomes = spec.bilinear(cfg.ref_weight_decay).expand(cfg.ref_circuits, -1).contiguous()
    ref_tw, ref_tb = spec.expand(ref_genomes)
    own_backend = backend is None
    be = backend or make_backend(cfg.backend, workers=cfg.workers, ray_address=cfg.ray_address, device=cfg.device)
    start = time.perf_counter()
    bar = Progress(
        cfg.generations, f"evolve {cfg.task}", "gen", enabled=progress, initial=min(start_gen, cfg.generations),
        lines=20,
    )  # fmt: skip
    completed = start_gen
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        for gen in range(start_gen, cfg.generations):
            t0 = time.perf_counter()
            tw, tb = spec.expand(population)
            res, ref = be.run(
                problem,
                [
                    Job(tw, tb, tuple(range(cfg.population)), gen),
                    Job(ref_tw, ref_tb, tuple(range(cfg.ref_circuits)), gen),
                ],
            )
            row = generation_row(gen, spec, population, res, ref, time.perf_counter() - t0)
            rows.append(row)
            evaluated = population
            population = next_generation(population, res.fitness, cfg, rng)
            completed = gen + 1
            if out is not None and ckpt is not None:
                save_checkpoint(
                    ckpt,
                    {
                        "format": FORMAT,
                        "config": cfg.to_dict(),
                        "generation": completed,
                        "population": population,
                        "evaluated": evaluated,
                        "fitness": res.fitness,
                        "rng_state": rng.get_state(),
                        "rows": rows,
                    },
                )
                write_csv(out / "generations.csv", rows, CSV_COLUMNS)
            bar.update(1, median=f"{row['median_fitness']:.3g}", ref=f"{row['reference_loss']:.3g}",
                       dc=f"{row['dc_fraction']:.2f}")  # fmt: skip
            bar.phase(completed, cfg.generations, f"generation {completed}/{cfg.generations}  best "
                      f"{row['best_fitness']:.4g}  median {row['median_fitness']:.4g}  bilinear "
                      f"{row['reference_loss']:.4g}  DC fraction {row['dc_fraction']:.2f}")  # fmt: skip
            if on_generation is not None:
                on_generation(row)
    except KeyboardInterrupt:
        if out is not None:
            print(
                f"interrupted after {completed} complete generation(s); continue with --resume --out {out}",
                file=sys.stderr,
            )
        raise
    finally:
        torch.set_num_threads(old_threads)
        bar.close()
        if own_backend:
            be.close()
    summary = summarise(cfg, spec, rows, time.perf_counter() - start, resumed_from=start_gen if resume else None)
    if out is not None:
        write_csv(out / "generations.csv", rows, CSV_COLUMNS)
        write_json(out / "summary.json", summary)
        (out / "best_rule.txt").write_text(summary["best_rule"] + "\n", encoding="utf-8")
        from .plots import plot_evolution

        title = f"evolution on {cfg.task} (P={cfg.population}, seed {cfg.seed})"
        plot_evolution(rows, out / "evolution.png", title=title)
    return EvolveResult(rows, summary, population, spec, out)


def _first(rows: list[dict[str, Any]], pred: Callable[[dict[str, Any]], bool]) -> int | None:
    for r in rows:
        if pred(r):
            return int(r["generation"])
    return None


def summarise(
    cfg: EvolveConfig, spec: GenomeSpec, rows: list[dict[str, Any]], wall: float, resumed_from: int | None = None
) -> dict[str, Any]:
    """``summary.json``: final numbers, when the emergence happened, the best rule of the last generation."""
    last = rows[-1] if rows else {}
    return {
        "task": cfg.task,
        "population": cfg.population,
        "generations": len(rows),
        "seed": cfg.seed,
        "backend": cfg.backend,
        "final": {k: last.get(k) for k in CSV_COLUMNS if k not in ("best_rule",)},
        "best_rule": last.get("best_rule", ""),
        "best_genome": dict(zip(spec.names(), last.get("best_genome", []), strict=False)),
        "min_median_over_reference": min((r["median_over_reference"] for r in rows), default=math.nan),
        "max_dc_fraction": max((r["dc_fraction"] for r in rows), default=math.nan),
        "first_generation_median_within_1.5x_reference": _first(rows, lambda r: r["median_over_reference"] <= 1.5),
        "first_generation_all_descent": _first(rows, lambda r: r["top_descent_fraction"] >= 1.0),
        "first_generation_dc_fraction_0.7": _first(rows, lambda r: r["dc_fraction"] >= 0.7),
        "wall_seconds": round(wall, 3),
        "resumed_from_generation": resumed_from,
        "definitions": {
            "fitness": f"mean minibatch loss over the last {cfg.fitness_frac:.0%} of {cfg.steps} steps, inf if NaN",
            "top_descent_fraction": "fraction of genomes whose top-layer θ_W coefficient of u·h is > 0",
            "dc_fraction": (
                f"fraction of circuits whose DC score over effective per-neuron φ (sign(θ_W[u·h]) × measured "
                f"<u,g>/<g,g>, all layers) is >= {cfg.dc_threshold}"
            ),
            "reference_loss": (
                f"median fitness of {cfg.ref_circuits} circuits trained with the bilinear rule "
                f"(λ = {cfg.ref_weight_decay}, c = 1) on the same data"
            ),
        },
    }
