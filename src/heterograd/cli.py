"""``heterograd`` command line (Typer), thin over the library.

User errors print one line ``error: ...`` naming the problem and the fix and
exit with code 2; a diverging run is a result (exit 0, ``diverged: true``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import HeterogradError


def _hide_flag_types() -> None:
    """Show no type next to on/off flags in ``--help``: typer 0.29 prints ``--augment <bool>``, which reads as if the
    flag took a value."""
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "heterograd_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else original(self, ctx)

    display_type_rich.heterograd_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()

app = typer.Typer(
    name="heterograd",
    help="Heterosynaptic circuits: learning by local two-signal plasticity, measured against backprop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from ._version import __version__

        typer.echo(f"heterograd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    pass


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise HeterogradError(f"{what} must be comma-separated numbers, got {text!r}") from None


def results_table(summaries: list[dict[str, Any]], title: str = "") -> str:
    """Plain-text comparison table: rule, test accuracy/loss, per-layer phi and align, DC, seconds."""
    header = ["rule", "test acc", "test loss", "phi (per layer)", "align (per layer)", "DC", "seconds"]
    lines = []
    for s in summaries:
        acc = s.get("test_accuracy")
        lines.append(
            [
                str(s.get("label", s.get("rule")))
                + (" (diverged)" if s.get("diverged") else " (no learning)" if s.get("no_learning") else ""),
                _fmt(acc) if acc is not None else "-",
                _fmt(s.get("test_loss")),
                " ".join(_fmt(v, 2) for v in s.get("phi", [])) or "-",
                " ".join(_fmt(v, 2) for v in s.get("align", [])) or "-",
                _fmt(s.get("dc_score"), 2),
                _fmt(s.get("wall_seconds"), 1),
            ]
        )
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    out = [title] if title else []
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines]
    return "\n".join(out)


@app.command()
def train(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML, YAML or JSON file with the keys of a run's config.json (any run's config.json works); "
            "options given on the command line override it"
        ),
    ] = None,
    data: Annotated[
        str,
        typer.Option(
            help="digits | mnist1d | teacher | fashion-mnist | idx:<dir> | cifar10:<dir> | imagefolder:<dir>[@SIZE] "
            "| sorting | text:<file or folder> | pystdlib[:MB] (text: for --model gpt)"
        ),
    ] = "digits",
    model: Annotated[
        str | None,
        typer.Option(
            help="train a converted nn.Module instead of a circuit: lenet5 | resnet20 | resnet56 | mlp | transformer "
            "| gpt | FILE.py:FACTORY (imports and runs FILE.py; FACTORY(in_shape, num_classes, **model_options))"
        ),
    ] = None,
    model_options: Annotated[
        str | None, typer.Option(help="--model's own options, e.g. activation=tanh,pooling=avg or shortcut=B")
    ] = None,
    schedule: Annotated[str, typer.Option(help="learning-rate schedule of --model: constant | cosine")] = "constant",
    augment: Annotated[
        bool,
        typer.Option(
            "--augment",
            help="--model on images: random crop (zero padding 4 at 32x32, else 2) + horizontal flip, seeded "
            "(imagefolder: random resized crop + flip)",
        ),
    ] = False,
    norm_feedback: Annotated[
        str,
        typer.Option(
            help="--model: feedback through norm layers: exact (through the batch statistics, as backprop) "
            "| local (γ/σ per channel, statistics held fixed)"
        ),
    ] = "exact",
    rule: Annotated[
        str,
        typer.Option(
            help="bp | fa | dfa | hsp (feedback gain c = 0.5 unless --feedback-gain) | kp (hsp at c = 1) | poly "
            "| freeze (circuits only: hsp with W_1 frozen); with --model also usf | brsf | frsf"
        ),
    ] = "hsp",
    epochs: Annotated[int, typer.Option(help="training epochs")] = 20,
    seed: Annotated[int, typer.Option(help="seed for weights, masks, data order")] = 0,
    out: Annotated[Path | None, typer.Option(help="results folder (default runs/<data>-<rule>-s<seed>)")] = None,
    hidden: Annotated[str, typer.Option(help="hidden widths, e.g. 128,128 ('none' for no hidden layer)")] = "128,128",
    activation: Annotated[str, typer.Option(help="tanh | relu | sigmoid | identity")] = "tanh",
    lr: Annotated[
        float | None,
        typer.Option(help="learning rate η; default 0.05 for sgd and momentum, 1e-3 for rmsprop, adam and adamw"),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="minibatch size n")] = 32,
    weight_decay: Annotated[
        float | None,
        typer.Option(
            help="weight decay λ on W, b and B (every rule; not poly given both --theta-w and --theta-b); "
            "default 1e-4, as heterograd.convert(model, rule)"
        ),
    ] = None,
    feedback_gain: Annotated[
        float | None,
        typer.Option(
            help="feedback plasticity gain c of ΔB; rules hsp, poly (without --theta-b) and freeze only; default "
            "0.5 for hsp, 1.0 for poly and freeze; sets the size of B's update under sgd/momentum only: rmsprop, "
            "adam and adamw divide each element by its own scale, which cancels c"
        ),
    ] = None,
    topology: Annotated[str, typer.Option(help="layered | sparse | direct | amorphous")] = "layered",
    density: Annotated[
        float | None, typer.Option(help="feedback mask density, sparse/amorphous only, in (0, 1]; default 1.0")
    ] = None,
    feedback_init: Annotated[
        str, typer.Option(help="random | transpose (B=Wᵀ) | anti (B=-Wᵀ); ±Wᵀ needs adjacent-layer feedback")
    ] = "random",
    loss: Annotated[str | None, typer.Option(help="ce | mse (default: ce for classes, mse for regression)")] = None,
    optimizer: Annotated[str, typer.Option(help="optimiser motif: sgd | momentum | rmsprop | adam | adamw")] = "sgd",
    momentum: Annotated[float | None, typer.Option(help="momentum μ (momentum, rmsprop)")] = None,
    nesterov: Annotated[bool, typer.Option("--nesterov", help="Nesterov momentum (momentum)")] = False,
    betas: Annotated[str | None, typer.Option(help="Adam betas β₁,β₂, e.g. 0.9,0.999 (adam, adamw)")] = None,
    eps: Annotated[float | None, typer.Option(help="ε of the divisive normalisation (rmsprop, adam, adamw)")] = None,
    optimizer_weight_decay: Annotated[float | None, typer.Option(help="decoupled weight decay ω (adamw)")] = None,
    optimizer_options: Annotated[
        str | None, typer.Option(help="other motif options, e.g. dampening=0.1,amsgrad=true,alpha=0.9,centered=true")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N | auto")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 | float64 | bfloat16")] = "float32",
    log_every: Annotated[int | None, typer.Option(help="steps between logged rows (default: 4 per epoch)")] = None,
    probes: Annotated[bool, typer.Option(help="measure phi/align/DC at logged steps")] = True,
    n_train: Annotated[int | None, typer.Option(help="use only the first N training samples")] = None,
    n_test: Annotated[int | None, typer.Option(help="use only the first N test samples")] = None,
    theta_w: Annotated[str | None, typer.Option(help="poly: 8 coefficients for W (u·h,p·h,u,h,u²h,uh²,W,1)")] = None,
    theta_b: Annotated[str | None, typer.Option(help="poly: 8 coefficients for B (h·u,p·u,h,u,h²u,hu²,B,1)")] = None,
    progress: Annotated[
        bool, typer.Option(help="a progress bar on a terminal, a line per epoch in a log (at most 10)")
    ] = True,
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard",
            help="also log metrics and config to DIR/tensorboard (needs heterograd's tensorboard extra)",
        ),
    ] = False,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="write checkpoint.pt every K steps and at the end (Ctrl-C/SIGTERM always do)")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="continue the run in this folder from its checkpoint.pt; other options must match"),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="clear --out first if it holds an earlier run (else it must be empty)")
    ] = False,
    compile_step: Annotated[
        bool, typer.Option("--compile", help="torch.compile the local step (first step compiles, ~tens of s)")
    ] = False,
    distributed: Annotated[
        bool, typer.Option("--distributed", help="data-parallel rank under torchrun (gloo on CPU, nccl on GPU)")
    ] = False,
    sync_batchnorm: Annotated[
        bool,
        typer.Option(
            "--sync-batchnorm",
            help="--model --distributed: BatchNorm statistics over the global batch (default: per rank)",
        ),
    ] = False,
    amp: Annotated[
        str, typer.Option(help="--model: none | bf16 (torch.autocast to bfloat16; weights and B stay float32)")
    ] = "none",
    device_model: Annotated[
        str, typer.Option(help="synapses on imperfect devices: ideal | moderate | harsh (see heterograd.hardware)")
    ] = "ideal",
    device_model_options: Annotated[
        str | None, typer.Option(help="device preset overrides, e.g. read_noise=0.1,levels=16,stuck_fraction=0.01")
    ] = None,
) -> None:
    """Train one circuit (or, with --model, a converted nn.Module) with a local rule; write config.json,
    metrics.csv, summary.json and figures.

    Ctrl-C or SIGTERM stops at the next step, writes checkpoint.pt and exits 130 / 143;
    `heterograd train --resume DIR` then finishes the run exactly as if never interrupted.
    `heterograd train --config runs/a/config.json --out runs/b` reruns runs/a.
    --out must be empty or new (or the folder being resumed); --overwrite clears an earlier run there.
    """
    from .train import TrainingInterrupted
    from .train_module import make_trainer, resume_trainer

    if config is not None and resume is not None:
        raise HeterogradError(
            "--config and --resume both set the run's options; a resumed run uses its own, drop --config"
        )
    cfg = train_config(ctx)
    data, rule, seed = cfg.data, cfg.rule, cfg.seed
    if overwrite and resume is not None:
        raise HeterogradError("--overwrite would delete the run --resume continues; drop --overwrite")
    _refuse_undeclared_torchrun(distributed)
    if cfg.sync_batchnorm and not distributed:
        raise HeterogradError(
            "--sync-batchnorm synchronises BatchNorm statistics across the ranks of a data-parallel run; add "
            "--distributed (under torchrun) or drop --sync-batchnorm"
        )
    if resume is not None:
        if out is not None and out.resolve() != resume.resolve():
            raise HeterogradError(
                f"--out {out} and --resume {resume} name different folders; a resumed run continues in its own "
                "folder, drop --out"
            )
        if distributed:
            from .distributed.module import resume_distributed

            trainer = resume_distributed(resume, **_explicit_overrides(ctx, cfg))
        else:
            trainer = resume_trainer(resume, **_explicit_overrides(ctx, cfg))
        out_dir = resume
        data, rule, seed = trainer.config.data, trainer.config.rule, trainer.config.seed
    else:
        name = data if cfg.model is None else f"{Path(cfg.model.split(':')[0]).stem}-{data}"
        out_dir = out or Path("runs") / f"{name.replace(':', '_').replace('/', '_')}-{rule}-s{seed}"
        if distributed:
            from .distributed.module import make_distributed_trainer

            trainer = make_distributed_trainer(cfg)
        else:
            trainer = make_trainer(cfg)
    if distributed and trainer.rank != 0:  # type: ignore[attr-defined]  # only rank 0 writes and reports
        try:
            trainer.fit(None, progress=False)  # no --tensorboard either: rank 0 writes
        except TrainingInterrupted as exc:
            sys.exit(128 + exc.signum)
        finally:
            trainer.close()  # type: ignore[attr-defined]
        return
    try:
        result = trainer.fit(out_dir, progress=progress, tensorboard=tensorboard, overwrite=overwrite)
    except TrainingInterrupted as exc:
        import signal

        if exc.checkpoint is None:
            typer.echo(
                f"interrupted by {signal.Signals(exc.signum).name} before training started; nothing was kept in "
                f"{out_dir}; run the command again to start",
                err=True,
            )
            sys.exit(128 + exc.signum)
        typer.echo(
            f"interrupted by {signal.Signals(exc.signum).name} after step {exc.step}; checkpoint written to "
            f"{exc.checkpoint}; continue with: heterograd train --resume {out_dir}",
            err=True,
        )
        sys.exit(128 + exc.signum)
    finally:
        if distributed:  # every rank leaves the process group together
            trainer.close()  # type: ignore[attr-defined]
    s = result.summary
    what = f"{trainer.config.model}, " if trainer.config.model is not None else ""
    typer.echo(results_table([s], title=f"{what}{rule} on {data}, seed {seed}"))
    if s.get("val_bpc") is not None:  # a language model: its own metric
        typer.echo(
            f"bits per character: validation {_fmt(s['val_bpc'])} (perplexity {_fmt(s.get('val_perplexity'), 2)}), "
            f"test {_fmt(s.get('test_bpc'))} (perplexity {_fmt(s.get('test_perplexity'), 2)}); samples.txt written"
            if not s["diverged"]
            else "bits per character: - (diverged)"
        )
    if s["diverged"]:
        typer.echo(
            f"diverged at step {s['diverged_step']} ({s.get('diverged_reason')}); the run stopped there and "
            f"metrics and figures up to that step are kept in {out_dir}; try a smaller --lr"
        )
    elif s.get("no_learning"):
        typer.echo(
            f"learned nothing: {s['no_learning']}; results written to {out_dir}; try another --lr or --optimizer"
        )
    else:
        typer.echo(f"results written to {out_dir}")


def _refuse_undeclared_torchrun(distributed: bool) -> None:
    """Started as one of several processes (``torchrun``: ``WORLD_SIZE`` > 1) without ``--distributed``: every
    process would train alone and write the same ``--out``; refuse with one line."""
    import os

    world = os.environ.get("WORLD_SIZE", "1")
    if not distributed and world.strip().isdigit() and int(world) > 1:
        rank = os.environ.get("RANK", "?")
        raise HeterogradError(
            f"this process is rank {rank} of {world} (WORLD_SIZE={world}, as torchrun sets it) but --distributed is "
            "not set, so every rank would train alone into the same --out; pass --distributed, or run one process "
            "without torchrun"
        )


def train_config(ctx: typer.Context) -> Any:
    """The `heterograd.config.TrainConfig` of a ``train`` command line (``ctx.params``), ``--config`` merged.

    ``heterograd tune`` parses its training options with ``train``'s own options and builds the config here too.
    """
    from .config import TrainConfig
    from .hardware import parse_device_options
    from .optim import cli_options
    from .train_module import parse_model_options
    from .tune.space import ADAPTIVE_OPTIMIZERS

    p = ctx.params
    cfg = TrainConfig(
        data=p["data"],
        model=p["model"],
        model_options=parse_model_options(p["model_options"]),
        schedule=p["schedule"],
        augment=p["augment"],
        norm_feedback=p["norm_feedback"],
        rule=p["rule"],
        checkpoint_every=p["checkpoint_every"],
        epochs=p["epochs"],
        seed=p["seed"],
        hidden=p["hidden"],
        activation=p["activation"],
        lr=p["lr"],
        batch_size=p["batch_size"],
        weight_decay=p["weight_decay"],
        feedback_gain=p["feedback_gain"],
        topology=p["topology"],
        density=p["density"],
        feedback_init=p["feedback_init"],
        loss=p["loss"],
        optimizer=p["optimizer"],
        optimizer_options=cli_options(
            momentum=p["momentum"],
            nesterov=p["nesterov"],
            betas=p["betas"],
            eps=p["eps"],
            optimizer_weight_decay=p["optimizer_weight_decay"],
            extra=p["optimizer_options"],
        ),
        device=p["device"],
        dtype=p["dtype"],
        log_every=p["log_every"],
        probes=p["probes"],
        n_train=p["n_train"],
        n_test=p["n_test"],
        theta_w=_floats(p["theta_w"], "--theta-w"),
        theta_b=_floats(p["theta_b"], "--theta-b"),
        compile=p["compile_step"],
        amp=p["amp"],
        sync_batchnorm=p["sync_batchnorm"],
        device_model=p["device_model"],
        device_model_options=parse_device_options(p["device_model_options"]),
    )
    if p.get("config") is not None:
        cfg = _from_config_file(Path(p["config"]), _explicit_overrides(ctx, cfg))
    if cfg.feedback_gain is not None and cfg.optimizer in ADAPTIVE_OPTIMIZERS:
        typer.echo(
            f"warning: --optimizer {cfg.optimizer} divides each element of B's update by its own running scale, "
            f"which cancels the feedback gain c = {cfg.feedback_gain:g}; use --optimizer sgd or momentum for c to "
            "matter",
            err=True,
        )
    return cfg


_NOT_CONFIG = frozenset({"out", "progress", "resume", "ctx", "config", "tensorboard", "overwrite"})
_MOTIF_OPTIONS = frozenset({"momentum", "nesterov", "betas", "eps", "optimizer_weight_decay", "optimizer_options"})
_OPTION_FIELD = {"compile_step": "compile"}  # CLI parameter -> TrainConfig field, where they differ


def _from_config_file(path: Path, overrides: dict[str, Any]) -> Any:
    """The run's config from a config file, with the options given on the command line (``overrides``) on top.

    Optimiser options merge: the file's ``optimizer_options`` updated by the command line's motif options.
    """
    import dataclasses

    from .config import TrainConfig, load_config_file

    values = load_config_file(path)
    if "optimizer_options" in overrides:
        overrides = {
            **overrides,
            "optimizer_options": {**values.get("optimizer_options", {}), **overrides["optimizer_options"]},
        }
    return dataclasses.replace(TrainConfig(**values), **overrides)


def _explicit_overrides(ctx: typer.Context | None, cfg: Any) -> dict[str, Any]:
    """Config fields whose option was given on the command line (``--resume`` checks them against the checkpoint)."""
    import dataclasses

    if ctx is None:
        return {}
    fields = {f.name for f in dataclasses.fields(cfg)}
    out: dict[str, Any] = {}
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if name in _NOT_CONFIG or source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        field = "optimizer_options" if name in _MOTIF_OPTIONS else _OPTION_FIELD.get(name, name)
        if field in fields:
            out[field] = getattr(cfg, field)
    return out


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="results folder; one subfolder per rule")] = Path("results/demo"),
    epochs: Annotated[int, typer.Option(help="epochs per rule")] = 20,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
    progress: Annotated[bool, typer.Option(help="progress bars on a terminal, a few lines per rule in a log")] = True,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="also replace a demo output written before 0.2.0 (no marker file)")
    ] = False,
) -> None:
    """Train bp, fa and hsp on digits (64-128-128-10 tanh) and compare them with the probes.

    Runs again in the same --out: it replaces its own earlier output (marked by a .heterograd-demo.json file)
    and refuses a non-empty folder it did not write.
    """
    from .data import load_dataset
    from .results import prepare_owned_dir, write_json
    from .train import TrainConfig, Trainer

    rules = ("bp", "fa", "hsp")
    ds = load_dataset("digits")
    prepare_owned_dir(out, "demo", [*rules, "demo.json", "demo.md"], overwrite=overwrite)
    summaries = []
    for rule in rules:
        res = Trainer(TrainConfig(data="digits", rule=rule, epochs=epochs, seed=seed), ds).fit(
            out / rule, progress=progress
        )
        summaries.append(res.summary)
    table = results_table(summaries, title=f"digits, 64-128-128-10 tanh, {epochs} epochs, seed {seed}")
    typer.echo(table)
    write_json(out / "demo.json", {"runs": summaries})
    (out / "demo.md").write_text("```\n" + table + "\n```\n", encoding="utf-8")
    typer.echo(f"per-rule results and figures in {out}/<rule>/")


@app.command()
def sample(
    run: Annotated[Path, typer.Argument(help="the folder of a language-model run (train --model gpt --data text:...)")],
    prompt: Annotated[str, typer.Option(help="text to continue (characters of the run's vocabulary)")] = "\n",
    chars: Annotated[int, typer.Option(help="characters to draw after the prompt")] = 300,
    temperature: Annotated[float, typer.Option(help="softmax temperature (below 1: likelier characters)")] = 1.0,
    seed: Annotated[int, typer.Option(help="seed of the draws")] = 0,
) -> None:
    """Print text sampled from a trained character-level language model (its checkpoint.pt and vocab.json)."""
    from .train_module import sample_text

    typer.echo(sample_text(run, prompt, chars, temperature=temperature, seed=seed))


# Further command groups register themselves here (one import each).
def _register_subcommands() -> None:
    import importlib

    for mod in ("heterograd.experiments.cli", "heterograd.evolve.cli", "heterograd.bench.cli", "heterograd.tune.cli"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (mod == exc.name or mod.startswith(exc.name + ".")):
                continue  # that command group is not part of this installation
            raise
        m.register(app)


_register_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    from ._startup import startup_done

    startup_done()  # from here on Ctrl-C is handled below (and by the trainer), not by the start-up handler
    try:
        rc = app(args=argv, standalone_mode=False)  # a command's typer.Exit(code) comes back as its return value
    except HeterogradError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.TyperException as exc:  # usage errors (unknown option, bad number, ...)
        if not exc.format_message():  # bare `heterograd`: help was shown
            sys.exit(0)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    if isinstance(rc, int) and not isinstance(rc, bool) and rc:
        sys.exit(rc)


if __name__ == "__main__":
    main()
