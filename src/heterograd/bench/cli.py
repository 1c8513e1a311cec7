"""``heterograd bench``: time the training step next to autograd baselines (see `heterograd.bench.runner`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def bench(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML, YAML or JSON file with BenchConfig keys (as in bench.json's config); options given on "
            "the command line override it"
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for <stem>.json and <stem>.md")] = Path("results/bench"),
    stem: Annotated[str, typer.Option(help="file name stem of the results, e.g. bench-convnets")] = "bench",
    quick: Annotated[bool, typer.Option("--quick", help="tiny smoke test (a few seconds)")] = False,
    sizes: Annotated[
        str | None, typer.Option(help="widths@batch list, default '784,1024,1024,10@128;64,128,128,10@32'")
    ] = None,
    impls: Annotated[
        str | None,
        typer.Option(
            help="comma list; MLP: bp-autograd,fa-autograd,hsp,fa,poly,hsp-sparse; with --models: "
            "bp-autograd,bp,hsp,kp,fa,usf (default) and dfa,brsf,frsf,hsp-fused,bp-autograd-fused (optimiser "
            "step inside the backward sweep)"
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            help="time one training step (SGD with momentum, cross-entropy) of these models instead of the MLP, "
            "e.g. lenet5,resnet20: autograd backprop (bp-autograd) against the same model converted by each rule"
        ),
    ] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="one input's shape for --models, default 1,28,28 (Fashion-MNIST)")
    ] = None,
    batch: Annotated[int | None, typer.Option(help="batch size for --models (default 128; quick: 8)")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum for --models (default 0.9)")] = None,
    dtypes: Annotated[
        str | None, typer.Option(help="compute dtypes, first = main (default float32,bfloat16; quick: float32)")
    ] = None,
    compile_step: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="also time hsp and bp-autograd (with --models: bp-autograd, kp, hsp) under torch.compile "
            "(slow to start)",
        ),
    ] = False,
    autocast: Annotated[
        bool,
        typer.Option("--autocast", help="with --models: also time bp-autograd, kp, hsp under bfloat16 torch.autocast"),
    ] = False,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N | auto")] = "cpu",
    repeats: Annotated[int | None, typer.Option(help="round-robin rounds (median over them); default 21")] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(help="λ of every side (default 1e-4, heterograd train's default; the rules' own decay)"),
    ] = None,
    max_seconds: Annotated[float, typer.Option(help="time budget of the timed rounds (at least 3 rounds run)")] = 120.0,
    threads: Annotated[int | None, typer.Option(help="torch.set_num_threads for the run")] = None,
    memory: Annotated[bool, typer.Option(help="measure peak step memory")] = True,
    case: Annotated[
        str | None,
        typer.Option(
            help="cli-epoch: one epoch of the `heterograd train` loop (784-1024-1024-10 hsp, batch 128, "
            "Fashion-MNIST, no probes) against a hand-written autograd loop, --repeats interleaved rounds "
            "(default 5; --quick: digits)"
        ),
    ] = None,
) -> None:
    """Time training steps of hsp/fa/poly against autograd backprop and autograd feedback alignment.

    With --models (e.g. lenet5,resnet20): one training step of each model under autograd backprop and
    converted by bp, hsp, kp, fa, usf (same weights, optimiser and loss), interleaved, with paired ratios.
    """
    from ..errors import HeterogradError
    from .runner import IMPLS, MODEL_IMPLS, BenchConfig, markdown, parse_sizes_arg, run_benchmark, write_results

    if case is not None:
        _cli_epoch(ctx, case, out, stem, quick, repeats, threads, weight_decay)
        return

    kw: dict[str, Any] = {"device": device, "compile": compile_step, "threads": threads, "memory": memory}
    if autocast:
        kw["autocast"] = True
    kw["max_seconds"] = max_seconds
    if sizes is not None:
        kw["sizes"] = parse_sizes_arg(sizes)
    if impls is not None:
        kw["impls"] = tuple(s.strip() for s in impls.split(",") if s.strip()) or (MODEL_IMPLS if models else IMPLS)
    model_only = {"input_shape": input_shape, "batch": batch, "momentum": momentum}
    if models is None and any(v is not None for v in model_only.values()):
        given = [k.replace("_", "-") for k, v in model_only.items() if v is not None]
        raise HeterogradError(f"--{', --'.join(given)} apply only to --models; add e.g. --models lenet5 or drop them")
    if input_shape is not None:
        try:
            kw["input_shape"] = tuple(int(v) for v in input_shape.split(","))
        except ValueError:
            raise HeterogradError(f"--input-shape {input_shape!r}: write e.g. 1,28,28") from None
    if batch is not None:
        kw["batch"] = batch
    if momentum is not None:
        kw["momentum"] = momentum
    if dtypes is not None:
        kw["dtypes"] = tuple(s.strip() for s in dtypes.split(",") if s.strip())
    if repeats is not None:
        kw["repeats"] = repeats
    if weight_decay is not None:
        kw["weight_decay"] = weight_decay
    if config is not None:
        kw = {**_read_config(config), **{k: v for k, v in kw.items() if _given(ctx, _OPTION.get(k, k))}}
    if models is None and kw.get("models"):  # from the config file
        models = ",".join(kw.pop("models"))
    if models is not None:
        names = tuple(s.strip() for s in models.split(",") if s.strip())
        if not names:
            raise HeterogradError("--models is empty; e.g. --models lenet5,resnet20")
        cfg = BenchConfig.for_models(names, quick=quick, **kw)
    else:
        cfg = BenchConfig.quick(**kw) if quick else BenchConfig(**kw)
    result = run_benchmark(cfg, progress=lambda msg: typer.echo(msg, err=True))
    jp, mp = write_results(result, out, stem)
    typer.echo(markdown(result))
    typer.echo(f"written {jp} and {mp} ({result['wall_seconds']} s)")


def _cli_epoch(
    ctx: typer.Context,
    case: str,
    out: Path,
    stem: str,
    quick: bool,
    repeats: int | None,
    threads: int | None,
    weight_decay: float | None,
) -> None:
    """``bench --case cli-epoch``: see `heterograd.bench.epoch`."""
    from ..errors import HeterogradError
    from ..results import write_json
    from .epoch import EpochBenchConfig, epoch_markdown, run_cli_epoch

    if case != "cli-epoch":
        raise HeterogradError(f"unknown --case {case!r}; valid choices: cli-epoch")
    allowed = {"case", "out", "stem", "quick", "repeats", "threads", "weight_decay"}
    extra = [p.name for p in ctx.command.params if p.name not in allowed and p.name and _given(ctx, p.name)]
    if extra:
        names = ", ".join("--" + n.replace("_", "-") for n in extra)
        raise HeterogradError(
            f"{names} do not apply to --case cli-epoch (it takes --repeats, --threads, --weight-decay, --quick)"
        )
    kw: dict[str, Any] = {"threads": threads if threads is not None else 1}
    if repeats is not None:
        kw["rounds"] = repeats
    if weight_decay is not None:
        kw["weight_decay"] = weight_decay
    cfg = EpochBenchConfig.quick(**kw) if quick else EpochBenchConfig(**kw)
    result = run_cli_epoch(cfg, progress=lambda msg: typer.echo(msg, err=True))
    stem = stem if _given(ctx, "stem") else "cli-epoch"
    out.mkdir(parents=True, exist_ok=True)
    jp, mp = out / f"{stem}.json", out / f"{stem}.md"
    write_json(jp, result)
    mp.write_text(epoch_markdown(result), encoding="utf-8")
    typer.echo(epoch_markdown(result))
    typer.echo(f"written {jp} and {mp} ({result['wall_seconds']} s)")


_OPTION = {"compile": "compile_step"}  # BenchConfig field -> option name, where they differ


def _given(ctx: typer.Context, option: str) -> bool:
    """Whether ``option`` was given on the command line (not left at its default)."""
    src = ctx.get_parameter_source(option)
    return src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")


def _read_config(path: Path) -> dict[str, Any]:
    """BenchConfig fields from a config file; strings in the command-line formats are accepted for the lists."""
    from ..config import load_config_file
    from .runner import BenchConfig, parse_sizes_arg

    values = load_config_file(path, BenchConfig, frozenset({"notes"}))
    if isinstance(values.get("sizes"), str):
        values["sizes"] = parse_sizes_arg(values["sizes"])
    if isinstance(values.get("input_shape"), str):
        values["input_shape"] = tuple(int(v) for v in values["input_shape"].split(","))
    for key in ("impls", "dtypes", "models"):
        if isinstance(values.get(key), str):
            values[key] = tuple(s.strip() for s in values[key].split(",") if s.strip())
    return values


def doctor(
    device: Annotated[str, typer.Option(help="auto (CUDA when present) | cpu | cuda | cuda:N")] = "auto",
    quick: Annotated[
        bool, typer.Option("--quick", help="CI mode: seconds per check; torch.compile and the 2-process run skipped")
    ] = False,
    compile_step: Annotated[
        bool, typer.Option("--compile/--no-compile", help="time the converted models under torch.compile too")
    ] = True,
    seed: Annotated[int, typer.Option(help="seed of every model, batch and run")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(
            help="folder for doctor-<device>.json/.md and the bench files (e.g. docs/benchmarks); <device> is "
            "'cpu' or the GPU's name"
        ),
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the report as JSON here")] = None,
    markdown_path: Annotated[
        Path | None, typer.Option("--markdown", help="also write the report as a markdown table here")
    ] = None,
) -> None:
    """Check every accelerator path (placement, bp = autograd, learning, benches, DDP) and print pass/fail.

    On a machine without a GPU the checks run on the CPU and the CUDA-only parts are listed as skipped with the
    reason. Exit status 1 when a check failed.
    """
    from .doctor import DoctorConfig, check_out_paths, device_slug, failed, run_doctor, table, write_report

    check_out_paths(json_path, markdown_path)
    if out is not None and out.exists() and not out.is_dir():
        from ..errors import HeterogradError

        raise HeterogradError(f"--out {out} is a file; pass a folder, e.g. docs/benchmarks")
    report = run_doctor(
        DoctorConfig(device=device, quick=quick, compile=compile_step, seed=seed),
        out,
        progress=lambda msg: typer.echo(msg, err=True),
    )
    if out is not None:
        import torch

        stem = f"doctor-{device_slug(torch.device(report['environment']['device']))}"
        write_report(report, out / f"{stem}.json", out / f"{stem}.md")
    write_report(report, json_path, markdown_path)
    typer.echo(table(report))
    bad = failed(report)
    if bad:
        typer.echo(f"{len(bad)} check(s) failed: {', '.join(bad)}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``bench`` and ``doctor`` commands to the ``heterograd`` app."""
    app.command(name="bench")(bench)
    app.command(name="doctor")(doctor)
