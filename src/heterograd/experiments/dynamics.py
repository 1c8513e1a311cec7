"""``dynamics``: learning dynamics on three feedback topologies, four panels (paper's Fig. 2b).

Three circuits ``40 -> 64 -> 64 -> 64 -> 10`` (tanh, MNIST-1D), all trained with the bilinear rule
(``c = 1``, random ``B(0)``, ``λ = WEIGHT_DECAY``), differ only in who feeds whom at time t':

* ``structured``: layered feedback, each forward layer mirrored by a feedback matrix (Kolen–Pollack);
* ``amorphous``: every hidden layer gets feedback from *every* higher layer, skip connections
  included, each through a random mask of density ``DENSITY`` (feedback between arbitrary neurons);
* ``direct``: every hidden layer gets plastic feedback straight from the output error (DFA wiring).

For each, ``N_SEEDS`` seeds, logged every ``LOG`` iterations on a fixed probe batch (the first 256
training samples): the feedback-weight change ``|ΔB|`` over the last interval (Frobenius norm over
all feedback matrices together), and, averaged over the three hidden layers, the gradient alignment
``align = cos(u, ∇_p ℓ)``, the consistency score ``φ = <u, g>/<g, g>`` and the Hebbian overlap (the
fraction of synapses whose activity-driven update ``-u h_preᵀ`` has the sign of the Hebbian product
``E[h_post h_preᵀ]``; ``hebb_overlap_l`` of `heterograd.probes.measure`). The series go to ``series.csv``.

**Verdicts, one per panel and topology** (thresholds fixed before the full run; "median" is over
seeds, "start" is iteration 0, "end" the last quarter of the logged points):

* ``|ΔB|`` *settles* (HS), judged only where ``B`` moved: the largest median ``|ΔB|`` of any interval
  (the peak) is above ``DB_FLOOR`` and the median ``|ΔB|`` over the last quarter is ≤ ``SETTLE_RATIO`` × the
  peak; a circuit whose ``B`` never moved does not pass (``0 ≤ 0`` is no evidence of settling);
* *alignment rises*: median end alignment ≥ median alignment at iteration 0 + ``ALIGN_RISE`` and ≥
  ``ALIGN_END_MIN`` (the paper's figure ends at 0.8–0.87);
* ``φ`` *keeps one sign* (DC): in every run, every hidden layer's ``φ_l`` at every logged point after
  iteration 0 is positive (the output layer's ``φ_L = 1``); at iteration 0, ``B`` is random and ``φ``
  is noise around 0, so it is not counted;
* *Hebbian overlap moves from chance towards 1*: median end overlap ≥ ``HEBB_MIN`` and ≥ its value
  at iteration 0 + ``HEBB_RISE``.

A diverged run counts against every panel of its circuit (the panel does not pass).

**Controls, stated before the full run.** Two kinds of circuits run beside the three topologies, with the
same seeds:

* *frozen B* (``FROZEN``): the structured and the amorphous circuit under ``fa`` (the same wiring and
  ``B(0)``, ``B`` never updated). The claim is that *plasticity of B* does what the panels show, so the
  frozen control must **fail** the panels that need a plastic ``B`` (``MUST_FAIL_FROZEN``): ``|ΔB|`` settles
  (``B`` does not move, so the panel is not passed) and alignment rises (theory: only a plastic ``B`` reaches
  ``B → cWᵀ``, where ``u`` is the gradient; with ``B`` frozen, ``W`` aligns with ``B`` only in part). It
  **may pass** φ keeps one sign (feedback alignment also makes ``φ`` positive, docs/theory.md section 4.2)
  and the Hebbian overlap (a by-product of weight decay near stationarity of ``W``, whatever ``B`` does,
  section 4.4): those two panels are reported for it, and are not evidence for plastic ``B``.
* ``c = -1`` (``CONTROL``): the structured circuit with ``c = -1``. Once ``B → cWᵀ``,
  ``φ_l = Π_{k>l} c`` alternates in sign across the hidden layers, so it must **fail** the φ panel; it may
  pass the others.

Each control's verdict is reported per panel: ``fails``, ``passes``, or ``diverged``. A control with a
diverged run is reported as diverged and supports nothing: the experiment then does not hold.

The experiment holds when every panel holds for the structured and the amorphous circuit (the two circuits
of the paper's figure), each one's frozen-B control fails both of its must-fail panels, and the ``c = -1``
control fails the φ panel. The ``direct`` topology is reported beside them (no control).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ..data import load_dataset
from ..results import write_csv
from ..train import TrainConfig
from .base import Context, Verdict, experiment, save_figure, torch_threads, trainer_with

DATA = "mnist1d"
HIDDEN = (64, 64, 64)
WEIGHT_DECAY = 0.01
DENSITY = 0.5
TOPOLOGIES: dict[str, dict[str, Any]] = {
    "structured": {"topology": "layered"},
    "amorphous": {"topology": "amorphous", "density": DENSITY},
    "direct": {"topology": "direct"},
}
DECIDING = ("structured", "amorphous")
CONTROL: dict[str, Any] = {"topology": "layered", "feedback_gain": -1.0}
"""The built-in failing case: layered feedback with ``c = -1``, so ``φ_l = Π_{k>l} c`` alternates in sign
across the three hidden layers once ``B → cWᵀ``; the φ panel must fail there."""
MUST_FAIL_C_MINUS_1 = ("phi_one_sign",)
FROZEN: dict[str, dict[str, Any]] = {name: {**TOPOLOGIES[name], "rule": "fa"} for name in DECIDING}
"""The frozen-B controls: the deciding circuits under ``fa`` (same wiring, same seeds, ``B`` never updated)."""
MUST_FAIL_FROZEN = ("dB_settles", "align_rises")
"""Panels the frozen-B control must fail; it may pass ``phi_one_sign`` and ``hebb_rises``."""
STEPS, LOG, N_SEEDS = 20_000, 500, 6
QUICK_STEPS, QUICK_LOG, QUICK_SEEDS = 3_000, 250, 2
SETTLE_RATIO = 1 / 3
DB_FLOOR = 0.05
"""|ΔB| settling is judged only where the peak median |ΔB| per logging interval exceeds this (Frobenius norm)."""
ALIGN_RISE = 0.3
ALIGN_END_MIN = 0.8
HEBB_MIN = 0.6
HEBB_RISE = 0.1
PANELS = ("dB", "align", "phi", "hebb")
PANEL_KEYS = ("dB_settles", "align_rises", "phi_one_sign", "hebb_rises")
LABELS = {
    "dB": "|ΔB| per logging interval",
    "align": "gradient alignment cos(u, ∇ₚℓ)",
    "phi": "consistency score φ",
    "hebb": "Hebbian overlap",
}


def _mean_hidden(row: dict[str, Any], key: str, layers: tuple[int, ...]) -> float:
    vals = [float(row[f"{key}_{l}"]) for l in layers if f"{key}_{l}" in row]
    return float(np.mean(vals)) if vals else math.nan


def _one_run(ds: Any, wiring: dict[str, Any], seed: int, steps: int, log: int) -> dict[str, Any]:
    """Train one circuit; returns the logged series (iteration 0 included) and the final test accuracy."""
    spe = ds.x_train.shape[0] // 32
    wiring = dict(wiring)
    rule = wiring.pop("rule", "hsp")
    if rule == "hsp":
        wiring.setdefault("feedback_gain", 1.0)  # c = 1 unless the wiring sets it (the hsp run default is 0.5)
    cfg = TrainConfig(
        data=DATA,
        rule=rule,
        hidden=HIDDEN,
        epochs=math.ceil(steps / spe),
        seed=seed,
        weight_decay=WEIGHT_DECAY,
        probe_size=256,
        log_every=log,
        **wiring,
    )
    tr = trainer_with(cfg, ds)
    layers = tr.circuit.hidden_layers
    prev = [b.detach().clone() for b in tr.circuit.B]
    series: dict[str, list[float]] = {k: [] for k in ("step", *PANELS)}
    phis: list[list[float]] = []

    def record(step: int, row: dict[str, Any]) -> None:
        nonlocal prev
        now = [b.detach().clone() for b in tr.circuit.B]
        d = math.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(now, prev, strict=True)))
        prev = now
        series["step"].append(step)
        series["dB"].append(d if step > 0 else math.nan)
        series["align"].append(_mean_hidden(row, "align", layers))
        series["phi"].append(_mean_hidden(row, "phi", layers))
        series["hebb"].append(_mean_hidden(row, "hebb_overlap", layers))
        phis.append([float(row.get(f"phi_{l}", math.nan)) for l in layers])

    record(0, tr.probe())

    def on_log(row: dict[str, Any]) -> None:
        if row["step"] % log == 0 and row["step"] <= steps and "diverged" not in row:
            record(int(row["step"]), row)

    # stop after `steps`: the trainer runs whole epochs, so cap the epochs and ignore rows past `steps`
    res = tr.fit(progress=False, on_log=on_log)
    n = steps // log + 1  # a diverged run stops early: pad its series with NaN to the common length
    for k, v in series.items():
        v += [math.nan] * (n - len(v)) if k != "step" else [log * i for i in range(len(v), n)]
    return {
        "series": series,
        "phis": phis,
        "test_accuracy": res.summary["test_accuracy"],
        "diverged": res.summary["diverged"],
    }


def judge_runs(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """The four panels' numbers and pass/fail for one circuit's runs (one per seed, from `_one_run`).

    Each run carries ``series`` (``PANELS`` -> ``(T,)`` values at the logged points, NaN where absent),
    ``phis`` (hidden ``φ_l`` per logged point), ``diverged`` and ``test_accuracy``. A diverged run makes
    every panel fail; ``runs`` / ``diverged`` say how many runs the medians cover.
    """
    arr = {k: np.array([r["series"][k] for r in rs], float) for k in PANELS}
    with warnings.catch_warnings():  # |ΔB| has no value at iteration 0 (NaN in every run)
        warnings.simplefilter("ignore", RuntimeWarning)
        med = {k: np.nanmedian(v, 0) for k, v in arr.items()}
        n = med["dB"].shape[0]
        end = slice(n - max(1, n // 4), n)
        db_peak = float(np.nanmax(med["dB"])) if np.isfinite(med["dB"]).any() else math.nan
        ends = {k: float(np.nanmedian(arr[k][:, end])) for k in PANELS}
    align0, hebb0 = float(med["align"][0]), float(med["hebb"][0])
    phi_ok = [(not r["diverged"]) and all(math.isfinite(p) and p > 0 for row in r["phis"][1:] for p in row) for r in rs]
    n_div = sum(bool(r["diverged"]) for r in rs)
    moved = bool(math.isfinite(db_peak) and db_peak > DB_FLOOR)
    panels = {
        "dB_settles": moved and ends["dB"] <= SETTLE_RATIO * db_peak,
        "align_rises": ends["align"] >= align0 + ALIGN_RISE and ends["align"] >= ALIGN_END_MIN,
        "phi_one_sign": all(phi_ok),
        "hebb_rises": ends["hebb"] >= HEBB_MIN and ends["hebb"] >= hebb0 + HEBB_RISE,
    }
    panels = {k: bool(v) and n_div == 0 for k, v in panels.items()}
    return {
        **panels,
        "B_moved": moved,
        "dB_peak_median": db_peak,
        "dB_end_median": ends["dB"],
        "align_start_median": align0,
        "align_end_median": ends["align"],
        "phi_start_median": float(med["phi"][0]),
        "phi_end_median": ends["phi"],
        "phi_runs_one_sign": f"{sum(phi_ok)}/{len(phi_ok)}",
        "phi_end_by_layer_median": [
            _finite_median([r["phis"][-1][k] for r in rs if r["phis"]]) for k in range(len(HIDDEN))
        ],
        "hebb_start_median": hebb0,
        "hebb_end_median": ends["hebb"],
        "test_accuracy": [r["test_accuracy"] for r in rs],
        "runs": len(rs),
        "diverged": n_div,
    }


def _finite_median(values: list[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.median(v)) if v else math.nan


def control_verdicts(judged: dict[str, Any], must_fail: tuple[str, ...]) -> dict[str, Any]:
    """A control's verdict per panel (``fails`` / ``passes`` / ``diverged``) and whether it fails as required.

    A control with a diverged run is ``diverged`` on every panel and supports nothing:
    ``control_fails_as_required`` is then false.
    """
    diverged = int(judged["diverged"]) > 0
    per_panel = {k: "diverged" if diverged else ("passes" if judged[k] else "fails") for k in PANEL_KEYS}
    return {
        "verdict_per_panel": per_panel,
        "must_fail": list(must_fail),
        "may_pass": [k for k in PANEL_KEYS if k not in must_fail],
        "control_fails_as_required": all(per_panel[k] == "fails" for k in must_fail),
    }


@experiment("dynamics")
def run(ctx: Context) -> Verdict:
    """On structured and amorphous feedback, |ΔB| settles, alignment rises, φ keeps one sign, Hebbian overlap rises."""
    steps, log = (QUICK_STEPS, QUICK_LOG) if ctx.quick else (STEPS, LOG)
    seeds = [ctx.seed + i for i in range(QUICK_SEEDS if ctx.quick else N_SEEDS)]
    ds = load_dataset(DATA)
    runs: dict[str, list[dict[str, Any]]] = {}
    controls: dict[str, list[dict[str, Any]]] = {}
    with torch_threads(1):
        for name in TOPOLOGIES:
            runs[name] = [_one_run(ds, TOPOLOGIES[name], s, steps, log) for s in seeds]
        for name in FROZEN:
            controls[f"{name}_frozen_B"] = [_one_run(ds, FROZEN[name], s, steps, log) for s in seeds]
        controls["c_minus_1"] = [_one_run(ds, CONTROL, s, steps, log) for s in seeds]

    measured: dict[str, Any] = {}
    holds = True
    for name, rs in runs.items():
        measured[name] = judge_runs(rs)
        if name in DECIDING:
            holds = holds and all(measured[name][k] for k in PANEL_KEYS)
    control_results: dict[str, Any] = {}
    for cname, rs in controls.items():
        must = MUST_FAIL_C_MINUS_1 if cname == "c_minus_1" else MUST_FAIL_FROZEN
        j = judge_runs(rs)
        verdicts = control_verdicts(j, must)
        control_results[cname] = {**verdicts, **j}
        holds = holds and verdicts["control_fails_as_required"]
    measured["controls"] = control_results
    measured["control_fails"] = all(c["control_fails_as_required"] for c in control_results.values())
    write_csv(
        ctx.out / "series.csv",
        [
            {"topology": name, "seed": seed, **{k: r["series"][k][i] for k in ("step", *PANELS)}}
            for name, rs in {**runs, **controls}.items()
            for seed, r in zip(seeds, rs, strict=True)
            for i in range(len(r["series"]["step"]))
        ],
    )
    figures = [_figure(ctx, {**runs, **{k: v for k, v in controls.items() if k != "c_minus_1"}}, seeds, steps)]
    verdict = Verdict(
        claim=(
            "On a structured (Kolen-Pollack) and an amorphous feedback circuit, the feedback-weight change |ΔB| "
            "settles (HS), gradient alignment rises, φ keeps one sign (DC) and the Hebbian overlap moves from chance "
            "towards 1."
        ),
        measured=measured,
        threshold=(
            "per topology (medians over seeds; end = last quarter of the logged points; a diverged run fails every "
            f"panel): |ΔB| peak > {DB_FLOOR} (B moved) and |ΔB| end <= {SETTLE_RATIO:.2f} x its peak; align end >= "
            f"align at iteration 0 + {ALIGN_RISE} and >= {ALIGN_END_MIN}; every hidden φ_l > 0 at every logged point "
            f"after iteration 0 in every run; Hebbian overlap end >= {HEBB_MIN} and >= its iteration-0 value + "
            f"{HEBB_RISE}. Holds when all four hold for {' and '.join(DECIDING)}; each one's frozen-B control (fa, "
            f"same seeds) fails {' and '.join(MUST_FAIL_FROZEN)} (it may pass phi_one_sign and hebb_rises); the "
            "c = -1 control fails phi_one_sign; a control with a diverged run supports nothing (does not hold). "
            "'direct' is reported beside them."
        ),
        holds=holds,
        figures=figures,
        notes=(
            f"{DATA}, 40-{'-'.join(map(str, HIDDEN))}-10 tanh, bilinear rule c=1, random B(0), λ={WEIGHT_DECAY}, "
            f"η=0.05, batch 32, {steps} iterations, logged every {log}, seeds {seeds}; amorphous density {DENSITY}. "
            "φ, align and Hebbian overlap are means over the three hidden layers on a fixed 256-sample probe batch. "
            "Controls (same seeds): structured and amorphous under fa (B frozen at B(0)), structured with c = -1; "
            "the frozen-B controls' |ΔB| is 0 and is not drawn on the log axis."
        ),
    )
    table = table_markdown({"measured": measured, "holds": holds, "quick": ctx.quick})
    (ctx.out / "dynamics.md").write_text(table, encoding="utf-8")
    return verdict


def table_markdown(summary: dict[str, Any]) -> str:
    """``dynamics.md``: every panel of every circuit and control, from a run's ``summary.json`` (numbers not typed)."""
    m = summary["measured"]
    names = [k for k in TOPOLOGIES if k in m]
    controls = m.get("controls", {})
    cols = [*names, *controls]
    rows = [
        ("dB_settles", "\\|ΔB\\| settles", lambda r: f"{r['dB_peak_median']:.3g} → {r['dB_end_median']:.3g}"),
        ("align_rises", "alignment rises", lambda r: f"{r['align_start_median']:.2f} → {r['align_end_median']:.2f}"),
        ("phi_one_sign", "φ keeps one sign", lambda r: f"{r['phi_runs_one_sign']} runs, φ → {r['phi_end_median']:.2f}"),
        ("hebb_rises", "Hebbian overlap rises", lambda r: f"{r['hebb_start_median']:.2f} → {r['hebb_end_median']:.2f}"),
    ]

    def cell(name: str, key: str, fmt: Any) -> str:
        r = {**m.get(name, {}), **controls.get(name, {})}
        if name in controls:
            word = r["verdict_per_panel"][key]
            word = f"**{word}** (must fail)" if key in r["must_fail"] else f"{word} (may pass)"
        else:
            word = "holds" if r[key] else "**fails**"
        return f"{word}: {fmt(r)}"

    lines = [
        f"Made by `heterograd repro dynamics{' --quick' if summary.get('quick') else ''}`; verdict: "
        f"**{'holds' if summary['holds'] else 'does not hold'}**. Medians over seeds (start → end); "
        "n = runs, of which diverged.",
        "",
        "| panel | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for key, label, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(cell(c, key, fmt) for c in cols) + " |")
    runs = " | ".join(
        f"n={({**m.get(c, {}), **controls.get(c, {})})['runs']}, "
        f"{({**m.get(c, {}), **controls.get(c, {})})['diverged']} diverged"
        for c in cols
    )
    lines.append(f"| runs | {runs} |")
    acc = " | ".join(
        "{:.3f}–{:.3f}".format(*_acc_range(({**m.get(c, {}), **controls.get(c, {})})["test_accuracy"])) for c in cols
    )
    lines.append(f"| final test accuracy (range) | {acc} |")
    if controls:
        ok = ", ".join(f"{c}: {'yes' if v['control_fails_as_required'] else '**no**'}" for c, v in controls.items())
        lines += ["", f"Each control fails every panel it must fail: {ok}."]
    return "\n".join(lines) + "\n"


def _acc_range(accs: list[float | None]) -> tuple[float, float]:
    v = [float(a) for a in accs if a is not None and math.isfinite(float(a))]
    return (min(v), max(v)) if v else (math.nan, math.nan)


def _figure(ctx: Context, runs: dict[str, list[dict[str, Any]]], seeds: list[int], steps: int) -> str:
    names = list(runs)
    step_axis = runs[names[0]][0]["series"]["step"]
    n_box = 10
    pick = sorted({round(float(i)) for i in np.linspace(1, len(step_axis) - 1, n_box)} | {0})
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    width = 0.8 / len(names)
    for ax, key in zip(axes.flat, PANELS, strict=True):
        for j, name in enumerate(names):
            data = [[r["series"][key][i] for r in runs[name]] for i in pick]
            data = [[v for v in d if math.isfinite(v)] or [math.nan] for d in data]  # |ΔB|: none at iteration 0
            pos = [k + (j - (len(names) - 1) / 2) * width for k in range(len(pick))]
            bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, manage_ticks=False)
            for patch in bp["boxes"]:
                patch.set_facecolor(f"C{j}")
                patch.set_alpha(0.6)
            k = sum(bool(r["diverged"]) for r in runs[name])
            label = f"{name} (n={len(runs[name])}" + (f", {k} diverged" if k else "") + ")"
            ax.plot([], [], color=f"C{j}", lw=6, alpha=0.6, label=label)
        ax.set_xticks(range(len(pick)))
        ax.set_xlim(-0.6, len(pick) - 0.4)
        ax.set_xticklabels([f"{step_axis[i] / 1000:g}k" for i in pick], fontsize=8)
        ax.set_xlabel("iteration")
        ax.set_ylabel(LABELS[key])
        if key == "phi":
            ax.axhline(0, color="k", ls="--", lw=0.8)
        if key == "hebb":
            ax.axhline(0.5, color="k", ls="--", lw=0.8)
        if key == "dB":
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(
        f"Learning dynamics on three feedback topologies and the frozen-B (fa) controls (box plots over {len(seeds)} "
        f"seeds, {steps} iterations; n = runs per box)"
    )
    fig.tight_layout()
    return save_figure(fig, ctx.out, "dynamics_panels.png")
