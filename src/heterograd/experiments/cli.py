"""``heterograd repro NAME|all --out DIR [--quick] [--seed S]``; ``heterograd repro report --out DIR``;
``heterograd repro docs [--check] [--root DIR]`` (the generated blocks of the docs, `.docgen`).

Exit codes (so CI and scripts notice): 0 every claim run holds; 1 at least one claim does not hold;
3 at least one experiment crashed (takes precedence over 1); 2 a usage error (bad name or option).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import HeterogradError
from . import EXPERIMENT_NAMES

EXIT_HOLDS = 0
EXIT_DOES_NOT_HOLD = 1
EXIT_CRASHED = 3


def exit_code(summaries: list[dict]) -> int:
    """The ``repro`` exit code for these summaries: 3 if any crashed, else 1 if any does not hold, else 0."""
    if any("error" in s for s in summaries):
        return EXIT_CRASHED
    if not all(s["holds"] for s in summaries):
        return EXIT_DOES_NOT_HOLD
    return EXIT_HOLDS


def _docs(root: Path, *, check: bool, quick: bool, seed: int) -> None:
    """``heterograd repro docs``: rewrite (or ``check``) the generated blocks under ``root``."""
    from .docgen import generate_docs

    if quick or seed != 0:
        raise HeterogradError("--quick and --seed do not apply to `repro docs` (it runs nothing); drop them")
    results = generate_docs(root, check=check)
    stale = [r for r in results if not r.current]
    for r in results:
        state = "current" if r.current else ("STALE" if check else "rewritten")
        typer.echo(f"{state:9s} {r.file.relative_to(root) if r.file.is_relative_to(root) else r.file}:{r.line} {r.key}")
    typer.echo(f"{len(results)} generated block(s), {len(stale)} {'stale' if check else 'rewritten'}")
    if check and stale:
        typer.echo("some docs disagree with their committed JSON: run `heterograd repro docs` and commit", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``repro`` command to the main app."""

    @app.command()
    def repro(
        name: Annotated[
            str,
            typer.Argument(
                help=f"experiment: {', '.join(EXPERIMENT_NAMES)}; or 'all', 'report' (rebuild OUT/report.md from "
                "OUT/*/summary.json) or 'docs' (rewrite the generated blocks of README.md and docs/*.md from the "
                "committed JSON)"
            ),
        ],
        out: Annotated[Path, typer.Option(help="results folder; each experiment writes out/NAME/")] = Path(
            "results/repro"
        ),
        quick: Annotated[bool, typer.Option(help="CI-sized run (each experiment under ~60 s on 2 cores)")] = False,
        seed: Annotated[int, typer.Option(help="base seed")] = 0,
        progress: Annotated[
            bool, typer.Option(help="progress bars on a terminal (a log gets two lines per experiment)")
        ] = True,
        check: Annotated[
            bool,
            typer.Option(
                "--check", help="with 'docs': rewrite nothing, exit 1 if a generated block differs from its JSON"
            ),
        ] = False,
        root: Annotated[
            Path | None, typer.Option(help="with 'docs': the repository root holding README.md and docs/ [default: .]")
        ] = None,
    ) -> None:
        """Reproduce a claim of the theory (docs/theory.md) as a figure, the measured numbers and a verdict.

        Exit code: 0 every claim holds; 1 a claim does not hold; 3 an experiment crashed (wins over 1);
        2 usage error. `repro all` always runs every experiment and writes report.md first.
        """
        from ..progress import is_terminal
        from . import load_all
        from .base import run_experiment
        from .report import write_report

        # the training runs inside an experiment show bars on a terminal only: in a log, the two lines
        # per experiment below are its progress
        progress = progress and is_terminal(sys.stderr)
        if name == "docs":
            _docs(root or Path("."), check=check, quick=quick, seed=seed)
            return
        if check or root is not None:
            raise HeterogradError(f"--check and --root apply only to `heterograd repro docs`, not {name!r}; drop them")
        if name == "report":  # no experiment runs: the report of what earlier `repro NAME` runs left in --out
            from .report import collect_summaries

            summaries = collect_summaries(out, list(load_all()))
            typer.echo(f"report: {write_report(summaries, out, quick=False, assembled=True)}")
            for s in summaries:
                verdict = "HOLDS" if s["holds"] else ("ERROR" if "error" in s else "DOES NOT HOLD")
                typer.echo(f"{s['name']:14s} {verdict:14s} {s['claim']}")
            code = exit_code(summaries)
            if code:
                raise typer.Exit(code)
            return
        known = load_all()
        if name != "all" and name not in known:  # before anything is printed or written
            from ..errors import unknown_choice

            raise unknown_choice("experiment", name, [*known, "all", "report", "docs"])
        names = list(known) if name == "all" else [name]
        summaries = []
        for n in names:
            typer.echo(f"[repro] {n} ...", err=True)
            s = run_experiment(n, out, quick=quick, seed=seed, progress=progress)
            summaries.append(s)
            verdict = "HOLDS" if s["holds"] else ("ERROR" if "error" in s else "DOES NOT HOLD")
            typer.echo(f"{n:14s} {verdict:14s} {s['seconds']:7.1f}s  {s['claim']}")
            if "error" in s:
                typer.echo(f"    error: {s['error']}")
        if name == "all":
            path = write_report(summaries, out, quick=quick)
            typer.echo(f"report: {path}")
        code = exit_code(summaries)
        if code:
            typer.echo(
                "some experiment crashed (exit 3)" if code == EXIT_CRASHED else "some claim does not hold (exit 1)",
                err=True,
            )
            raise typer.Exit(code)
