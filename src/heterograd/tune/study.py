"""A hyperparameter study on Optuna: `run_study` (``heterograd tune``).

Each trial trains one configuration (the base `heterograd.config.TrainConfig` with the trial's values
from the `heterograd.tune.space.SearchSpace`) through `heterograd.train_module.make_trainer`, so
circuits (``rule``) and converted models (``model``) run exactly as ``heterograd train`` runs them. The objective
is the error (%) on a **validation split carved from the training set** (`validation_split`, seeded and
recorded); trials never see the test set. The sampler is Optuna's TPE, seeded; a median pruner stops a trial
whose validation error after an epoch is worse than the median of earlier trials at that epoch. A trial that
diverges scores 100 % error.

The study lives in an Optuna storage: by default the SQLite file ``OUT/study.db``, so running the same command
again continues it, and a finished trial is committed as it ends (Ctrl-C loses only the running one). Any
Optuna storage URL (an RDB such as ``postgresql://...``, or ``journal:PATH`` for a journal file) lets several
workers share one study.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig, not_applicable
from ..data import Dataset, load_dataset
from ..errors import HeterogradError
from ..progress import Progress
from ..results import atomic_write_text, prepare_out_dir, write_csv, write_json
from ..train_module import make_trainer
from .space import SearchSpace, apply

#: error (%) a diverged trial scores: the worst possible, so a diverging configuration never looks good.
DIVERGED_ERROR = 100.0


@dataclass(frozen=True)
class StudyOptions:
    """How a study runs (the budget and the bookkeeping); the training itself is the base ``TrainConfig``.

    Attributes:
        n_trials: trials this call runs (a rerun adds as many again; several workers each run theirs); 0 only
            rewrites the files from the study as stored.
        timeout: stop starting trials after this many seconds (``None``: no limit).
        pruning: median pruning on the per-epoch validation error.
        val_size: validation examples carved from the training set (``None``: a sixth of it).
        storage: an Optuna storage URL, or ``journal:PATH``; ``None``: ``sqlite:///OUT/study.db``.
        study_name: the study's name in the storage (``None``: from the model, data and rule).
        sampler_seed: seed of the TPE sampler (``None``: the base config's seed). Workers sharing a study
            should each take their own, else their first (random) trials coincide.
        startup_trials: random trials before TPE models the results.
    """

    n_trials: int = 20
    timeout: float | None = None
    pruning: bool = True
    val_size: int | None = None
    storage: str | None = None
    study_name: str | None = None
    sampler_seed: int | None = None
    startup_trials: int = 5


@dataclass
class StudyResult:
    """What a study left: the summary (also ``summary.json``), the best config (``best.json``) and the files."""

    summary: dict[str, Any]
    best_config: TrainConfig | None
    files: list[str] = field(default_factory=list)


def validation_split(ds: Dataset, val_size: int | None, seed: int) -> tuple[Dataset, dict[str, Any]]:
    """Carve a validation set out of ``ds``'s training set; the test set is dropped.

    Returns a `Dataset` whose ``x_train, y_train`` are the kept training examples ``(N - V, ...)`` and
    whose ``x_test, y_test`` are the ``V`` validation examples (the trainer's per-epoch "test" evaluation is then
    the validation error), and the record of the split: seed, sizes and a digest of the validation indices.
    The indices come from ``torch.randperm(N)`` with a generator seeded by ``seed``.
    """
    n = int(ds.x_train.shape[0])
    v = n // 6 if val_size is None else int(val_size)
    if not 1 <= v < n:
        raise HeterogradError(
            f"--val-size must be between 1 and {n - 1} (the training set has {n} examples), got {v}; "
            "pass a smaller --val-size or leave it unset (a sixth)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    val_idx, train_idx = perm[:v].sort().values, perm[v:].sort().values
    split = dataclasses.replace(
        ds,
        name=f"{ds.name} (training set minus {v} validation examples)",
        x_train=ds.x_train[train_idx],
        y_train=ds.y_train[train_idx],
        x_test=ds.x_train[val_idx],
        y_test=ds.y_train[val_idx],
    )
    digest = hashlib.sha256(val_idx.numpy().tobytes()).hexdigest()[:16]
    record = {"seed": int(seed), "n_train": n - v, "n_validation": v, "validation_indices_sha256": digest}
    return split, record


def default_study_name(base: TrainConfig) -> str:
    """``lenet5-fashion-mnist-hsp`` or ``circuit-digits-hsp``."""
    what = "circuit" if base.model is None else Path(base.model.split(":")[0]).stem
    return f"{what}-{base.data}-{base.rule}".replace(":", "_").replace("/", "_")


def open_storage(url: str) -> Any:
    """An Optuna storage for ``url``: ``journal:PATH`` (a journal file) or any RDB URL (``sqlite:///...``)."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:") :])
        if not path.name:
            raise HeterogradError(f"--storage {url}: name a file after journal:, e.g. journal:runs/study.log")
        prepare_out_dir(path.parent if str(path.parent) else Path("."))
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return optuna.storages.RDBStorage(url)
    except (ValueError, ImportError, ModuleNotFoundError) as exc:
        raise HeterogradError(
            f"--storage {url}: not a usable storage ({type(exc).__name__}: {exc}); pass an RDB URL such as "
            "sqlite:///study.db or postgresql://..., or journal:PATH"
        ) from None
    except Exception as exc:  # sqlalchemy errors: the database cannot be opened
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise HeterogradError(f"--storage {url}: cannot open it ({type(exc).__name__}: {first})") from None


def _trial_rows(study: Any, names: list[str]) -> list[dict[str, Any]]:
    """One CSV row per trial: number, state, validation error, epochs done, seconds, diverged, parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete is not None and t.datetime_start is not None
            else None
        )
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "validation_error_pct": t.value if t.value is not None else "",
            "epochs_done": len(t.intermediate_values),
            "seconds": "" if seconds is None else round(seconds, 2),
            "diverged": bool(t.user_attrs.get("diverged", False)),
        }
        for n in names:
            row[n] = t.params.get(n, "")
        rows.append(row)
    return rows


def plot_study(study: Any, space: SearchSpace, out: Path) -> list[str]:
    """``history.png`` (validation error per trial and the best so far) and ``params.png`` (error against each
    searched hyperparameter); returns the file names written."""
    import matplotlib.pyplot as plt
    import optuna

    from ..plots import _save

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.PRUNED]
    if not done and not pruned:
        return []
    files = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter([t.number for t in done], [t.value for t in done], color="C0", label="complete", zorder=3)
    last = [(t.number, list(t.intermediate_values.values())[-1]) for t in pruned if t.intermediate_values]
    if last:
        ax.scatter([n for n, _ in last], [v for _, v in last], color="C7", marker="x",
                   label="pruned (error at its last epoch)")  # fmt: skip
    if done:
        order = sorted(done, key=lambda t: t.number)
        best, xs, ys = math.inf, [], []
        for t in order:
            best = min(best, float(t.value))
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation error %")
    ax.set_title(f"optimisation history: {study.study_name}")
    ax.legend(fontsize=8)
    _save(fig, out / "history.png")
    files.append("history.png")

    searched = [p for p in space.params if p.kind != "fixed"]
    if searched and done:
        fig, axes = plt.subplots(1, len(searched), figsize=(4.0 * len(searched), 3.6), squeeze=False)
        for ax, p in zip(axes[0], searched, strict=True):
            pts = [(t.params[p.name], t.value) for t in done if p.name in t.params]
            if p.kind == "categorical":
                labels = [str(c) for c in p.choices]
                ax.scatter([labels.index(str(x)) for x, _ in pts], [y for _, y in pts], color="C0")
                ax.set_xticks(range(len(labels)), labels)
            else:
                ax.scatter([x for x, _ in pts], [y for _, y in pts], color="C0")
                if p.log:
                    ax.set_xscale("log")
            ax.set_xlabel(p.name)
            ax.set_ylabel("validation error %")
        fig.suptitle(f"validation error against each hyperparameter (complete trials): {study.study_name}")
        _save(fig, out / "params.png")
        files.append("params.png")
    return files


def run_study(
    base: TrainConfig,
    space: SearchSpace,
    options: StudyOptions,
    out: str | Path,
    *,
    dataset: Dataset | None = None,
    progress: bool = False,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> StudyResult:
    """Run (or continue) a study tuning ``base`` over ``space``; write its files into ``out``.

    Writes ``trials.csv`` (every trial of the study, from every worker), ``best.json`` (the best complete
    trial's config, a file ``heterograd train --config`` takes as it is: the full training set of ``base``,
    ``base``'s epochs), ``space.json``, ``summary.json`` and the figures of `plot_study`. They are
    written also when the study is interrupted (``KeyboardInterrupt`` is re-raised afterwards).

    Args:
        base: the training configuration every trial starts from (its ``n_test`` must be unset: a study
            never reads the test set). Its ``seed`` seeds the training, the split and (by default) the sampler.
        space: what to search. options: budget and storage. out: the study's folder.
        dataset: a preloaded dataset (else ``load_dataset(base.data)``); its test set is never used.
        on_trial: called with a one-line record after each trial of this call.
    """
    import optuna

    if base.n_test is not None:
        raise HeterogradError("--n-test does not apply to tune: the study never reads the test set; drop --n-test")
    if not space.names():
        raise HeterogradError("the search space searches nothing (every name is fixed); add a range to search")
    for name, v, lo in (("--n-trials", options.n_trials, 0), ("--startup-trials", options.startup_trials, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise HeterogradError(f"{name} must be an integer >= {lo}, got {v!r}")
    if options.timeout is not None and not (math.isfinite(options.timeout) and options.timeout > 0):
        raise HeterogradError(f"--timeout must be a positive number of seconds, got {options.timeout}")
    base = dataclasses.replace(base).validate()  # one clear error for a bad base config before anything runs
    out = prepare_out_dir(out)
    if dataset is None:
        dataset = load_dataset(base.data, seed=base.seed, n_train=base.n_train)
    elif base.n_train is not None:
        dataset = dataclasses.replace(
            dataset, x_train=dataset.x_train[: base.n_train], y_train=dataset.y_train[: base.n_train]
        )
    split, split_record = validation_split(dataset, options.val_size, base.seed)
    trial_base = dataclasses.replace(base, n_train=None, n_test=None, probes=False, checkpoint_every=None)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = options.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    storage = open_storage(storage_url)
    name = options.study_name or default_study_name(base)
    seed = base.seed if options.sampler_seed is None else options.sampler_seed
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=options.startup_trials)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=options.startup_trials, n_warmup_steps=0)
        if options.pruning
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction="minimize", load_if_exists=True
    )
    record = {
        "base_config": base.to_dict(),
        "split": split_record,
        "space": space.to_dict(),
    }
    _check_same_study(study, record, name, storage_url)

    def objective(trial: Any) -> float:
        values = space.sample(trial, trial_base)
        cfg = apply(trial_base, values)
        tr = make_trainer(cfg, split)
        tr.log_every = tr.steps_per_epoch  # one row per epoch, with the validation error

        def on_log(row: dict[str, Any]) -> None:
            acc = row.get("test_accuracy")
            if acc is not None:
                epoch = round(float(row["epoch"]))
                trial.report(100.0 * (1.0 - float(acc)), epoch)
                if options.pruning and trial.should_prune():
                    raise optuna.TrialPruned()

        res = tr.fit(None, progress=False, on_log=on_log, handle_signals=False)
        s = res.summary
        trial.set_user_attr("diverged", bool(s["diverged"]))
        if s["diverged"] or s.get("test_accuracy") is None:
            return DIVERGED_ERROR
        return 100.0 * (1.0 - float(s["test_accuracy"]))

    bar = Progress(options.n_trials, f"tune {name}", "trial", enabled=progress)
    done_here = 0

    def callback(study: Any, trial: Any) -> None:
        nonlocal done_here
        done_here += 1
        value = "-" if trial.value is None else f"{trial.value:.2f}%"
        try:
            best = f"{study.best_value:.2f}%"
        except ValueError:
            best = "-"
        line = f"trial {trial.number} {trial.state.name.lower()} validation error {value} (best {best})"
        bar.update(1, best=best)
        bar.phase(done_here, options.n_trials, line)
        _write_trials_csv(study, space, out)  # the table follows the study trial by trial (figures at the end)
        if on_trial is not None:
            on_trial({"number": trial.number, "state": trial.state.name, "value": trial.value, "line": line})

    start = time.perf_counter()
    interrupted = False
    try:
        if options.n_trials > 0:  # 0: only rewrite the files from the study as stored
            study.optimize(objective, n_trials=options.n_trials, timeout=options.timeout, callbacks=[callback])
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        bar.close()
        result = _write_outputs(study, space, base, out, storage_url, split_record, time.perf_counter() - start,
                                interrupted)  # fmt: skip
    return result


def _check_same_study(study: Any, record: dict[str, Any], name: str, url: str) -> None:
    """A continued study must tune the same base config, split and space; record them in a new one.

    The base config's searched fields (the space's names) are not compared: every trial replaces them, so a
    study started when their unused base value was another default (hsp's ``feedback_gain``) still continues.
    """
    import json

    def norm(x: Any) -> Any:
        return json.loads(json.dumps(x, default=str))

    old = study.user_attrs.get("record")
    if old is None:
        study.set_user_attr("record", norm(record))
        return
    for key, what in (("base_config", "training options"), ("split", "validation split"), ("space", "search space")):
        if key == "base_config":
            searched = set(record.get("space") or {})
            base_old = {k: v for k, v in norm(old.get(key) or {}).items() if k not in searched}
            base_new = {k: v for k, v in norm(record[key]).items() if k not in searched}
            changed = config_differences(base_old, base_new)
            diff = f" ({', '.join(changed)})"
        else:
            changed = ["x"] if norm(old.get(key)) != norm(record[key]) else []
            diff = ""
        if changed:
            raise HeterogradError(
                f"study {name!r} in {url} was run with other {what}{diff}; continue it with the same options, "
                "or pass another --out / --study-name for a new study"
            )


def _write_trials_csv(study: Any, space: SearchSpace, out: Path) -> list[dict[str, Any]]:
    """``trials.csv``: one row per trial of the study (every worker's); returns the rows."""
    names = space.names()
    rows = _trial_rows(study, names)
    cols = ["number", "state", "validation_error_pct", "epochs_done", "seconds", "diverged", *names]
    write_csv(out / "trials.csv", rows, columns=cols)
    return rows


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The fields in which two recorded configs (``TrainConfig.to_dict()``, JSON-normalised) differ.

    A field only one of them records (a newer or older heterograd) counts as the same when its value is the
    field's default, so a study or run recorded before a field was added still matches. The circuit options
    that do not apply to the run's model (`heterograd.config.not_applicable`: ``hidden`` of a LeNet-5, which
    heterograd 0.3.0 records as ``None`` and earlier versions recorded as the unused default) never differ.
    """
    import json

    defaults = json.loads(json.dumps(TrainConfig().to_dict()))
    model_old, model_new = old.get("model"), new.get("model")
    ignored = set(not_applicable(model_old)) & set(not_applicable(model_new)) if model_old == model_new else set()
    out = []
    for k in sorted((set(old) | set(new)) - ignored):
        a, b = old.get(k, defaults.get(k)), new.get(k, defaults.get(k))
        if a != b:
            out.append(k)
    return out


def _write_outputs(
    study: Any,
    space: SearchSpace,
    base: TrainConfig,
    out: Path,
    storage_url: str,
    split_record: dict[str, Any],
    seconds: float,
    interrupted: bool,
) -> StudyResult:
    """trials.csv, best.json, space.json, figures and summary.json from the study as stored now."""
    import optuna

    rows = _write_trials_csv(study, space, out)
    write_json(out / "space.json", space.to_dict())
    files = ["trials.csv", "space.json"]
    states = {s.name.lower(): sum(1 for r in rows if r["state"] == s.name) for s in optuna.trial.TrialState}
    best_cfg: TrainConfig | None = None
    best: dict[str, Any] | None = None
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        bt = min(complete, key=lambda t: (float(t.value), t.number))
        values = {**{p.name: p.value for p in space.params if p.kind == "fixed"}, **bt.params}
        from .space import applies

        optimizer = values.get("optimizer", base.optimizer)
        values = {k: v for k, v in values.items() if k == "optimizer" or applies(k, optimizer, base)}
        best_cfg = apply(base, values).validate()
        write_json(out / "best.json", best_cfg.to_dict())
        files.append("best.json")
        best = {"trial": bt.number, "validation_error_pct": float(bt.value), "params": dict(bt.params)}
    files += plot_study(study, space, out)
    params = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (best or {}).get("params", {}).items()
    )
    line = (
        f"{study.study_name}: {len(rows)} trials ({states.get('complete', 0)} complete, {states.get('pruned', 0)} "
        f"pruned, {states.get('fail', 0)} failed); "
        + (
            f"best validation error {best['validation_error_pct']:.2f}% (trial {best['trial']}: {params})"
            if best is not None
            else "no complete trial yet"
        )
    )
    summary = {
        "study_name": study.study_name,
        "storage": storage_url,
        "trials": len(rows),
        "states": states,
        "best": best,
        "objective": "error % on the validation split (carved from the training set; the test set is never read)",
        "split": split_record,
        "epochs_per_trial": base.epochs,
        "space": space.to_dict(),
        "seconds_this_call": round(seconds, 2),
        "interrupted": interrupted,
        "summary_line": line,
        "files": files,
    }
    write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.txt", line + "\n")
    return StudyResult(summary, best_cfg, [*files, "summary.json", "summary.txt"])
