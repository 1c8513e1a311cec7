"""``heterograd evolve``: evolve plasticity-rule genomes (docs/theory.md section 7), batched or on Ray."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated, Any

import typer


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


#: keys an evolution's config.json records that do not configure a run (ignored in a --config file)
RECORDED_ONLY = frozenset({"genome", "environment"})
#: command-line options that are not fields of EvolveConfig
_NOT_CONFIG = frozenset({"ctx", "config", "out", "resume", "progress"})


def _from_config_file(ctx: typer.Context, path: Path, cli_cfg: Any) -> Any:
    """The file's `EvolveConfig` with the options given on the command line on top."""
    from ..config import load_config_file
    from .run import EvolveConfig

    values = load_config_file(path, EvolveConfig, RECORDED_ONLY)
    given = {
        name: getattr(cli_cfg, name)
        for name in ctx.params
        if name not in _NOT_CONFIG
        and (src := ctx.get_parameter_source(name)) is not None
        and src.name not in ("DEFAULT", "DEFAULT_MAP")
    }
    return dataclasses.replace(EvolveConfig(**values), **given)


def register(app: typer.Typer) -> None:
    """Add the ``evolve`` command to the main app."""

    @app.command()
    def evolve(
        ctx: typer.Context,
        config: Annotated[
            Path | None,
            typer.Option(
                help="TOML, YAML or JSON file with the keys of an evolution's config.json; command-line options "
                "override it"
            ),
        ] = None,
        task: Annotated[str, typer.Option(help="teacher | digits | mnist1d")] = "teacher",
        population: Annotated[int, typer.Option(help="circuits (genomes) per generation P")] = 128,
        generations: Annotated[int, typer.Option(help="generations G (with --resume: the new total)")] = 15,
        steps: Annotated[int, typer.Option(help="training steps T per circuit")] = 300,
        seed: Annotated[int, typer.Option(help="seed of genomes, inits, minibatches and selection")] = 0,
        out: Annotated[Path, typer.Option(help="results folder")] = Path("runs/evolve"),
        resume: Annotated[bool, typer.Option(help="continue the run in --out from its last generation")] = False,
        backend: Annotated[str, typer.Option(help="batched (one process) | ray (shards on Ray tasks)")] = "batched",
        workers: Annotated[int, typer.Option(help="ray: shards per generation and CPUs of a local Ray")] = 2,
        ray_address: Annotated[str | None, typer.Option(help="ray: cluster address (default: local Ray)")] = None,
        hidden: Annotated[str, typer.Option(help="hidden widths of every circuit, e.g. 32 or 64,64")] = "32",
        activation: Annotated[str, typer.Option(help="tanh | relu | sigmoid | identity")] = "tanh",
        lr: Annotated[float, typer.Option(help="learning rate η (the genome's coefficients multiply it)")] = 0.05,
        batch_size: Annotated[int, typer.Option(help="minibatch size")] = 32,
        w_terms: Annotated[str, typer.Option(help="active θ_W terms: u·h,p·h,u,h,u²·h,u·h²,W,1")] = "u·h,p·h,W",
        b_terms: Annotated[str, typer.Option(help="active θ_B terms: h·u,p·u,h,u,h²·u,h·u²,B,1")] = "h·u,B",
        per_layer: Annotated[bool, typer.Option(help="one coefficient row per layer / feedback edge")] = False,
        init_sigma: Annotated[float, typer.Option(help="initial genomes ~ N(0, σ²)")] = 1.0,
        selection: Annotated[str, typer.Option(help="truncation | tournament")] = "truncation",
        select_frac: Annotated[float, typer.Option(help="truncation: parents come from this best fraction")] = 0.25,
        tournament_size: Annotated[int, typer.Option(help="tournament: contestants per parent")] = 3,
        mutation_sigma: Annotated[float, typer.Option(help="Gaussian mutation std per gene")] = 0.1,
        mutation_rate: Annotated[float, typer.Option(help="probability that a gene mutates")] = 1.0,
        elites: Annotated[int, typer.Option(help="best genomes copied unchanged")] = 2,
        fitness_frac: Annotated[float, typer.Option(help="fitness = mean loss over this last fraction of steps")] = 0.1,
        dc_threshold: Annotated[float, typer.Option(help="DC score at which a circuit counts as DC")] = 0.9,
        ref_weight_decay: Annotated[float, typer.Option(help="λ of the bilinear reference rule")] = 1e-4,
        ref_circuits: Annotated[int, typer.Option(help="circuits trained with the bilinear reference")] = 8,
        n_train: Annotated[int | None, typer.Option(help="use only the first N training samples")] = None,
        dtype: Annotated[str, typer.Option(help="float32 | float64")] = "float32",
        device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N | auto (batched back end)")] = "cpu",
        block: Annotated[int, typer.Option(help="circuits per batched computation (also the Ray shard unit)")] = 64,
        threads: Annotated[int, typer.Option(help="torch threads; 0 keeps torch's default (more cores: use ray)")] = 1,
        progress: Annotated[
            bool, typer.Option(help="a progress bar on a terminal, a line per generation in a log (at most 20)")
        ] = True,
    ) -> None:
        """Evolve plasticity rules: select polynomial rule genomes on final loss, track the emergence of DC."""
        from .run import EvolveConfig
        from .run import evolve as run_evolution

        cfg = EvolveConfig(
            task=task,
            population=population,
            generations=generations,
            steps=steps,
            seed=seed,
            hidden=hidden,  # type: ignore[arg-type]
            activation=activation,
            lr=lr,
            batch_size=batch_size,
            w_terms=w_terms,  # type: ignore[arg-type]
            b_terms=b_terms,  # type: ignore[arg-type]
            per_layer=per_layer,
            init_sigma=init_sigma,
            selection=selection,
            select_frac=select_frac,
            tournament_size=tournament_size,
            mutation_sigma=mutation_sigma,
            mutation_rate=mutation_rate,
            elites=elites,
            fitness_frac=fitness_frac,
            dc_threshold=dc_threshold,
            ref_weight_decay=ref_weight_decay,
            ref_circuits=ref_circuits,
            n_train=n_train,
            dtype=dtype,
            backend=backend,
            workers=workers,
            ray_address=ray_address,
            device=device,
            threads=threads or None,
            block=block,
        )
        if config is not None:
            cfg = _from_config_file(ctx, config, cfg)
        res = run_evolution(cfg, out, resume=resume, progress=progress)
        cols = ["generation", "best_fitness", "median_fitness", "reference_loss", "top_descent_fraction", "dc_fraction"]
        widths = [max(12, len(c)) for c in cols]
        typer.echo("  ".join(f"{c:>{w}s}" for c, w in zip(cols, widths, strict=True)))
        for r in res.rows:
            typer.echo("  ".join(f"{_fmt(r[c]):>{w}s}" for c, w in zip(cols, widths, strict=True)))
        s = res.summary
        typer.echo(f"best rule: {s['best_rule']}")
        typer.echo(f"results written to {out} ({s['wall_seconds']:.1f} s)")
