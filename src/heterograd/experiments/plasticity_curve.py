"""``plasticity``: the plasticity curve of a hidden neuron and how learning moves its threshold (paper's Fig. 2a).

**The curve.** Take a hidden neuron ``i`` of layer 1 and one of its incoming synapses ``W_1[i, j]``.
The presynaptic activity is held fixed (one training sample ``x*``, input ``j`` = its largest
positive feature). The neuron's own activity ``h_i`` is swept by a second input current ``s``
added to its potential, ``p_i → p_i + s`` (the paper's "other pathway" ``V̄ h̄``), chosen so that
``h_i = relu(p_i + s)`` runs over a grid in ``[H_MIN, H_MAX]`` (ReLU units, so that activity is a
non-negative rate and one neuron can move the output, as in the paper's small network). At every
point the circuit runs its two signals as usual (forward with the swept ``h_i``, the output error,
the feedback pass through ``B``), and the bilinear rule proposes the single-sample update

    ΔW_ij(h_i) = -(u_i(h_i) x*_j + λ W_ij)

(per unit learning rate; the rule's formula for a batch of one). The *threshold* ``θ`` is the
first activity at which ``ΔW_ij`` changes sign (linear interpolation on the grid; a curve with no
sign change in the range has none). The same curve with the true gradient in place of ``u``,
``-(∂ℓ/∂p_i x*_j + λW_ij)``, is the *gradient curve*: its threshold is the activity at which
neuron ``i``'s contribution to the loss on ``x*`` is optimal.

Curves are taken for every neuron of layer 1, on the first few training samples, at
initialisation (random ``B``) and after training (``40 -> 32 -> 32 -> 10`` ReLU, MNIST-1D,
bilinear rule ``c = 1``, ``λ = WEIGHT_DECAY``), over several seeds.

**Verdict** (fixed before the full run):

1. *learning moves the threshold* (reported, **not counted as evidence**): over the curves (neuron, sample,
   seed) that have a threshold both at init and after learning (at least ``MIN_NEURONS`` of them), the
   median ``|θ_learned − θ_init|`` ≥ ``MOVE_MIN``. ``W``'s own learning moves the curve whatever ``B`` does,
   and the frozen-B control passes it too, so it cannot speak for plastic feedback; it is shown for both.
2. *the learned curve is the gradient's curve* (the verdict): after learning, the rule's ``ΔW_ij`` has the
   sign of the gradient curve at ≥ ``SIGN_MIN`` of all (curve, h) grid points: depression and potentiation
   switch where the gradient switches. Two controls must fail the same test, stated before the run:
   * *initialisation*: the same test before learning, where ``B`` is random and the rule's sign is unrelated
     to the gradient's (expected ≈ 0.5) (``init_fails``);
   * *frozen B*: the same circuits, seeds and samples trained under ``fa`` (``B`` fixed at ``B(0)``). Theory:
     only a plastic ``B`` reaches ``B → Wᵀ``, where ``u`` is the gradient and the signs agree by construction;
     with ``B`` frozen, ``W`` aligns with ``B`` only in part. The frozen control must fail condition 2 and may
     pass condition 1. A frozen control with a diverged seed is reported as diverged and supports nothing
     (the verdict then does not hold).

   The median gap ``|θ − θ_grad|`` is reported beside it (not thresholded: where both curves cross zero with
   a shallow slope, a small difference between ``u`` and the gradient moves the crossing far).
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from ..circuits import Circuit, Trace
from ..data import load_dataset
from ..losses import get_loss
from ..train import TrainConfig
from .base import Context, Verdict, experiment, save_figure, seeds_for, torch_threads, trainer_with

DATA = "mnist1d"
HIDDEN = (32, 32)
ACTIVATION = "relu"
WEIGHT_DECAY = 0.01
EPOCHS, QUICK_EPOCHS = 30, 6
N_SEEDS = 4
N_SAMPLES, QUICK_SAMPLES = 4, 3  # probe samples x* per seed (the first training samples)
SHOWN = 120  # curves drawn per panel (a random subset, for legibility)
MIN_NEURONS = 10  # a comparison needs this many curves with both thresholds
H_MIN, H_MAX = 0.02, 4.0
GRID = 77
MOVE_MIN = 0.2  # 5% of the swept range
SIGN_MIN = 0.8


def _forward_with_current(circuit: Circuit, x: Tensor, i: int, h_grid: Tensor) -> Trace:
    """Forward pass of ``x`` ``(1, n_0)`` repeated ``G`` times, layer-1 neuron ``i`` clamped to ``h_grid`` ``(G,)``.

    The clamp is an extra current ``s = h - p_i`` added to the neuron's potential (relu: ``h = p`` for ``p > 0``).
    """
    xs = x.expand(h_grid.shape[0], -1)
    hs: list[Tensor] = [xs]
    ps: list[Tensor | None] = [None]
    h = xs
    L = circuit.depth
    for l in range(1, L + 1):
        p = h @ circuit.W[l - 1].t() + circuit.b[l - 1]
        if l == 1:
            p = p.clone()
            p[:, i] = h_grid  # relu: h = p for p > 0
        h = (circuit.output_activation if l == L else circuit.activation).fn(p)
        ps.append(p)
        hs.append(h)
    return Trace(tuple(hs), tuple(ps))


def _backprop(circuit: Circuit, trace: Trace, e: Tensor) -> list[Tensor]:
    """True ``∂ℓ/∂p_l`` per sample for the layered circuit (``B`` replaced by ``Wᵀ``); measurement only."""
    L = circuit.depth
    g: list[Tensor] = [e.new_empty(0)] * (L + 1)
    g[L] = e
    for l in range(L - 1, 0, -1):
        p = trace.p[l]
        assert p is not None
        g[l] = circuit.activation.grad(p, trace.h[l]) * (g[l + 1] @ circuit.W[l])
    return g


def _threshold(h: np.ndarray, dw: np.ndarray) -> float:
    """First activity at which ``dw`` changes sign along ``h`` (linear interpolation); NaN if none."""
    s = np.sign(dw)
    for k in range(len(h) - 1):
        if s[k] != 0 and s[k + 1] != 0 and s[k] != s[k + 1]:
            return float(h[k] - dw[k] * (h[k + 1] - h[k]) / (dw[k + 1] - dw[k]))
    return math.nan


@torch.no_grad()
def curves(circuit: Circuit, x: Tensor, y: Tensor, weight_decay: float) -> dict[str, np.ndarray]:
    """Plasticity curves of every layer-1 neuron on one sample.

    Args:
        x: ``(1, n_0)`` the sample; y: ``(1,)`` its label.

    Returns:
        ``h`` ``(G,)`` the activity grid; ``rule`` and ``grad`` ``(n_1, G)``, the rule's and the
        gradient's ``ΔW_ij`` (``j`` = the sample's largest positive input); ``j``.
    """
    loss = get_loss("ce")
    h_grid = torch.linspace(H_MIN, H_MAX, GRID, dtype=x.dtype)
    j = int(x[0].argmax())
    n1 = circuit.sizes[1]
    rule = np.zeros((n1, GRID))
    grad = np.zeros((n1, GRID))
    for i in range(n1):
        tr = _forward_with_current(circuit, x, i, h_grid)
        yy = y.expand(GRID)
        e = circuit.output_error(tr, loss.error(tr.output, yy))  # per-sample ∂ℓ/∂p_L
        u = circuit.run_feedback(tr, e)
        g = _backprop(circuit, tr, e)
        decay = weight_decay * float(circuit.W[0][i, j])
        rule[i] = (-(u[1][:, i] * x[0, j]) - decay).numpy()
        grad[i] = (-(g[1][:, i] * x[0, j]) - decay).numpy()
    return {"h": h_grid.numpy(), "rule": rule, "grad": grad, "j": np.array(j)}


def _summarise(c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    th = np.array([_threshold(c["h"], r) for r in c["rule"]])
    thg = np.array([_threshold(c["h"], r) for r in c["grad"]])
    low, high = c["rule"][:, : GRID // 8].mean(1), c["rule"][:, -GRID // 8 :].mean(1)
    return {
        "theta": th,
        "theta_grad": thg,
        "sign_agree": (np.sign(c["rule"]) == np.sign(c["grad"])).mean(1),
        "bcm": (low < 0) & (high > 0),
        "anti_bcm": (low > 0) & (high < 0),
    }


def _match(s: dict[str, np.ndarray]) -> dict[str, Any]:
    both = np.isfinite(s["theta"]) & np.isfinite(s["theta_grad"])
    gap = float(np.median(np.abs(s["theta"][both] - s["theta_grad"][both]))) if both.any() else math.nan
    agree = float(s["sign_agree"].mean())
    return {
        "median_abs_theta_minus_theta_grad": gap,
        "neurons_with_both_thresholds": int(both.sum()),
        "sign_agreement": agree,
        "holds": bool(agree >= SIGN_MIN),
    }


def _train_and_curves(
    rule: str, seed: int, ds: Any, epochs: int, n_samples: int
) -> tuple[dict[str, list[dict[str, np.ndarray]]], float | None, bool]:
    """Curves at initialisation and after ``epochs`` of ``rule`` for one seed; the test accuracy; diverged."""
    cfg = TrainConfig(
        data=DATA,
        rule=rule,
        feedback_gain=1.0 if rule == "hsp" else None,  # hsp at c = 1, as committed (its run default is 0.5)
        hidden=HIDDEN,
        activation=ACTIVATION,
        epochs=epochs,
        seed=seed,
        weight_decay=WEIGHT_DECAY,
        probes=False,
    )
    tr = trainer_with(cfg, ds)
    xs, ys = tr.data.x_train[:n_samples], tr.data.y_train[:n_samples]
    raw: dict[str, list[dict[str, np.ndarray]]] = {}
    raw["init"] = [curves(tr.circuit, xs[k : k + 1], ys[k : k + 1], WEIGHT_DECAY) for k in range(n_samples)]
    res = tr.fit(progress=False)
    raw["learned"] = [curves(tr.circuit, xs[k : k + 1], ys[k : k + 1], WEIGHT_DECAY) for k in range(n_samples)]
    return raw, res.summary["test_accuracy"], bool(res.summary["diverged"])


def threshold_shift(cat: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Condition 1: the median ``|θ_learned − θ_init|`` over curves with both thresholds, and whether it passes.

    ``cat[k]["theta"]`` ``(C,)`` for ``k`` in ``init``, ``learned`` (NaN: no threshold on that curve).
    """
    both = np.isfinite(cat["init"]["theta"]) & np.isfinite(cat["learned"]["theta"])
    move = (
        float(np.median(np.abs(cat["learned"]["theta"][both] - cat["init"]["theta"][both]))) if both.any() else math.nan
    )
    return {
        "median_abs_threshold_shift": move,
        "neurons_with_threshold_before_and_after": int(both.sum()),
        "thresholds_move": bool(int(both.sum()) >= MIN_NEURONS and move >= MOVE_MIN),
    }


def frozen_control_verdict(shift: dict[str, Any], match: dict[str, Any], diverged: int) -> dict[str, Any]:
    """The frozen-B control per condition (``fails`` / ``passes`` / ``diverged``): it must fail condition 2."""
    if diverged:
        per = {"thresholds_move": "diverged", "learned_matches_gradient": "diverged"}
    else:
        per = {
            "thresholds_move": "passes" if shift["thresholds_move"] else "fails",
            "learned_matches_gradient": "passes" if match["holds"] else "fails",
        }
    return {
        "verdict_per_condition": per,
        "must_fail": ["learned_matches_gradient"],
        "may_pass": ["thresholds_move"],
        "control_fails_as_required": per["learned_matches_gradient"] == "fails",
    }


@experiment("plasticity")
def run(ctx: Context) -> Verdict:
    """A hidden neuron's ΔW against its activity has a threshold that learning moves to where the gradient puts it."""
    seeds = seeds_for(ctx, N_SEEDS)
    epochs = QUICK_EPOCHS if ctx.quick else EPOCHS
    n_samples = QUICK_SAMPLES if ctx.quick else N_SAMPLES
    ds = load_dataset(DATA)
    raws: dict[str, dict[str, list[dict[str, np.ndarray]]]] = {r: {"init": [], "learned": []} for r in ("hsp", "fa")}
    accs: dict[str, list[float | None]] = {"hsp": [], "fa": []}
    diverged = {"hsp": 0, "fa": 0}
    with torch_threads(1):
        for rule in ("hsp", "fa"):
            for seed in seeds:
                raw, acc, div = _train_and_curves(rule, seed, ds, epochs, n_samples)
                for k in raw:
                    raws[rule][k] += raw[k]
                accs[rule].append(acc)
                diverged[rule] += int(div)
    cats = {
        rule: {
            k: {f: np.concatenate([s[f] for s in map(_summarise, v)]) for f in _summarise(v[0])} for k, v in r.items()
        }
        for rule, r in raws.items()
    }
    cat = cats["hsp"]
    shift = threshold_shift(cat)
    match_learned, match_init = _match(cat["learned"]), _match(cat["init"])
    fa_shift, fa_match = threshold_shift(cats["fa"]), _match(cats["fa"]["learned"])
    frozen = frozen_control_verdict(fa_shift, fa_match, diverged["fa"])

    def dist(k: str) -> dict[str, Any]:
        t = cat[k]["theta"]
        f = t[np.isfinite(t)]
        q = np.quantile(f, [0.1, 0.5, 0.9]).tolist() if f.size else [math.nan] * 3
        return {
            "fraction_with_threshold": float(np.isfinite(t).mean()),
            "theta_q10_q50_q90": q,
            "fraction_bcm": float(cat[k]["bcm"].mean()),
            "fraction_anti_bcm": float(cat[k]["anti_bcm"].mean()),
        }

    measured = {
        **shift,
        "thresholds_move_counted": False,
        "learned_matches_gradient": match_learned,
        "init_matches_gradient": match_init,
        "init_fails": not match_init["holds"],
        "frozen_B_control": {
            **frozen,
            **fa_shift,
            "learned_matches_gradient": fa_match,
            "test_accuracy": accs["fa"],
            "runs": len(seeds),
            "diverged": diverged["fa"],
        },
        "init": dist("init"),
        "learned": dist("learned"),
        "test_accuracy": accs["hsp"],
        "runs": len(seeds),
        "diverged": diverged["hsp"],
    }
    holds = bool(
        match_learned["holds"]
        and not match_init["holds"]
        and frozen["control_fails_as_required"]
        and diverged["hsp"] == 0
    )
    figures = [_figure(ctx, raws["hsp"], cat, seeds)]
    table = table_markdown({"measured": measured, "holds": holds, "quick": ctx.quick})
    (ctx.out / "plasticity.md").write_text(table, encoding="utf-8")
    return Verdict(
        claim=(
            "After learning with plastic feedback, the update of a hidden neuron's synapse against the neuron's "
            "activity changes sign where the gradient's does (the rule itself is learned); neither the random "
            "initial feedback nor the same circuit with its feedback frozen (fa) gets there."
        ),
        measured=measured,
        threshold=(
            f"after learning (hsp) the rule's ΔW has the gradient curve's sign at >= {SIGN_MIN} of all (neuron, h) "
            "points, with no diverged seed; the same sign test must fail at initialisation and for the frozen-B "
            "control (fa, same seeds; a diverged control supports nothing). Reported, not counted: median "
            f"|θ_learned - θ_init| >= {MOVE_MIN} over >= {MIN_NEURONS} curves (the frozen control may pass it)"
        ),
        holds=holds,
        figures=figures,
        notes=(
            f"{DATA}, 40-{'-'.join(map(str, HIDDEN))}-10 {ACTIVATION}, bilinear rule c=1, random B(0), "
            f"λ={WEIGHT_DECAY}, "
            f"η=0.05, batch 32, {epochs} epochs, seeds {seeds}; all {HIDDEN[0]} layer-1 neurons x the first "
            f"{n_samples} training samples per seed; h swept over [{H_MIN}, {H_MAX}] "
            f"({GRID} points) by an extra current into the neuron; ΔW per unit learning rate. BCM orientation "
            "(depression at low h, potentiation at high h) is counted per curve (fraction_bcm / fraction_anti_bcm). "
            "Frozen-B control: the same seeds and samples under fa (B fixed at B(0))."
        ),
    )


def table_markdown(summary: dict[str, Any]) -> str:
    """``plasticity.md``: both conditions for hsp, its initialisation and its frozen-B control (from summary.json)."""
    m = summary["measured"]
    f = m["frozen_B_control"]
    lr, li, fl = m["learned_matches_gradient"], m["init_matches_gradient"], f["learned_matches_gradient"]
    per = f["verdict_per_condition"]
    lines = [
        f"Made by `heterograd repro plasticity{' --quick' if summary.get('quick') else ''}`; verdict: "
        f"**{'holds' if summary['holds'] else 'does not hold'}**. hsp: {m['runs']} seed(s), {m['diverged']} "
        f"diverged; frozen-B control (fa, same seeds): {f['runs']} seed(s), {f['diverged']} diverged.",
        "",
        "| | hsp at initialisation | hsp after learning | frozen B (fa) after learning |",
        "|---|---|---|---|",
        f"| 2. sign agreement with the gradient curve (verdict: >= {SIGN_MIN} after learning, both controls must "
        f"fail) | {li['sign_agreement']:.3f} ({'passes' if li['holds'] else 'fails'}) | "
        f"{lr['sign_agreement']:.3f} ({'passes' if lr['holds'] else 'fails'}) | {fl['sign_agreement']:.3f} "
        f"({per['learned_matches_gradient']}) |",
        f"| median \\|θ − θ_grad\\| (curves with both) | {li['median_abs_theta_minus_theta_grad']:.2f} "
        f"({li['neurons_with_both_thresholds']}) | {lr['median_abs_theta_minus_theta_grad']:.2f} "
        f"({lr['neurons_with_both_thresholds']}) | {fl['median_abs_theta_minus_theta_grad']:.2f} "
        f"({fl['neurons_with_both_thresholds']}) |",
        f"| 1. median \\|θ_learned − θ_init\\| (curves with both; reported, not counted) | | "
        f"{m['median_abs_threshold_shift']:.2f} ({m['neurons_with_threshold_before_and_after']}) | "
        f"{f['median_abs_threshold_shift']:.2f} ({f['neurons_with_threshold_before_and_after']}; "
        f"{per['thresholds_move']}) |",
    ]
    return "\n".join(lines) + "\n"


def _figure(
    ctx: Context, raw: dict[str, list[dict[str, np.ndarray]]], cat: dict[str, dict[str, np.ndarray]], seeds: list[int]
) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    rng = np.random.default_rng(0)
    for ax, k, color in ((axes[0], "init", "C4"), (axes[1], "learned", "C2")):
        h = raw[k][0]["h"]
        rows = np.concatenate([c["rule"] for c in raw[k]])
        rows = rows / (np.abs(rows).max(1, keepdims=True) + 1e-30)
        shown = rng.choice(rows.shape[0], size=min(SHOWN, rows.shape[0]), replace=False)
        for r in rows[shown]:
            ax.plot(h, r, color=color, lw=0.5, alpha=0.45)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("postsynaptic activity h")
        ax.set_ylabel("ΔW / max|ΔW| (each curve)")
        ax.set_title(f"{k}: {len(shown)} of {rows.shape[0]} curves ({len(seeds)} seeds)")
    bins = np.linspace(H_MIN, H_MAX, 40)
    for k, color in (("init", "C4"), ("learned", "C2")):
        t = cat[k]["theta"]
        axes[2].hist(t[np.isfinite(t)], bins=bins, histtype="step", color=color, lw=1.6, label=f"θ rule, {k}")
    t = cat["learned"]["theta_grad"]
    axes[2].hist(t[np.isfinite(t)], bins=bins, histtype="step", color="k", ls="--", label="θ gradient, learned")
    axes[2].set_xlabel("threshold θ (activity where ΔW changes sign)")
    axes[2].set_ylabel("curves (neuron x sample x seed)")
    axes[2].legend(fontsize=8)
    axes[2].set_title("threshold distribution")
    fig.suptitle("Plasticity curves of layer-1 neurons: ΔW of one synapse against the neuron's activity")
    fig.tight_layout()
    return save_figure(fig, ctx.out, "plasticity_curves.png")
