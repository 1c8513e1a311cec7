"""``rewire``: flexibility by rewiring — a circuit recovers when its input bundles are swapped (paper's Fig. 3).

**Setup.** Two input streams of the same size enter the circuit: the MNIST-1D signal (40 features,
standardised) and white Gaussian noise (40 features, unit variance, redrawn for every presentation:
the highest-frequency noise there is). Each stream feeds its own first-layer population of
``POP`` tanh units: ``W_1`` is block-diagonal (`block_mask`), the mask is
kept under plasticity, so population A only ever sees bundle 1 and population B bundle 2. Both
populations feed a shared tanh layer and a 10-way readout: ``80 -> (POP | POP) -> HIDDEN -> 10``.

At the *rewire time* RT (in epochs) the two bundles are crossed: from then on the signal enters
population B, which had learned from noise, and the noise population A. As in the paper, a run
rewired at RT continues for as many epochs after the swap as the original (never rewired) run has
in total, ``EPOCHS``; a lower final accuracy for late rewiring is then a loss of plasticity, not
fewer epochs of training. The rewired runs branch from the original run of the same seed at epoch
RT (same weights, same data order up to the swap). RT = 0 is the control: swapped from the start,
it is the original run with its two populations relabelled.

**Measurements.** Test accuracy (test signal + a fixed draw of test noise) at the end of every
epoch, and inside the first epoch after the swap at ``0, 1/16, 1/8, 1/4, 1/2`` of it (an easy
task can recover within one epoch). Per run: the pre-swap accuracy (at RT), the accuracy right
at the swap (no step taken), the lowest accuracy within the first epoch after it (the dip), the
epochs to get back to 90% of the pre-swap accuracy, the epochs the original run needed from scratch
to first reach that same level (so a recovery can be compared with learning afresh), and the final
accuracy. Every accuracy curve is written to ``curves.csv``.

**Verdict** (thresholds fixed before the full run; rules ``hsp``, ``fa``, ``bp``; holds is
decided on ``hsp``, the heterosynaptic circuit, the others are reported beside it):

1. *recovery*: every ``hsp`` run rewired at RT ≥ 1 stays finite, gets back to 90% of its
   pre-swap accuracy within its ``EPOCHS`` post-swap epochs and ends at ≥ 90% of it;
2. *late rewiring costs more*: over all (RT, seed) pairs of ``hsp`` (RT = 0 ... max, every seed,
   diverged runs counted as accuracy 0), Spearman's rank correlation between RT and final accuracy
   is ≤ ``RHO_MAX`` and a one-sided permutation test (final accuracies shuffled across all pairs,
   ``N_PERM`` shuffles) gives p ≤ ``P_MAX``: the decline must stand out of the seed-to-seed spread.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from ..circuits import Circuit, block_mask
from ..data import load_dataset
from ..losses import get_loss
from ..optim import make_motif
from ..results import write_csv
from ..rules import make_rule
from ..train import apply_steps, evaluate, local_step
from .base import Context, Verdict, experiment, mean_std, save_figure, torch_threads

DATA = "mnist1d"
POP = 128
HIDDEN = 64
LR = 0.05
WEIGHT_DECAY = 1e-4
BATCH = 32
RULES = ("hsp", "fa", "bp")
EPOCHS, REWIRE_TIMES, N_SEEDS = 60, (0, 1, 5, 10, 30, 50), 6
QUICK_EPOCHS, QUICK_REWIRE_TIMES, QUICK_SEEDS = 4, (0, 1, 2, 4), 3  # several seeds: the verdict is a rank test
WITHIN_FIRST = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2)  # fractions of the first epoch after the swap
RECOVER_FRACTION = 0.9
RHO_MAX = -0.3
P_MAX = 0.05
N_PERM = 4000


@dataclass
class _Learner:
    """A circuit with its rule and optimiser state (what a branch copies)."""

    circuit: Circuit
    rule: Any
    rule_state: Any
    motif: Any
    motif_state: Any
    gen: torch.Generator
    diverged: bool = False


def _two_streams(signal: Tensor, noise: Tensor, swapped: bool) -> Tensor:
    """``(n, 2D)`` input: ``[signal, noise]``, or ``[noise, signal]`` after rewiring."""
    return torch.cat([noise, signal] if swapped else [signal, noise], dim=1)


def _new_learner(rule_name: str, d: int, seed: int) -> _Learner:
    mask = block_mask([d, d], [POP, POP])
    circuit = Circuit([2 * d, 2 * POP, HIDDEN, 10], "tanh", forward_masks={1: mask}, seed=seed)
    rule = make_rule(rule_name, weight_decay=WEIGHT_DECAY, feedback_gain=1.0 if rule_name == "hsp" else None)
    motif = make_motif("sgd", lr=LR)
    return _Learner(
        circuit,
        rule,
        rule.init(circuit),
        motif,
        motif.init(circuit.plastic_tensors()),
        torch.Generator().manual_seed(10_000 + seed),
    )


def _accuracy(lr: _Learner, x_test: Tensor, noise_test: Tensor, y_test: Tensor, swapped: bool) -> float:
    if lr.diverged:
        return math.nan
    _, acc = evaluate(lr.circuit, get_loss("ce"), _two_streams(x_test, noise_test, swapped), y_test)
    return float(acc) if acc is not None else math.nan


def _train(
    lr: _Learner,
    data: Any,
    noise_test: Tensor,
    swapped: bool,
    epochs: int,
    t0: float,
    within: tuple[float, ...] = (),
    *,
    fixed_noise: Tensor | None = None,
    schedule: Callable[[int], float] | None = None,
) -> list[tuple[float, float]]:
    """Train ``epochs`` epochs; returns ``(epoch, test accuracy)`` at each epoch end and at ``within`` (epoch 1).

    Args:
        fixed_noise: ``(N_train, D)`` one fixed noise pattern per training image (used in place of a fresh
            draw at every presentation); ``None``: white noise redrawn for every presentation.
        schedule: the step size of absolute epoch ``t`` (``t0 + e``); ``None``: the constant ``LR``.
    """
    loss = get_loss("ce")
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    spe = n // BATCH
    at = {round(f * spe): f for f in within}
    curve: list[tuple[float, float]] = []
    for e in range(epochs):
        if schedule is not None:
            lr.motif = make_motif("sgd", lr=schedule(int(t0) + e))
        order = torch.randperm(n, generator=lr.gen)
        for i in range(spe):
            if e == 0 and i in at:
                curve.append((t0 + at[i], _accuracy(lr, data.x_test, noise_test, data.y_test, swapped)))
            if lr.diverged:
                continue
            idx = order[i * BATCH : (i + 1) * BATCH]
            noise = torch.randn(len(idx), x.shape[1], generator=lr.gen) if fixed_noise is None else fixed_noise[idx]
            out = local_step(lr.circuit, lr.rule, lr.rule_state, loss, _two_streams(x[idx], noise, swapped), y[idx])
            lr.rule_state = out.rule_state
            if not math.isfinite(float(out.loss)):
                lr.diverged = True
                continue
            st, lr.motif_state = lr.motif.update(out.deltas.flat(), lr.motif_state, lr.circuit.plastic_tensors())
            apply_steps(lr.circuit, st)
        if not all(bool(torch.isfinite(p).all()) for p in lr.circuit.plastic_tensors()):
            lr.diverged = True
        curve.append((t0 + e + 1, _accuracy(lr, data.x_test, noise_test, data.y_test, swapped)))
    return curve


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (1-based)."""
    order = np.argsort(a, kind="mergesort")
    r = np.empty(len(a), dtype=float)
    r[order] = np.arange(1, len(a) + 1)
    for v in np.unique(a):
        sel = a == v
        r[sel] = r[sel].mean()
    return r


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two equal-length samples (ties averaged); NaN if one is constant."""
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum()) / den if den > 0 else math.nan


def permutation_p_negative(x: np.ndarray, y: np.ndarray, n_perm: int, seed: int) -> float:
    """One-sided p-value that ``spearman(x, y)`` is this negative by chance (``y`` shuffled ``n_perm`` times)."""
    rho = spearman(x, y)
    if not math.isfinite(rho):
        return math.nan
    rng = np.random.default_rng(seed)
    hits = sum(spearman(x, rng.permutation(y)) <= rho for _ in range(n_perm))
    return (hits + 1) / (n_perm + 1)


def _median_or_none(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


def _run_metrics(
    rt: int, pre_curve: list[tuple[float, float]], post: list[tuple[float, float]], diverged: bool
) -> dict[str, Any]:
    pre = dict(pre_curve)[float(rt)]
    first = [a for t, a in post if t <= rt + 1]
    target = RECOVER_FRACTION * pre
    rec = next((t - rt for t, a in post if t > rt and math.isfinite(a) and a >= target), None)
    scratch = next((t for t, a in pre_curve if t > 0 and math.isfinite(a) and a >= target), None)
    final = post[-1][1]
    return {
        "rt": rt,
        "pre_swap": pre,
        "at_swap": post[0][1],
        "first_epoch_min": min(first) if first and all(map(math.isfinite, first)) else math.nan,
        "first_eval": dict(post).get(float(rt + 1), math.nan),
        "epochs_to_recover_90": rec,
        "scratch_epochs_to_same_level": scratch,
        "final": final,
        "diverged": diverged,
    }


def seed_runs(
    rule_name: str,
    seed: int,
    ds: Any,
    epochs: int,
    rts: tuple[int, ...],
    *,
    fixed_noise: Tensor | None = None,
    schedule: Callable[[int], float] | None = None,
) -> tuple[list[dict[str, Any]], dict[int | str, list[tuple[float, float]]]]:
    """The original run of one (rule, seed) and its branches rewired at each RT in ``rts``.

    Returns one metrics dict per run (the original: ``rt`` ``None``) and the ``(epoch, accuracy)`` curves keyed
    by RT (``"none"``: the original). ``fixed_noise`` / ``schedule``: see `_train` (the ablation's conditions).
    """
    d = ds.x_train.shape[1]
    noise_test = torch.randn(ds.x_test.shape, generator=torch.Generator().manual_seed(20_000 + seed))
    kw: dict[str, Any] = {"fixed_noise": fixed_noise, "schedule": schedule}
    lr = _new_learner(rule_name, d, seed)
    orig: list[tuple[float, float]] = [(0.0, _accuracy(lr, ds.x_test, noise_test, ds.y_test, False))]
    snaps: dict[int, _Learner] = {}
    for e in range(epochs + 1):
        if e in rts:
            snaps[e] = copy.deepcopy(lr)
        if e < epochs:
            orig += _train(lr, ds, noise_test, False, 1, float(e), **kw)
    curves: dict[int | str, list[tuple[float, float]]] = {"none": orig}
    runs: list[dict[str, Any]] = [
        {"rule": rule_name, "seed": seed, "rt": None, "final": orig[-1][1], "diverged": lr.diverged}
    ]
    for rt, snap in snaps.items():
        post = _train(snap, ds, noise_test, True, epochs, float(rt), WITHIN_FIRST, **kw)
        curves[rt] = orig[: rt + 1] + post
        runs.append({"rule": rule_name, "seed": seed, **_run_metrics(rt, orig, post, snap.diverged)})
    return runs, curves


def counts(values: list[float], diverged: list[bool]) -> dict[str, int]:
    """``{"runs": n, "diverged": k}``: how many runs an aggregate covers and how many of them diverged."""
    return {
        "runs": len(values),
        "diverged": sum(bool(d) or not math.isfinite(v) for v, d in zip(values, diverged, strict=True)),
    }


def _nanmedian(values: list[float]) -> float:
    """Median over the finite values (NaN if none); always reported beside `counts`."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.median(v)) if v else math.nan


def rule_statistics(rr_all: list[dict[str, Any]], rts: tuple[int, ...], n_perm: int, seed: int) -> dict[str, Any]:
    """The verdict's numbers for one rule's runs (as `seed_runs` returns them, every seed together).

    Medians are over the runs that stayed finite, each with ``runs`` / ``diverged`` beside it; the rank test
    counts a diverged run as accuracy 0.
    """
    rr = [r for r in rr_all if r["rt"] is not None]
    xs = np.array([r["rt"] for r in rr], float)
    ys = np.array([0.0 if r["diverged"] or not math.isfinite(r["final"]) else r["final"] for r in rr])
    rho = spearman(xs, ys)
    p = permutation_p_negative(xs, ys, n_perm, seed=seed)
    late = [r for r in rr if r["rt"] >= 1]
    recovered = [
        (not r["diverged"]) and r["epochs_to_recover_90"] is not None and r["final"] >= RECOVER_FRACTION * r["pre_swap"]
        for r in late
    ]
    table: dict[str, Any] = {}
    none = [r for r in rr_all if r["rt"] is None]
    none_final = [r["final"] for r in none]
    table["none"] = {
        "median_final": _nanmedian(none_final),
        "mean_std": mean_std(none_final),
        **counts(none_final, [r["diverged"] for r in none]),
    }
    for rt in rts:
        sel = [r for r in rr if r["rt"] == rt]
        finals = [r["final"] for r in sel]
        rec = [r["epochs_to_recover_90"] for r in sel if r["epochs_to_recover_90"] is not None]
        table[str(rt)] = {
            "median_final": _nanmedian(finals),
            "mean_std": mean_std(finals),
            **counts(finals, [r["diverged"] for r in sel]),
            "median_pre_swap": _nanmedian([r["pre_swap"] for r in sel]),
            "median_at_swap": _nanmedian([r["at_swap"] for r in sel]),
            "median_first_epoch_min": _nanmedian([r["first_epoch_min"] for r in sel]),
            "median_first_eval": _nanmedian([r["first_eval"] for r in sel]),
            "median_epochs_to_recover_90": float(np.median(rec)) if rec else None,
            "recovered_runs": len(rec),
            "median_scratch_epochs_to_same_level": _median_or_none([r["scratch_epochs_to_same_level"] for r in sel]),
        }
    return {
        "spearman_rt_final": rho,
        "permutation_p": p,
        "late_costs_more": bool(math.isfinite(rho) and rho <= RHO_MAX and p <= P_MAX),
        "rank_test_pairs": len(rr),
        "rank_test_diverged_as_0": int(sum(r["diverged"] or not math.isfinite(r["final"]) for r in rr)),
        "recovered": f"{sum(recovered)}/{len(recovered)}",
        "all_recover": bool(recovered) and all(recovered),
        "by_rt": table,
    }


@experiment("rewire")
def run(ctx: Context) -> Verdict:
    """After the input bundles are swapped, accuracy recovers; the later the swap, the lower the final accuracy."""
    epochs = QUICK_EPOCHS if ctx.quick else EPOCHS
    rts = QUICK_REWIRE_TIMES if ctx.quick else REWIRE_TIMES
    seeds = [ctx.seed + i for i in range(QUICK_SEEDS if ctx.quick else N_SEEDS)]
    ds = load_dataset(DATA)
    d = ds.x_train.shape[1]
    runs: list[dict[str, Any]] = []
    curves: dict[tuple[str, int | str, int], list[tuple[float, float]]] = {}
    with torch_threads(1):
        for rule_name in RULES:
            for seed in seeds:
                rs, cs = seed_runs(rule_name, seed, ds, epochs, rts)
                runs += rs
                curves.update({(rule_name, k, seed): c for k, c in cs.items()})

    # ---------------------------------------------------------------- statistics
    by_rule = {
        rule_name: rule_statistics(
            [r for r in runs if r["rule"] == rule_name], rts, N_PERM if not ctx.quick else 1000, ctx.seed
        )
        for rule_name in RULES
    }

    # ---------------------------------------------------------------- raw curves and figures
    write_csv(
        ctx.out / "curves.csv",
        [
            {"rule": k[0], "rt": k[1], "seed": k[2], "epoch": t, "test_accuracy": a}
            for k, c in curves.items()
            for t, a in c
        ],
    )
    figures = [_box_figure(ctx, runs, rts, seeds), _curve_figure(ctx, curves, rts, seeds, epochs)]
    figures.append(_dip_figure(ctx, curves, rts, seeds))

    h = by_rule["hsp"]
    measured = {
        "by_rule": by_rule,
        "hsp_spearman_rt_final": h["spearman_rt_final"],
        "hsp_permutation_p": h["permutation_p"],
        "hsp_recovered": h["recovered"],
        "runs": runs,
    }
    return Verdict(
        claim=(
            "After the two input bundles are swapped at rewire time RT, the heterosynaptic circuit (hsp) recovers "
            "its accuracy, and the later the swap, the lower the final accuracy (plasticity declines with training)."
        ),
        measured=measured,
        threshold=(
            f"hsp: every run rewired at RT >= 1 stays finite, gets back to {RECOVER_FRACTION:.0%} of its pre-swap "
            f"accuracy and ends at >= {RECOVER_FRACTION:.0%} of it; AND Spearman rho(RT, final accuracy) over all "
            f"(RT, seed) pairs <= {RHO_MAX} with one-sided permutation p <= {P_MAX} (diverged runs count as 0)"
        ),
        holds=bool(h["all_recover"] and h["late_costs_more"]),
        figures=figures,
        notes=(
            f"{DATA} signal + white Gaussian noise, 2x{d} inputs -> 2x{POP} (block-masked W_1) -> {HIDDEN} -> 10 tanh, "
            f"η={LR}, λ={WEIGHT_DECAY}, batch {BATCH}, {epochs} epochs for the original run and {epochs} after each "
            f"swap, RT in {list(rts)}, seeds {seeds}, rules {list(RULES)} (fa/bp reported beside hsp)."
        ),
    )


def _n_label(rs: list[dict[str, Any]]) -> str:
    """``n=6`` or ``n=6, 1 div.``: the runs an aggregate covers and how many diverged."""
    k = sum(bool(r["diverged"]) or not math.isfinite(r["final"]) for r in rs)
    return f"n={len(rs)}" + (f", {k} div." if k else "")


def _box_figure(
    ctx: Context,
    runs: list[dict[str, Any]],
    rts: tuple[int, ...],
    seeds: list[int],
    rules: tuple[str, ...] = RULES,
    name: str = "rewire_final_box.png",
) -> str:
    fig, axes = plt.subplots(1, len(rules), figsize=(4.6 * len(rules), 4.0), sharey=True)
    for ax, rule_name in zip(np.atleast_1d(axes), rules, strict=True):
        sel = [[r for r in runs if r["rule"] == rule_name and r["rt"] is None]]
        sel += [[r for r in runs if r["rule"] == rule_name and r["rt"] == rt] for rt in rts]
        groups = [[100 * r["final"] for r in g if math.isfinite(r["final"])] or [math.nan] for g in sel]
        ticks = [f"{t}\n{_n_label(g)}" for t, g in zip(["none", *map(str, rts)], sel, strict=True)]
        ax.boxplot(groups, tick_labels=ticks)
        ax.tick_params(axis="x", labelsize=7)
        ax.axhline(float(np.nanmedian(groups[0])), color="gray", ls="--", lw=0.8)
        ax.set_xlabel("rewire time RT (epochs)")
        ax.set_title(rule_name)
    np.atleast_1d(axes)[0].set_ylabel("final test accuracy (%)")
    fig.suptitle(
        f"Final accuracy against rewire time ({len(seeds)} seeds; n = runs per box, div. = diverged runs, left out of "
        "the box; dashed: median without rewiring)"
    )
    fig.tight_layout()
    return save_figure(fig, ctx.out, name)


def _mean_curve(cs: list[list[tuple[float, float]]]) -> tuple[list[float], list[float], int]:
    """Mean accuracy curve over runs (finite values only) and how many runs ended non-finite (diverged)."""
    ts = [t for t, _ in cs[0]]
    vals = np.array([[a for _, a in c] for c in cs], float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(vals, 0)
    return ts, list(mean), int((~np.isfinite(vals[:, -1])).sum())


def _curve_label(label: str, n: int, k: int) -> str:
    return f"{label} (n={n}" + (f", {k} div." if k else "") + ")"


def _curve_figure(
    ctx: Context,
    curves: dict[Any, list[tuple[float, float]]],
    rts: tuple[int, ...],
    seeds: list[int],
    epochs: int,
    rules: tuple[str, ...] = RULES,
    name: str = "rewire_curves.png",
) -> str:
    fig, axes = plt.subplots(1, len(rules), figsize=(4.6 * len(rules), 3.8), sharey=True)
    for ax, rule_name in zip(np.atleast_1d(axes), rules, strict=True):
        ts, m, k = _mean_curve([curves[(rule_name, "none", s)] for s in seeds])
        ax.plot(ts, [100 * v for v in m], "k--", lw=1.2, label=_curve_label("original", len(seeds), k))
        for i, rt in enumerate(rts):
            ts, m, k = _mean_curve([curves[(rule_name, rt, s)] for s in seeds])
            ax.plot(ts, [100 * v for v in m], color=f"C{i}", lw=1, label=_curve_label(f"RT={rt}", len(seeds), k))
        ax.set_xlabel("epoch")
        ax.set_title(rule_name)
        ax.legend(fontsize=6)
    np.atleast_1d(axes)[0].set_ylabel("test accuracy (%)")
    fig.suptitle(
        f"Test accuracy against epoch, mean over the finite runs of {len(seeds)} seeds (n = runs, div. = diverged; "
        f"{epochs} epochs after each swap)"
    )
    return save_figure(fig, ctx.out, name)


def _dip_figure(
    ctx: Context, curves: dict[Any, list[tuple[float, float]]], rts: tuple[int, ...], seeds: list[int]
) -> str:
    fig, axes = plt.subplots(1, len(RULES), figsize=(4.2 * len(RULES), 3.6), sharey=True)
    for ax, rule_name in zip(axes, RULES, strict=True):
        for i, rt in enumerate(rts):
            if rt == 0:
                continue
            ts, m, k = _mean_curve([curves[(rule_name, rt, s)] for s in seeds])
            pts = [(t - rt, 100 * v) for t, v in zip(ts, m, strict=True) if -2 <= t - rt <= 4]
            label = _curve_label(f"RT={rt}", len(seeds), k)
            ax.plot(*zip(*pts, strict=True), marker=".", color=f"C{i}", lw=1, label=label)
        ax.axvline(0, color="gray", lw=0.8)
        ax.set_xlabel("epochs since the swap")
        ax.set_title(rule_name)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle("The dip at the swap, with evaluations inside the first epoch (mean over the finite runs)")
    return save_figure(fig, ctx.out, "rewire_dip.png")
