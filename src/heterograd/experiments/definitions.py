"""``definitions``: each feedback-definition factor of 0.3.0, measured alone on LeNet-5 / Fashion-MNIST.

0.3.0 changed the random feedback of ``fa``, ``frsf``, ``brsf`` and ``usf`` to the published implementation's
definitions (biotorch, Sanfiz & Akrout 2021; docs/convnets.md, "Definitions against the published
implementation") and gave ``dfa`` a kernel-shaped feedback on convolutions with the error spread as ``e/P``.
This experiment trains each rule with one factor changed at a time, everything else equal, to say how much of
the gap between our rows and the published ones each factor explains. The factors (`FACTORS`), each a pair of
arms (`ARMS`): ``new`` is what 0.3.0 ships (the default), ``old`` the alternative it was weighed against:

* ``fa_feedback``: ``fa``'s ``B`` uniform ``±1/√fan_in`` (0.2, ``convert(..., feedback_scale="fan_in")``)
  against Xavier uniform (0.3.0).
* ``fa_weight_init``: ``W`` at the start Xavier uniform with zero bias (biotorch's) against ``lenet5``'s Kaiming
  normal (kept in 0.3.0: a choice of model, not of rule), Xavier ``B`` in both.
* ``frsf_magnitude`` / ``brsf_magnitude``: the random magnitudes ``M`` on ``±1/√fan_in`` (0.2) against Xavier.
* ``usf_scale``: ``s = rms(W)``, following ``W`` (0.2, ``follow_weights=True``) against the fixed Xavier std.
* ``dfa_spread``: the conv error spread ``"repeat"`` (``e`` at each output position, biotorch) against ``"mean"``
  (``e/P``, ours).

**Recipe.** Each rule at its own tuned configuration, read from ``convnets/tuning/RULE/best.json`` (the studies
of ``repro convnets``: lr, SGD momentum 0.9, cosine schedule, weight decay ``1e-4``, batch 128), trained on all
60,000 training images for `FULL` ``.epochs`` epochs with seeds ``seed, seed+1`` and judged on the 10,000 test
images. Both arms of a factor share the seed, so the same data order and (where the definition allows) the same
random draws.

**Claim and verdict (fixed before any run).** Each definition 0.3.0 ships does not make its rule worse than
the alternative it replaced or was weighed against: per factor, the new arm's mean test error is at most the old
arm's mean + `MARGIN` (0.5) points, and no run of either arm diverged (a diverged run supports nothing: a NaN
fails its factor, whichever arm it is in). The claim holds when every factor holds. ``--quick`` (one epoch on
2,560 images, 1,000 test images, one seed) checks the machinery; its verdict says nothing about the definitions.

**What it can and cannot explain.** Three epochs are far from the published budget (many more epochs, each
row's best epoch picked on the test set, which flatters it): a factor's difference here is its share of the gap
at this budget, not the whole gap; what remains between our 15-epoch tuned rows and the published ones after
the definitions agree is a difference of budget, model layout and selection, which no run here measures.

Every run is written to ``OUT/definitions/runs/NAME.json`` (``NAME`` = arm and seed) as it finishes and reused
by a rerun when its configuration and definition are the same, so an interrupted run continues.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

from ..config import TrainConfig, from_recorded
from ..data import Dataset, load_dataset
from ..errors import HeterogradError
from ..results import atomic_write_text, write_json
from ..train_module import ModuleTrainer, convert_for
from ..tune import config_differences
from .base import Context, Verdict, diverged_count, experiment, mean_std, save_figure, torch_threads
from .convnets import BENCH, LABELS, PUBLISHED, SELECTION, SOURCE, _commit, error_pct

MARGIN = 0.5
"""Points of test error by which a new definition may trail the old one and still hold (fixed before running)."""
WEIGHT_INITS: tuple[str, ...] = ("model", "xavier")
"""``model``: the model's own init (``lenet5``: Kaiming normal); ``xavier``: Xavier uniform ``W``, zero bias."""


@dataclass(frozen=True)
class Arm:
    """One definition of one rule: the rule, `heterograd.convert` options, and ``W``'s init.

    Attributes:
        rule: the rule (its tuned configuration is read from ``convnets/tuning/RULE/best.json``).
        label: the definition in words.
        options: keywords for `heterograd.convert` (``feedback_scale``, ``spread``, ``follow_weights``).
        weight_init: one of `WEIGHT_INITS`.
    """

    rule: str
    label: str
    options: Mapping[str, Any] = field(default_factory=dict)
    weight_init: str = "model"

    def definition(self) -> dict[str, Any]:
        """What a run record stores to say which definition it ran (compared on reuse)."""
        return {"rule": self.rule, "options": dict(self.options), "weight_init": self.weight_init}


ARMS: dict[str, Arm] = {
    "fa-xavier": Arm("fa", "B Xavier uniform, W Kaiming normal (0.3.0)"),
    "fa-fan_in": Arm("fa", "B uniform ±1/√fan_in (0.2)", {"feedback_scale": "fan_in"}),
    "fa-xavier-w": Arm("fa", "W Xavier uniform (biotorch), B Xavier uniform", weight_init="xavier"),
    "frsf-xavier": Arm("frsf", "M Xavier uniform (0.3.0)"),
    "frsf-fan_in": Arm("frsf", "M uniform ±1/√fan_in (0.2)", {"feedback_scale": "fan_in"}),
    "brsf-xavier": Arm("brsf", "M_t Xavier uniform (0.3.0)"),
    "brsf-fan_in": Arm("brsf", "M_t uniform ±1/√fan_in (0.2)", {"feedback_scale": "fan_in"}),
    "usf-xavier": Arm("usf", "s = Xavier std, fixed (0.3.0)"),
    "usf-rms": Arm("usf", "s = rms(W), follows W (0.2)", {"follow_weights": True}),
    "dfa-mean": Arm("dfa", 'spread "mean", e/P (ours)'),
    "dfa-repeat": Arm("dfa", 'spread "repeat", e at each position (biotorch)', {"spread": "repeat"}),
}


@dataclass(frozen=True)
class Factor:
    """One factor: the rule, its ``old`` and ``new`` arms (names in `ARMS`) and what differs, in words."""

    rule: str
    old: str
    new: str
    what: str


FACTORS: dict[str, Factor] = {
    "fa_feedback": Factor("fa", "fa-fan_in", "fa-xavier", "fa: B's draw, ±1/√fan_in (0.2) → Xavier (0.3.0)"),
    "fa_weight_init": Factor(
        "fa", "fa-xavier-w", "fa-xavier", "fa: W's init, Xavier uniform (biotorch) → Kaiming normal (ours, kept)"
    ),
    "frsf_magnitude": Factor("frsf", "frsf-fan_in", "frsf-xavier", "frsf: M's draw, ±1/√fan_in (0.2) → Xavier"),
    "brsf_magnitude": Factor("brsf", "brsf-fan_in", "brsf-xavier", "brsf: M_t's draw, ±1/√fan_in (0.2) → Xavier"),
    "usf_scale": Factor("usf", "usf-rms", "usf-xavier", "usf: s = rms(W) following W (0.2) → fixed Xavier std"),
    "dfa_spread": Factor("dfa", "dfa-repeat", "dfa-mean", 'dfa: conv error spread "repeat" (biotorch) → "mean"'),
}
RULES_MEASURED: tuple[str, ...] = ("fa", "frsf", "brsf", "usf", "dfa")


@dataclass(frozen=True)
class Scale:
    """How big a run is: ``epochs``; ``n_train`` / ``n_test`` images (``None``: all); ``seeds`` per arm;
    ``workers`` processes; ``probe_size`` (per-epoch probes)."""

    epochs: int
    n_train: int | None
    n_test: int | None
    seeds: int
    workers: int
    probe_size: int


FULL = Scale(epochs=3, n_train=None, n_test=None, seeds=2, workers=2, probe_size=256)
QUICK = Scale(epochs=1, n_train=2560, n_test=1000, seeds=1, workers=1, probe_size=32)


def xavier_weights_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise every ``nn.Linear`` / ``nn.Conv*d`` weight of ``model`` Xavier uniform on
    ``±√(6/(fan_in + fan_out))`` (biotorch's init, gain 1) and its bias to zero, in place, from ``generator``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
    return model


class DefinitionTrainer(ModuleTrainer):
    """A `ModuleTrainer` whose model is converted with an `Arm`'s definition (convert options and ``W``'s init).

    ``dataset``: optionally a preloaded `Dataset` (as `ModuleTrainer`).
    """

    def __init__(self, config: TrainConfig, arm: Arm, dataset: Dataset | None = None) -> None:
        if arm.weight_init not in WEIGHT_INITS:
            raise HeterogradError(f"unknown weight init {arm.weight_init!r}; valid choices: {', '.join(WEIGHT_INITS)}")
        if arm.rule != config.rule:
            raise HeterogradError(f"arm of rule {arm.rule!r} given a config of rule {config.rule!r}")
        self.arm = arm
        super().__init__(config, dataset)

    def build_model(self, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        model = super().build_model(in_shape, num_classes)
        if self.arm.weight_init == "xavier":
            xavier_weights_(model, torch.Generator().manual_seed(self.config.seed))
        return model

    def convert_model(self, model: nn.Module, example: Tensor) -> nn.Module:
        return convert_for(self.config, model, example, **dict(self.arm.options))


# --------------------------------------------------------------------------- inputs
def _repo_convnets() -> Path:
    """``docs/reproduction/convnets`` of the checkout this module runs from (it may not exist)."""
    return Path(__file__).resolve().parents[3] / "docs" / "reproduction" / "convnets"


def convnets_folder(out: Path) -> Path:
    """Where the tuned configurations are: ``OUT/convnets`` when it holds every measured rule's
    ``tuning/RULE/best.json``, else the checkout's committed ``docs/reproduction/convnets``."""
    for cand in (out.parent / "convnets", _repo_convnets()):
        if all((cand / "tuning" / r / "best.json").is_file() for r in RULES_MEASURED):
            return cand
    raise HeterogradError(
        f"definitions trains each rule at its tuned configuration, convnets/tuning/RULE/best.json, found neither "
        f"under {out.parent / 'convnets'} nor in this checkout's docs/reproduction/convnets; run "
        f"`heterograd repro convnets --out {out.parent}` first"
    )


def run_config(best: dict[str, Any], scale: Scale, seed: int) -> TrainConfig:
    """A rule's tuned configuration (``best.json``'s content) at this scale and seed."""
    cfg = replace(TrainConfig(**from_recorded(best)), seed=seed, epochs=scale.epochs, n_train=scale.n_train,
                  n_test=scale.n_test, probe_size=scale.probe_size)  # fmt: skip
    return cfg.validate()


def run_arm(job: tuple[str, int, dict[str, Any], Scale, str]) -> dict[str, Any]:
    """Train arm ``name`` with ``seed`` (or reuse ``OUT/runs/NAME-sSEED.json`` when it has this config and
    definition); returns the record ``{config, definition, summary, rows, git}``."""
    name, seed, best, scale, out = job
    arm = ARMS[name]
    cfg = run_config(best, scale, seed)
    want = json.loads(json.dumps(cfg.to_dict()))
    path = Path(out) / "runs" / f"{name}-s{seed}.json"
    if path.exists():
        rec = json.loads(path.read_text(encoding="utf-8"))
        if rec.get("definition") == arm.definition() and not config_differences(rec.get("config", {}), want):
            return rec
    with torch_threads(1):
        tr = DefinitionTrainer(cfg, arm)
        tr.log_every = tr.steps_per_epoch  # one row (probes and test error) per epoch
        res = tr.fit(None, progress=False, handle_signals=False)
    rec = {"config": want, "definition": arm.definition(), "summary": res.summary, "rows": res.rows,
           "git": _commit()}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, rec)
    return json.loads(path.read_text(encoding="utf-8"))


def _run_all(out: Path, scale: Scale, seeds: list[int], tuned: dict[str, dict[str, Any]]) -> dict[tuple[str, int], Any]:
    """Every arm at every seed, in ``scale.workers`` processes (slowest rules first); ``{(arm, seed): record}``."""
    order = sorted(ARMS, key=lambda a: ("dfa", "usf", "brsf", "fa", "frsf").index(ARMS[a].rule))
    jobs = [(a, s, tuned[ARMS[a].rule], scale, str(out)) for a in order for s in seeds]
    if scale.workers <= 1:
        return {(j[0], j[1]): run_arm(j) for j in jobs}
    with ProcessPoolExecutor(max_workers=scale.workers, mp_context=get_context("spawn")) as pool:
        futures = {(j[0], j[1]): pool.submit(run_arm, j) for j in jobs}
        return {k: f.result() for k, f in futures.items()}


# --------------------------------------------------------------------------- verdict
def judge(errors: Mapping[str, Mapping[str, list[float]]], margin: float = MARGIN) -> tuple[bool, dict[str, Any]]:
    """The verdict from each factor's test errors: ``errors[factor] = {"old": [% per seed], "new": [...]}``
    (NaN = a diverged run).

    A factor holds when neither arm has a diverged run and ``mean(new) <= mean(old) + margin``. Returns
    ``(holds, rows)``, ``holds`` true when every factor holds; ``rows[factor]`` has ``old`` and ``new``
    (``test_error_pct``, ``std``, ``diverged``, ``runs``, ``errors``), ``difference`` (new - old, NaN when either
    diverged) and ``holds``.
    """
    rows: dict[str, Any] = {}
    for factor, arms in errors.items():
        row: dict[str, Any] = {}
        for side in ("old", "new"):
            vals = [float(v) for v in arms[side]]
            m, sd = mean_std(vals)
            row[side] = {"test_error_pct": m, "std": sd, "diverged": diverged_count(vals), "runs": len(vals),
                         "errors": vals}  # fmt: skip
        old, new = row["old"]["test_error_pct"], row["new"]["test_error_pct"]
        finite = math.isfinite(old) and math.isfinite(new) and row["old"]["diverged"] + row["new"]["diverged"] == 0
        row["difference"] = new - old if finite else math.nan
        row["holds"] = bool(finite and new <= old + margin)
        rows[factor] = row
    return bool(rows) and all(r["holds"] for r in rows.values()), rows


# --------------------------------------------------------------------------- context rows
def context_rows(convnets: Path) -> dict[str, dict[str, Any]]:
    """Per rule, the committed rows to stand beside: ``published``, ``tuned`` (the tuned ``repro convnets``
    summary, when ``convnets/summary.json`` is one) and ``shared`` (``convnets/shared_recipe/summary.json``),
    each ``{test_error_pct, std, diverged, runs, epochs}`` or ``None``."""

    def rows_of(path: Path, tuned: bool) -> dict[str, Any]:
        if not path.is_file():
            return {}
        m = json.loads(path.read_text(encoding="utf-8")).get("measured", {})
        lenet = m.get("lenet5", {})
        if tuned != all("hyperparameters" in v for v in lenet.values()) or not lenet:
            return {}
        sc = m.get("scale", {})
        epochs = sc.get("final_epochs") if tuned else sc.get("lenet_epochs")
        keep = ("test_error_pct", "std", "diverged", "runs")
        return {r: {**{k: v.get(k) for k in keep}, "epochs": epochs} for r, v in lenet.items()}

    tuned = rows_of(convnets / "summary.json", True)
    shared = rows_of(convnets / "shared_recipe" / "summary.json", False)
    return {r: {"published": PUBLISHED[r][BENCH], "tuned": tuned.get(r), "shared": shared.get(r)}
            for r in RULES_MEASURED}  # fmt: skip


def _pm(v: Mapping[str, Any] | None) -> str:
    if v is None:
        return "-"
    m = v.get("test_error_pct")
    if m is None or not math.isfinite(float(m)):
        return f"diverged ({v.get('diverged')}/{v.get('runs')})"
    runs, div = int(v.get("runs") or 1), int(v.get("diverged") or 0)
    return f"{float(m):.2f}" + (f" ± {float(v['std']):.2f}" if runs - div > 1 and v.get("std") is not None else "")


# --------------------------------------------------------------------------- the experiment
@experiment("definitions")
def run(ctx: Context) -> Verdict:
    """Each 0.3.0 feedback definition, one factor at a time, does not make its rule worse than the alternative."""
    scale = QUICK if ctx.quick else FULL
    seeds = [ctx.seed + i for i in range(scale.seeds)]
    load_dataset("fashion-mnist")  # a clear error before any worker starts when the files are missing
    convnets = convnets_folder(ctx.out)
    tuned = {r: json.loads((convnets / "tuning" / r / "best.json").read_text(encoding="utf-8")) for r in RULES_MEASURED}
    records = _run_all(ctx.out, scale, seeds, tuned)

    errors = {
        f: {side: [error_pct(records[(getattr(fac, side), s)]["summary"]) for s in seeds] for side in ("old", "new")}
        for f, fac in FACTORS.items()
    }
    holds, rows = judge(errors)
    for f, fac in FACTORS.items():
        rows[f].update({"rule": fac.rule, "what": fac.what, "margin": MARGIN})
        for side in ("old", "new"):
            rows[f][side].update({"arm": getattr(fac, side), "label": ARMS[getattr(fac, side)].label})
    context = context_rows(convnets)
    walls = {a: [float(records[(a, s)]["summary"]["wall_seconds"]) for s in seeds] for a in ARMS}
    epoch_seconds = {a: round(sum(w) / len(w) / scale.epochs, 1) for a, w in walls.items()}

    # ---------------------------------------------------------------- report
    n_train = "all 60,000" if scale.n_train is None else f"{scale.n_train:,}"
    n_test = "all 10,000" if scale.n_test is None else f"{scale.n_test:,}"
    try:
        src = convnets.relative_to(ctx.out.parent)
    except ValueError:
        src = Path("docs/reproduction/convnets")
    lines = [
        "# Each feedback definition, one factor at a time (LeNet-5, Fashion-MNIST)",
        "",
        f"Each rule at its tuned configuration (`{src}/tuning/RULE/best.json`: lr, SGD momentum 0.9, cosine, weight "
        f"decay 1e-4, batch 128), {scale.epochs} epoch(s) on {n_train} training images, seeds {seeds}, test error "
        f"% on {n_test} test images (mean ± std over seeds). One factor differs between the two arms of a row, "
        "everything else equal. `new` is what 0.3.0 ships, `old` the alternative.",
        "",
        f"**Verdict: {'holds' if holds else 'does not hold'}** (per factor: new ≤ old + {MARGIN:g} points, no "
        "diverged run in either arm).",
        "",
    ]
    if ctx.quick:
        lines += ["**Quick mode**: one short epoch on a subset checks the machinery; it says nothing about the "
                  "definitions.", ""]  # fmt: skip
    lines += [
        "| factor | old | new | old: error % | new: error % | new − old | holds | published | ours tuned | "
        "ours shared recipe |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f, r in rows.items():
        c = context[r["rule"]]
        diff = "-" if not math.isfinite(r["difference"]) else f"{r['difference']:+.2f}"
        tuned_cell = _pm(c["tuned"]) + (f" ({c['tuned']['epochs']} ep)" if c["tuned"] else "")
        shared_cell = _pm(c["shared"]) + (f" ({c['shared']['epochs']} ep)" if c["shared"] else "")
        lines.append(
            f"| `{f}` | {r['old']['label']} | {r['new']['label']} | {_pm(r['old'])} | {_pm(r['new'])} | {diff} | "
            f"{'yes' if r['holds'] else 'no'} | {c['published']:g} | {tuned_cell} | {shared_cell} |"
        )
    lines += [
        "",
        f"Published: {SOURCE}. {SELECTION}",
        "",
        "What these runs can explain: the share of the gap between a rule's rows that one definition makes at "
        f"this budget ({scale.epochs} epoch(s), each rule's tuned lr, which was tuned for the new definition). "
        "What they cannot: the gap that remains once the definitions agree, which is one of budget (the "
        "published rows trained many more epochs and picked each row's best epoch on the test set), of model "
        "layout and of selection; and whether a factor would matter more or less after longer training.",
        "",
        "Seconds per epoch (mean over seeds, one torch thread per run, "
        f"{scale.workers} run(s) at a time): " + ", ".join(f"{a} {s:g}" for a, s in epoch_seconds.items()) + ".",
        "",
        "![each factor: old and new definition, test error % (mean, bars min..max over seeds)](definitions.png)",
        "",
    ]
    atomic_write_text(ctx.out / "definitions.md", "\n".join(lines))

    # ---------------------------------------------------------------- figure
    fig, ax = plt.subplots(figsize=(10, 4.2))
    names = list(rows)
    for i, f in enumerate(names):
        for j, side in enumerate(("old", "new")):
            v = rows[f][side]
            x = i + (j - 0.5) * 0.38
            vals = [e for e in v["errors"] if math.isfinite(e)]
            if v["diverged"] or not vals:
                ax.text(x, 0.5, "diverged", rotation=90, ha="center", va="bottom", fontsize=8)
                continue
            m = sum(vals) / len(vals)
            ax.bar(x, m, 0.36, color="C7" if side == "old" else "C0", label=side if i == 0 else None)
            ax.errorbar(x, m, yerr=[[m - min(vals)], [max(vals) - m]], color="k", capsize=3, lw=1)
        pub = context[rows[f]["rule"]]["published"]
        ax.plot([i - 0.45, i + 0.45], [pub, pub], color="C3", lw=1.5, label="published" if i == 0 else None)
    ax.set_xticks(range(len(names)), [f"{n}\n({LABELS[rows[n]['rule']]})" for n in names], fontsize=8)
    ax.set_ylabel("test error %")
    ax.set_title(f"LeNet-5, Fashion-MNIST: one definition factor at a time ({scale.epochs} epoch(s), tuned lr)")
    ax.legend(fontsize=8)
    figures = [save_figure(fig, ctx.out, "definitions.png")]

    measured: dict[str, Any] = {
        **rows,
        "context": context,
        "tuned_from": str(src),
        "hyperparameters": {r: {"lr": tuned[r]["lr"], "batch_size": tuned[r]["batch_size"]} for r in RULES_MEASURED},
        "epoch_seconds": epoch_seconds,
        "scale": scale.__dict__,
        "seeds": seeds,
        "git": _commit(),
    }
    failed = [f for f, r in rows.items() if not r["holds"]]
    return Verdict(
        claim=(
            "Each feedback definition 0.3.0 ships (fa's and frsf/brsf's Xavier draws, usf's fixed Xavier scale, "
            "dfa's e/P spread, lenet5's own W init kept) does not make its rule train LeNet-5 on Fashion-MNIST "
            "worse than the alternative it replaced or was weighed against, one factor at a time."
        ),
        measured=measured,
        threshold=(
            f"per factor: mean test error of the new definition <= the old one's + {MARGIN:g} points over seeds "
            f"{seeds}, with no diverged run in either arm (a NaN fails its factor); every factor must hold"
        ),
        holds=holds,
        figures=figures,
        notes=(
            ("Factors that do not hold: " + ", ".join(failed) + ". " if failed else "Every factor holds. ")
            + f"{scale.epochs} epoch(s) at each rule's tuned lr; the published rows trained far longer and picked "
            "their best epoch on the test set, so the remaining gap is one of budget, not measured here."
            + (" Quick mode: machinery only." if ctx.quick else "")
        ),
    )
