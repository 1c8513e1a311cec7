"""``dc``: dynamical consistency decides whether a heterosynaptic circuit learns (docs/theory.md section 4).

Circuits with 1 and 2 hidden tanh layers of 128 units are trained with the bilinear rule for the
feedback gains ``c ∈ {+1, +0.3, 0, -0.3, -1}`` (``c = 0``: ``B`` keeps its random start and only
decays, the feedback-alignment limit). Feedback starts random and ``λ = 1e-3``, so ``B`` is *not*
at ``cWᵀ`` at the start: the signs come from the circuit's own dynamics.

**DC of a run.** The theory's patches (docs/theory.md section 4) include the output layer, whose
feedback potential is the error itself (``u_L = e``, ``φ_L = 1``). A run satisfies DC when every
hidden layer's consistency score ``φ_l`` (measured at the end of training on a fixed probe batch) is
positive like the output layer's; ``dc_layers`` is the fraction of layer pairs (output included) with ``φ_i φ_j > 0``.
With one hidden layer and ``c = -1`` the hidden neurons all agree with *each other* (the probes'
per-neuron ``dc_score`` over hidden neurons is near 1) but disagree with the output layer: the
hidden layer ascends the loss while the output descends, so DC counted with the output fails.

**Learning.** A run *learns* when its test accuracy beats the readout-only baseline of the same
seed: the same circuit with every hidden layer frozen (``Freeze``), which only trains the output
layer on fixed random features. Beating it means the hidden plasticity helped; falling below it
means the hidden plasticity did harm.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import matplotlib.pyplot as plt

from ..data import load_dataset
from ..rules import HSP, Freeze
from ..train import TrainConfig
from .base import Context, Verdict, experiment, mean_std, plot_band, save_figure, seeds_for, trainer_with

GAINS: tuple[float, ...] = (1.0, 0.3, 0.0, -0.3, -1.0)
DEPTHS: tuple[tuple[int, ...], ...] = ((128,), (128, 128))
WEIGHT_DECAY = 1e-3


def _curve(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows if "test_accuracy" in r]


@experiment("dc")
def run(ctx: Context) -> Verdict:
    """DC decides learning: runs whose hidden φ all share the output's sign learn; the others do not."""
    data = "mnist1d"
    epochs = 10 if ctx.quick else 30
    seeds = seeds_for(ctx, 3)
    ds = load_dataset(data)
    runs: list[dict[str, Any]] = []
    curves: dict[tuple[int, float | str], list[list[float]]] = {}
    for hidden in DEPTHS:
        depth = len(hidden)
        for seed in seeds:
            base_cfg = TrainConfig(
                data=data,
                rule="hsp",
                feedback_gain=1.0,  # c = 1 as committed (the hsp run default is 0.5)
                hidden=hidden,
                epochs=epochs,
                seed=seed,
                weight_decay=WEIGHT_DECAY,
                probe_size=256,
            )
            tr = trainer_with(base_cfg, ds)
            tr.log_every = tr.steps_per_epoch
            tr.rule = Freeze(HSP(weight_decay=WEIGHT_DECAY, feedback_gain=1.0), layers=tuple(range(1, depth + 1)))
            tr.rule_state = tr.rule.init(tr.circuit)
            res = tr.fit(progress=ctx.progress)
            baseline = res.summary["test_accuracy"]
            curves.setdefault((depth, "readout"), []).append(_curve(res.rows, "test_accuracy"))
            for c in GAINS:
                tr = trainer_with(dataclasses.replace(base_cfg, feedback_gain=c), ds)
                tr.log_every = tr.steps_per_epoch
                res = tr.fit(progress=ctx.progress)
                s = res.summary
                acc = s["test_accuracy"] if s["test_accuracy"] is not None else math.nan
                phis = [float(p) for p in s["phi"]]
                signs = [*phis, 1.0]  # the output layer: u_L = e, φ_L = 1
                finite = [p for p in signs if math.isfinite(p) and p != 0]
                pos = sum(p > 0 for p in finite)
                neg = len(finite) - pos
                pairs = len(finite) * (len(finite) - 1) / 2
                dc_layers = (pos * (pos - 1) / 2 + neg * (neg - 1) / 2) / pairs if pairs else math.nan
                satisfied = bool(not s["diverged"] and len(finite) == len(signs) and neg == 0)
                learns = bool(not s["diverged"] and math.isfinite(acc) and acc > baseline)
                runs.append(
                    {
                        "hidden_layers": depth,
                        "c": c,
                        "seed": seed,
                        "test_accuracy": acc,
                        "readout_baseline": baseline,
                        "phi": phis,
                        "dc_layers": dc_layers,
                        "dc_score_hidden_neurons": s["dc_score"],
                        "dc_satisfied": satisfied,
                        "learns": learns,
                        "diverged": s["diverged"],
                    }
                )
                curves.setdefault((depth, c), []).append(_curve(res.rows, "test_accuracy"))

    # ---------------------------------------------------------------- figures
    fig, axes = plt.subplots(1, len(DEPTHS), figsize=(12, 4), sharey=True)
    for ax, hidden in zip(axes, DEPTHS, strict=True):
        depth = len(hidden)
        for i, c in enumerate(GAINS):
            ys = curves[(depth, c)]
            n = max(len(y) for y in ys)
            ys = [y + [math.nan] * (n - len(y)) for y in ys]
            plot_band(ax, list(range(1, n + 1)), ys, f"c={c:+g}", f"C{i}")
        ys = curves[(depth, "readout")]
        plot_band(ax, list(range(1, len(ys[0]) + 1)), ys, "readout only (hidden frozen)", "k")
        ax.lines[-1].set_linestyle("--")
        ax.set_xlabel("epoch")
        ax.set_title(f"{depth} hidden layer{'s' if depth > 1 else ''} ({'-'.join(map(str, hidden))}, tanh)")
    axes[0].set_ylabel(f"test accuracy ({data})")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Learning curves by feedback gain c (mean, band = min..max over {len(seeds)} seed(s))")
    figures = [save_figure(fig, ctx.out, "dc_curves.png")]

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in runs:
        gain = r["test_accuracy"] - r["readout_baseline"]
        min_phi = min(r["phi"]) if r["phi"] else math.nan
        marker = "o" if r["hidden_layers"] == 1 else "s"
        color = "C2" if r["dc_satisfied"] else "C3"
        ax.scatter(min_phi, gain, marker=marker, color=color, s=28)
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(0, color="k", lw=0.6)
    ax.scatter([], [], marker="o", color="gray", label="1 hidden layer")
    ax.scatter([], [], marker="s", color="gray", label="2 hidden layers")
    ax.scatter([], [], color="C2", label="DC satisfied")
    ax.scatter([], [], color="C3", label="DC violated")
    ax.set_xlabel("smallest hidden-layer φ at the end (output layer φ = 1)")
    ax.set_ylabel("test accuracy - readout-only baseline")
    ax.set_title("DC vs learning, one point per run")
    ax.legend(fontsize=8)
    figures.append(save_figure(fig, ctx.out, "dc_scatter.png"))

    # ---------------------------------------------------------------- verdict
    # a diverged run (or a diverged baseline) has no DC status: it counts against the claim, never as agreement
    agree = [
        not r["diverged"] and math.isfinite(r["readout_baseline"]) and r["dc_satisfied"] == r["learns"] for r in runs
    ]
    table: dict[str, Any] = {}
    for hidden in DEPTHS:
        depth = len(hidden)
        for c in GAINS:
            sel = [r for r in runs if r["hidden_layers"] == depth and r["c"] == c]
            m, sd = mean_std([r["test_accuracy"] for r in sel])
            table[f"L{depth}_c{c:+g}"] = {
                "test_accuracy": m,
                "std": sd,
                "readout_baseline": mean_std([r["readout_baseline"] for r in sel])[0],
                "phi": [mean_std([r["phi"][i] for r in sel])[0] for i in range(depth)],
                "dc_satisfied": f"{sum(r['dc_satisfied'] for r in sel)}/{len(sel)}",
                "learns": f"{sum(r['learns'] for r in sel)}/{len(sel)}",
                "diverged": f"{sum(r['diverged'] for r in sel)}/{len(sel)}",
            }
    measured: dict[str, Any] = {
        "runs_agreeing": f"{sum(agree)}/{len(agree)}",
        "agreement": sum(agree) / len(agree),
        "dc_satisfied_and_learn": sum(r["dc_satisfied"] and r["learns"] for r in runs),
        "dc_satisfied_no_learn": sum(r["dc_satisfied"] and not r["learns"] for r in runs),
        "dc_violated_and_learn": sum(not r["dc_satisfied"] and r["learns"] for r in runs),
        "dc_violated_no_learn": sum(not r["dc_satisfied"] and not r["learns"] for r in runs),
        "diverged_runs": sum(r["diverged"] for r in runs),
        "by_config": table,
        "runs": runs,
    }
    return Verdict(
        claim=(
            "Runs that satisfy DC (every hidden φ_l > 0, like the output layer's φ_L = 1) learn; "
            "runs that violate it do not."
        ),
        measured=measured,
        threshold=(
            "every run agrees (100%): DC satisfied ⇔ final test accuracy above the same seed's readout-only "
            "baseline (hidden layers frozen, output trained); a diverged run counts as disagreeing"
        ),
        holds=all(agree),
        figures=figures,
        notes=(
            f"{data}, hidden {[list(h) for h in DEPTHS]} tanh, bilinear rule, random B(0), λ={WEIGHT_DECAY}, "
            f"η=0.05, batch 32, {epochs} epochs, seeds {seeds}; φ measured on the first 256 training samples at the "
            "end. With 1 hidden layer and c<0 the hidden neurons agree with each other (dc_score_hidden_neurons "
            "near 1) but not with the output layer: that is a DC violation once the output patch is counted."
        ),
    )
