"""``heterograd tune``: a hyperparameter study on Optuna over any ``train`` configuration (docs/tune.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

#: ``train`` options that make no sense for a study (what to say instead).
_NOT_FOR_TUNE = {
    "resume": "a study continues by running the same tune command again",
    "overwrite": "a study continues in its folder; pass another --out for a new one",
    "tensorboard": "trials write no run folder; see DIR/trials.csv and the figures",
    "checkpoint_every": "trials write no run folder; a finished trial is kept in the study's storage",
    "distributed": "share one study between workers with --storage instead",
    "sync_batchnorm": "it needs --distributed, which tune does not run; share a study with --storage instead",
    "n_test": "the study never reads the test set (its objective is the validation split)",
}


def register(app: typer.Typer) -> None:
    """Add the ``tune`` command to the main app."""

    @app.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def tune(
        ctx: typer.Context,
        out: Annotated[
            Path | None, typer.Option(help="the study's folder (default runs/tune-<model or circuit>-<data>-<rule>)")
        ] = None,
        n_trials: Annotated[
            int, typer.Option(help="trials this call runs (a rerun adds as many again; 0: only rewrite the files)")
        ] = 20,
        timeout: Annotated[float | None, typer.Option(help="start no new trial after this many seconds")] = None,
        space: Annotated[
            Path | None,
            typer.Option(
                help="search space file (TOML/YAML/JSON): name = {low, high, log} | {choices} | value; default: per "
                "optimiser (lr log-uniform, momentum, weight decay, c for hsp under sgd/momentum)"
            ),
        ] = None,
        pruning: Annotated[
            bool, typer.Option(help="median pruning on the per-epoch validation error (--no-pruning: off)")
        ] = True,
        val_size: Annotated[
            int | None, typer.Option(help="validation examples carved from the training set (default: a sixth)")
        ] = None,
        storage: Annotated[
            str | None,
            typer.Option(
                help="Optuna storage shared by several workers: an RDB URL (sqlite:///f.db, postgresql://...) or "
                "journal:PATH  [default: sqlite:///OUT/study.db]"
            ),
        ] = None,
        study_name: Annotated[str | None, typer.Option(help="the study's name in the storage")] = None,
        sampler_seed: Annotated[
            int | None, typer.Option(help="seed of the TPE sampler (default --seed); one per worker of a shared study")
        ] = None,
        startup_trials: Annotated[
            int, typer.Option(help="random trials before TPE (and the pruner) use the results")
        ] = 5,
        progress: Annotated[
            bool, typer.Option(help="a progress bar on a terminal, a line per trial in a log (at most 10)")
        ] = True,
    ) -> None:
        """Tune a training configuration on Optuna: TPE (seeded), median pruning, the error on a validation
        split of the training set as the objective (the test set is never read).

        Takes every `heterograd train` option (--rule, --model, --data, --epochs per trial, --optimizer,
        --config, ...): options given fix their value, the search space varies the rest. Writes DIR/trials.csv,
        DIR/best.json (`heterograd train --config DIR/best.json` trains the best configuration on the whole
        training set), history.png, params.png, summary.json. The study is kept in DIR/study.db: running the same
        command again continues it; Ctrl-C keeps every finished trial.
        """
        from ..cli import _explicit_overrides, train_config
        from ..errors import HeterogradError
        from .space import OPTIMIZER_OPTIONS, default_space, load_space
        from .study import StudyOptions, default_study_name, run_study

        command = ctx.find_root().command.commands["train"]  # type: ignore[attr-defined]
        try:
            tctx = command.make_context("tune", list(ctx.args), parent=ctx.parent)
        except typer.Exit:
            return
        given = [
            name for name in _NOT_FOR_TUNE if (src := tctx.get_parameter_source(name)) and src.name == "COMMANDLINE"
        ]
        if given:
            name = given[0]
            raise HeterogradError(f"--{name.replace('_', '-')} does not apply to tune: {_NOT_FOR_TUNE[name]}; drop it")
        if tctx.params.get("out") is not None:  # never: --out is tune's own option
            raise HeterogradError("--out given twice; pass it once")
        base = train_config(tctx)
        explicit = set(_explicit_overrides(tctx, base))
        if "optimizer_options" in explicit:
            explicit |= {k for k, v in OPTIMIZER_OPTIONS.items() if v in base.optimizer_options}
        if tctx.params.get("config") is not None:  # the file's values are given too
            from ..config import load_config_file

            file_keys = set(load_config_file(Path(tctx.params["config"])))
            explicit |= file_keys
            if "optimizer_options" in file_keys:
                explicit |= {k for k, v in OPTIMIZER_OPTIONS.items() if v in base.optimizer_options}
        base.validate()
        if space is None:
            search = default_space(base, fixed=frozenset(explicit))
        else:
            search = load_space(space, base)
            both = sorted(set(search.names()) & explicit)
            if both:
                flags = ", ".join("--" + n.replace("_", "-") for n in both)
                raise HeterogradError(
                    f"{flags} fixed on the command line but searched by --space {space}; drop one of them"
                )
        out_dir = out or Path("runs") / f"tune-{default_study_name(base)}"
        options = StudyOptions(
            n_trials=n_trials,
            timeout=timeout,
            pruning=pruning,
            val_size=val_size,
            storage=storage,
            study_name=study_name,
            sampler_seed=sampler_seed,
            startup_trials=startup_trials,
        )
        try:
            result = run_study(base, search, options, out_dir, progress=progress)
        except KeyboardInterrupt:
            typer.echo(
                f"interrupted; every finished trial is kept in the study (files in {out_dir}); run the same command "
                "again to continue",
                err=True,
            )
            sys.exit(130)
        typer.echo(result.summary["summary_line"])
        if result.best_config is not None:
            typer.echo(f"best config: {out_dir / 'best.json'} (heterograd train --config {out_dir / 'best.json'})")
        typer.echo(f"trials, figures and summary in {out_dir}")
