"""Reproduction experiments: one readable file per claim, each ``config -> run -> verdict``.

An experiment is a function ``run(ctx: Context) -> Verdict`` registered under a
fixed name with `experiment`. The runner (`run_experiment`) gives it
its own folder, times it, and writes ``summary.json`` with ``claim``,
``measured``, ``threshold``, ``holds`` and the figures it made. Verdicts are
computed from the measurements; an experiment never decides ``holds`` by hand.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import HeterogradError, unknown_choice
from ..results import prepare_out_dir, write_json

if TYPE_CHECKING:
    from ..circuits import Circuit
    from ..data import Dataset
    from ..losses import Loss
    from ..motifs import BuiltMotif
    from ..rules import Rule
    from ..train import TrainConfig, Trainer


@dataclass(frozen=True)
class Context:
    """What an experiment gets.

    Attributes:
        out: the experiment's own folder (exists); write figures and raw data here.
        quick: True for the CI-sized version (each experiment < 60 s on 2 cores).
        seed: base seed; multi-seed experiments use ``seed, seed+1, ...``.
        progress: whether progress bars may be shown.
    """

    out: Path
    quick: bool = False
    seed: int = 0
    progress: bool = False


@dataclass
class Verdict:
    """The outcome of an experiment.

    Attributes:
        claim: one sentence, the claim being tested (from docs/theory.md).
        measured: the numbers that decide it (JSON-serialisable).
        threshold: what counts as holding, in words and numbers.
        holds: whether the measured numbers meet the threshold.
        figures: PNG file names, relative to the experiment folder.
        notes: caveats worth reading next to the verdict.
    """

    claim: str
    measured: dict[str, Any]
    threshold: str
    holds: bool
    figures: list[str] = field(default_factory=list)
    notes: str = ""


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads, restoring the previous count afterwards.

    Experiments on tiny matrices use one thread: it avoids oversubscription on small, shared CPUs.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


ExperimentFn = Callable[[Context], Verdict]


# --------------------------------------------------------------------------- helpers shared by experiments
def seeds_for(ctx: Context, n: int) -> list[int]:
    """The seeds an experiment runs: ``[seed]`` in quick mode, else ``seed, seed+1, ..., seed+n-1``."""
    return [ctx.seed] if ctx.quick else [ctx.seed + i for i in range(n)]


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and (population) standard deviation over *all* values.

    A missing or non-finite value (a diverged seed) makes both ``nan``: a run that diverged is never
    averaged away, and a ``nan`` fails every threshold comparison, so it counts against the claim.
    Count such runs with `diverged_count` and report them next to the mean.
    """
    if not values or diverged_count(values):
        return math.nan, math.nan
    v = [float(x) for x in values]  # type: ignore[arg-type]
    m = sum(v) / len(v)
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / len(v))


def diverged_count(values: Sequence[float | None]) -> int:
    """How many of ``values`` are missing or non-finite (diverged runs)."""
    return sum(1 for x in values if x is None or not math.isfinite(float(x)))


def save_figure(fig: Any, out: Path, name: str) -> str:
    """Save a matplotlib figure as ``out/name`` (PNG, atomically) and close it; returns ``name``."""
    from ..plots import _save

    _save(fig, out / name)
    return name


def plot_band(
    ax: Any, x: Sequence[float], runs: Sequence[Sequence[float]], label: str, color: str | None = None
) -> None:
    """Plot the mean over runs as a line and the min..max spread as a band.

    Args:
        x: ``(T,)`` abscissa; runs: ``S`` sequences of ``T`` values (one per seed; NaN allowed).
    """
    import numpy as np

    arr = np.asarray(runs, dtype=float)
    if arr.ndim == 1:
        arr = arr[None]
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(arr, 0)
            lo, hi = np.nanmin(arr, 0), np.nanmax(arr, 0)
    lines = ax.plot(x, mean, label=label, color=color)
    if arr.shape[0] > 1:
        ax.fill_between(x, lo, hi, color=lines[0].get_color(), alpha=0.2, lw=0)


def trainer_with(config: TrainConfig, dataset: Dataset | None = None, built: BuiltMotif | None = None) -> Trainer:
    """A `Trainer` for ``config``, optionally training a prebuilt circuit and rule.

    ``built`` (from `heterograd.motifs`) replaces the circuit and rule the config
    would build; data, loss, motif, logging and probes still come from ``config``.
    """
    from ..train import Trainer

    tr = Trainer(config, dataset)
    if built is not None:
        tr.circuit = built.circuit.to(device=tr.device, dtype=tr.dtype)
        tr.rule = built.rule
        tr.rule_state = tr.rule.init(tr.circuit)
        tr.motif_state = tr.motif.init(tr.circuit.plastic_tensors())
    return tr


def local_training(
    circuit: Circuit,
    rule: Rule,
    loss: Loss,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int = 32,
    seed: int = 0,
    every: int = 1,
    on_log: Callable[[int], None] | None = None,
) -> bool:
    """Train ``circuit`` in place with ``rule`` and plain SGD for ``steps`` random minibatches.

    Uses the library's step (`local_step`, the ``sgd`` motif and
    `apply_steps`). ``on_log(t)`` is called before step ``t`` for
    ``t = 0, every, 2*every, ...`` and once after the last step (``t = steps``).

    Args:
        x: ``(N, n_0)`` training inputs; y: ``(N,)`` labels or ``(N, K)`` targets.

    Returns:
        ``True`` if the run stayed finite, ``False`` if the loss or weights became non-finite (it stops).
    """
    from ..optim import make_motif
    from ..train import apply_steps, local_step

    motif = make_motif("sgd", lr=lr)
    rule_state = rule.init(circuit)
    mstate = motif.init(circuit.plastic_tensors())
    gen = torch.Generator().manual_seed(int(seed))
    n = x.shape[0]
    for t in range(steps):
        if on_log is not None and t % every == 0:
            on_log(t)
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        out = local_step(circuit, rule, rule_state, loss, x[idx], y[idx])
        rule_state = out.rule_state
        if not math.isfinite(float(out.loss)):
            return False
        st, mstate = motif.update(out.deltas.flat(), mstate, circuit.plastic_tensors())
        apply_steps(circuit, st)
    if on_log is not None:
        on_log(steps)
    return all(bool(torch.isfinite(p).all()) for p in circuit.plastic_tensors())


EXPERIMENTS: dict[str, ExperimentFn] = {}


def experiment(name: str) -> Callable[[ExperimentFn], ExperimentFn]:
    """Decorator registering an experiment under a fixed name (``heterograd repro NAME``)."""

    def deco(fn: ExperimentFn) -> ExperimentFn:
        if name in EXPERIMENTS and EXPERIMENTS[name] is not fn:
            raise HeterogradError(f"experiment {name!r} registered twice; pick another name")
        EXPERIMENTS[name] = fn
        return fn

    return deco


EXPERIMENT_MODULES: tuple[str, ...] = (
    "hs",
    "dc",
    "metaplasticity",
    "hebbian",
    "flexibility",
    "benchmark",
    "optimizers",
    "meta",
    "evolution",
    "hardware",
    "hardware_lenet",
    "rewire",
    "rewire_ablation",
    "dynamics",
    "plasticity_curve",
    "convnets",
    "definitions",
    "language",
)
"""Modules (relative to ``heterograd.experiments``) that register experiments, in report order."""


def load_all() -> dict[str, object]:
    """Import every experiment module so that `EXPERIMENTS` is complete."""
    for mod in EXPERIMENT_MODULES:
        importlib.import_module(f"{__package__}.{mod}")
    return dict(EXPERIMENTS)


def run_experiment(
    name: str, out_root: str | Path, *, quick: bool = False, seed: int = 0, progress: bool = False
) -> dict[str, Any]:
    """Run one experiment into ``out_root/name`` and write its ``summary.json``; returns the summary.

    An experiment that crashes is recorded as ``holds: false`` with the error, so ``repro all``
    always finishes and reports every claim.
    """
    load_all()
    if name not in EXPERIMENTS:
        raise unknown_choice("experiment", name, [*EXPERIMENTS, "all"])
    out = prepare_out_dir(Path(out_root) / name)
    ctx = Context(out=out, quick=quick, seed=seed, progress=progress)
    start = time.perf_counter()
    try:
        v = EXPERIMENTS[name](ctx)
        summary: dict[str, Any] = {
            "name": name,
            "claim": v.claim,
            "measured": v.measured,
            "threshold": v.threshold,
            "holds": bool(v.holds),
            "figures": v.figures,
            "notes": v.notes,
        }
    except HeterogradError:
        raise
    except Exception as exc:  # a crash is a verdict too, with the reason
        summary = {
            "name": name,
            "claim": getattr(EXPERIMENTS[name], "__doc__", "") or "",
            "measured": {},
            "threshold": "",
            "holds": False,
            "figures": [],
            "notes": "",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    summary.update({"quick": quick, "seed": seed, "seconds": round(time.perf_counter() - start, 2)})
    write_json(out / "summary.json", summary)
    return summary
