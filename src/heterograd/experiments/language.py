"""``language``: a character-level GPT trained by kp and hsp, against backprop, DFA and FA.

The model is the zoo's transformer as a causal language model (``heterograd train --model gpt``): token and
position embeddings, pre-norm blocks of causal self-attention and a GELU MLP, a final LayerNorm and a linear
head over the characters. `FULL` is 4 blocks of 4 heads, width 128, windows of 128 characters (0.8 M
weights), on the first 2 MiB of the running Python's standard library (``--data pystdlib:2``: 90 % train, 5 %
validation, 5 % test by position). Every rule trains with Adam (betas 0.9, 0.999), a cosine step-size schedule,
batch 16 and the rule's own weight decay ``λ = 1e-4`` (on ``W``, ``b``, ``B`` and the LayerNorm parameters);
``hsp`` runs with feedback gain ``c = 0.5`` (`HSP_GAIN`; at ``c = 1`` it is ``kp``). Under Adam the
per-synapse normalisation divides a constant gain out of ``B``'s steps, so ``hsp`` is expected to follow ``kp``
closely (up to Adam's ``ε`` and the weight decay); the report says so.

**Step size, an equal budget per rule.** Every rule gets the same grid of Adam step sizes (`Scale.lrs`),
one run of `Scale.tune_steps` steps per grid point on seed ``s``, and the step size with the lowest
validation bits per character is kept (a diverged run counts as infinitely bad; the test part is never read
for the choice). The final runs train `Scale.final_steps` steps on seeds ``s+1, s+2`` at that step size.
The grid is a stand-in for ``heterograd tune`` (the choice is `select_lr`, one function, so a study can
replace it with the same budget per rule).

**Where attention's feedback goes.** Every weight (embeddings, the ``qkv`` and output projections, the MLP, the
head, the LayerNorms) learns by the rule from its own local signals. The softmax and the ``q·kᵀ`` and
``attention·v`` products have no weights: the feedback passes through them by autograd's exact derivative, as
in every published FA/DFA transformer. "Local" applies to every weight, not to these parameter-free operations.
``dfa`` sends each position's output error to every layer through a fixed random matrix ``D`` ``(V, d_in)``
shared by the positions (per-token DFA, as in Launay et al. 2020).

**Verdict (fixed before running).** kp and hsp each reach a mean validation bits per character (over the final
seeds) within 5 % of bp's (``≤ 1.05 × bp``) and below dfa's and fa's means. A diverged run makes its rule's
mean NaN, and a NaN is never beaten nor beating: the comparison it enters fails, so a diverged kp, hsp, bp,
dfa or fa run each fails the claim (as in every heterograd verdict: a diverged comparator supports nothing).

**Published context.** Launay et al. 2020 (*Direct Feedback Alignment Scales to Modern Deep Learning Tasks and
Architectures*) trained a 6-layer transformer on WikiText-103 to word-level perplexity 52.0 with DFA against
29.8 with backprop (1.75×); Filipovich et al. 2022 found DFA never more compute-efficient than backprop on
decoder-only transformers. Our perplexities are per character, so only the direction of the ratios compares.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from ..config import TrainConfig
from ..results import atomic_write_text, read_csv, write_json
from ..train_module import ModuleTrainer
from .base import Context, Verdict, experiment, mean_std, plot_band, save_figure, torch_threads

RULES: tuple[str, ...] = ("bp", "kp", "hsp", "dfa", "fa")
CLAIMED: tuple[str, ...] = ("kp", "hsp")
RANDOM_FEEDBACK: tuple[str, ...] = ("dfa", "fa")
LABELS = {"bp": "BP", "kp": "KP", "hsp": "HSP (c = 0.5)", "dfa": "DFA", "fa": "FA"}
HSP_GAIN = 0.5
#: kp and hsp must reach at most this multiple of bp's validation bits per character.
TOLERANCE = 1.05
#: Launay et al. 2020, WikiText-103, 6-layer transformer: word-level test perplexity.
LAUNAY = {"bp": 29.8, "dfa": 52.0}


@dataclass(frozen=True)
class Scale:
    """The size of the experiment.

    Attributes:
        data: the corpus (``None``: the generated text of `quick_corpus`).
        layers, heads, dim, block: the GPT's sizes.
        batch_size: windows per step.
        lrs: the grid of Adam step sizes every rule gets.
        tune_steps, final_steps: steps per grid run, per final run.
        steps_per_eval: steps between validation evaluations (and probes, and checkpoints).
        final_seeds: final runs per rule (seeds ``s+1, ...``).
        eval_windows: validation / test windows read per evaluation (``None``: all).
        probe_windows: windows of the probe batch.
        workers: runs in parallel (one thread each).
    """

    data: str | None
    layers: int
    heads: int
    dim: int
    block: int
    batch_size: int
    lrs: tuple[float, ...]
    tune_steps: int
    final_steps: int
    steps_per_eval: int
    final_seeds: int
    eval_windows: int | None
    probe_windows: int
    workers: int


FULL = Scale(data="pystdlib:2", layers=4, heads=4, dim=128, block=128, batch_size=16, lrs=(3e-4, 1e-3, 3e-3),
             tune_steps=400, final_steps=1200, steps_per_eval=100, final_seeds=2, eval_windows=400,
             probe_windows=16, workers=2)  # fmt: skip
QUICK = Scale(data=None, layers=1, heads=2, dim=32, block=32, batch_size=16, lrs=(1e-3, 1e-2), tune_steps=10,
              final_steps=20, steps_per_eval=10, final_seeds=1, eval_windows=16, probe_windows=4,
              workers=1)  # fmt: skip


def quick_corpus(path: Path, seed: int = 0, lines: int = 2500) -> str:
    """Write a small generated text (Python-like lines from 14 words, seeded) to ``path``; returns ``text:path``."""
    words = ["def", "return", "if", "else", "for", "in", "range", "x", "y", "print", "class", "self", "import", "None"]
    rng = random.Random(seed)
    text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) for _ in range(lines)) + "\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return f"text:{path}"


def config_of(rule: str, lr: float, seed: int, steps: int, scale: Scale, data: str) -> TrainConfig:
    """The training configuration of one run (the same recipe for every rule)."""
    return TrainConfig(
        data=data,
        model="gpt",
        model_options={"layers": scale.layers, "heads": scale.heads, "dim": scale.dim, "block": scale.block},
        rule=rule,
        seed=seed,
        lr=lr,
        optimizer="adam",
        schedule="cosine",
        batch_size=scale.batch_size,
        epochs=max(1, steps // scale.steps_per_eval),
        n_train=scale.steps_per_eval * scale.batch_size,
        n_test=scale.eval_windows,
        log_every=scale.steps_per_eval,
        probe_size=scale.probe_windows,
        checkpoint_every=scale.steps_per_eval,
        feedback_gain=HSP_GAIN if rule == "hsp" else None,
    )


def _floats(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        try:
            out[k] = float(v) if v not in ("", None) else None
        except ValueError:
            out[k] = v
    return out


def _run_one(job: tuple[TrainConfig, str | None, bool]) -> dict[str, Any]:
    """Train one configuration into its folder, or pick up what an earlier call left there.

    A finished run (``summary.json`` beside a matching ``config.json``) is read back; an interrupted one
    (``checkpoint.pt``) continues to the same numbers as an uninterrupted run; anything else starts afresh.
    """
    cfg, folder, outputs = job
    if folder is None:  # quick: nothing kept on disk
        with torch_threads(1):
            res = ModuleTrainer(cfg).fit(None, progress=False, handle_signals=False)
        return {"summary": res.summary, "rows": res.rows}
    out = Path(folder)
    with torch_threads(1):
        if (out / "summary.json").is_file() and (out / "config.json").is_file():
            recorded = json.loads((out / "config.json").read_text(encoding="utf-8"))
            wanted = json.loads(json.dumps(dataclasses.replace(cfg).validate().to_dict()))
            if wanted.get("loss") is None:  # a --model run records the one loss it trains with
                wanted["loss"] = "ce"
            same = all(recorded.get(k) == v for k, v in wanted.items())
            if same:
                summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
                rows = [_floats(r) for r in read_csv(out / "metrics.csv")]
                return {"summary": summary, "rows": rows}
        if (out / "checkpoint.pt").is_file() and not (out / "summary.json").is_file():
            tr = ModuleTrainer.resume(out)
        else:
            tr = ModuleTrainer(cfg)
        tr.text_outputs = outputs  # samples.txt and final weights: only for the final runs
        res = tr.fit(out, progress=False, handle_signals=False, overwrite=tr.resumed_from is None)
    return {"summary": res.summary, "rows": res.rows}


def _run_all(jobs: list[tuple[TrainConfig, str | None, bool]], workers: int) -> list[dict[str, Any]]:
    if workers <= 1:
        return [_run_one(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(_run_one, jobs))


def val_bpc(summary: dict[str, Any]) -> float:
    """Validation bits per character of a run (NaN for a diverged run)."""
    v = summary.get("val_bpc")
    return math.nan if summary.get("diverged") or v is None else float(v)


def select_lr(grid: dict[float, float]) -> float:
    """The step size with the lowest validation bits per character (NaN = diverged: never chosen unless all are;
    ties go to the smaller step size)."""
    finite = {lr: v for lr, v in grid.items() if math.isfinite(v)}
    if not finite:
        return min(grid)
    return min(finite, key=lambda lr: (finite[lr], lr))


def judge(bpc: dict[str, list[float]]) -> tuple[bool, dict[str, dict[str, Any]]]:
    """The verdict from each rule's final validation bits per character (one per seed, NaN = diverged).

    For kp and hsp: mean ``≤ TOLERANCE ×`` bp's mean, and below the dfa and fa means. A NaN (diverged) mean
    fails every comparison it enters, whichever side it is on. Returns ``(holds, checks)``, ``checks[rule]`` the
    ratio to bp and each comparison.
    """
    means = {r: mean_std(v)[0] for r, v in bpc.items()}
    bp = means.get("bp", math.nan)
    holds = True
    checks: dict[str, dict[str, Any]] = {}
    for rule in CLAIMED:
        m = means.get(rule, math.nan)
        ok_bp = math.isfinite(m) and math.isfinite(bp) and m <= TOLERANCE * bp
        row: dict[str, Any] = {
            "ratio_to_bp": m / bp if math.isfinite(m) and math.isfinite(bp) else math.nan,
            "within_5pct_of_bp": bool(ok_bp),
        }
        for other in RANDOM_FEEDBACK:
            o = means.get(other, math.nan)
            row[f"below_{other}"] = bool(math.isfinite(m) and math.isfinite(o) and m < o)
        checks[rule] = row
        holds = holds and row["within_5pct_of_bp"] and all(row[f"below_{o}"] for o in RANDOM_FEEDBACK)
    return bool(holds), checks


def _mean_of(summaries: list[dict[str, Any]], key: str, i: int) -> float:
    """Mean over runs of ``summary[key][i]`` (a layer's final φ or align); NaN when there is no run."""
    return mean_std([s[key][i] for s in summaries])[0] if summaries else math.nan


def _curve(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs = [float(r["step"]) for r in rows if r.get(key) not in (None, "")]
    ys = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return xs, ys


@experiment("language")
def run(ctx: Context) -> Verdict:
    """kp and hsp train a character-level GPT within 5 % of bp's validation bits per character, below DFA and FA."""
    scale = QUICK if ctx.quick else FULL
    data = scale.data or quick_corpus(ctx.out / "quick_corpus.txt", ctx.seed)
    runs = ctx.out / "runs"

    def folder(name: str) -> str | None:  # quick runs keep no run folder (no per-run figures, checkpoints, samples)
        return None if ctx.quick else str(runs / name)

    final_seeds = [ctx.seed + 1 + i for i in range(scale.final_seeds)]

    # ---------------------------------------------------------------- the grid: same budget for every rule
    tune_jobs: list[tuple[TrainConfig, str | None, bool]] = []
    tune_keys: list[tuple[str, float]] = []
    for rule in RULES:
        for lr in scale.lrs:
            cfg = config_of(rule, lr, ctx.seed, scale.tune_steps, scale, data)
            tune_jobs.append((cfg, folder(f"tune-{rule}-lr{lr:g}-s{ctx.seed}"), False))
            tune_keys.append((rule, lr))
    tuned = dict(zip(tune_keys, _run_all(tune_jobs, scale.workers), strict=True))
    grid = {rule: {lr: val_bpc(tuned[(rule, lr)]["summary"]) for lr in scale.lrs} for rule in RULES}
    chosen = {rule: select_lr(grid[rule]) for rule in RULES}

    # ---------------------------------------------------------------- final runs at the chosen step size
    final_jobs: list[tuple[TrainConfig, str | None, bool]] = []
    final_keys: list[tuple[str, int]] = []
    for rule in RULES:
        for seed in final_seeds:
            cfg = config_of(rule, chosen[rule], seed, scale.final_steps, scale, data)
            final_jobs.append((cfg, folder(f"final-{rule}-lr{chosen[rule]:g}-s{seed}"), True))
            final_keys.append((rule, seed))
    final = dict(zip(final_keys, _run_all(final_jobs, scale.workers), strict=True))

    # ---------------------------------------------------------------- numbers
    table: dict[str, Any] = {}
    for rule in RULES:
        sums = [final[(rule, s)]["summary"] for s in final_seeds]
        vb = [val_bpc(s) for s in sums]
        tb = [math.nan if s["diverged"] else float(s["test_bpc"]) for s in sums]
        m, sd = mean_std(vb)
        layers = sums[0]["layers"]
        kept = [s for s in sums if not s["diverged"]]
        table[rule] = {
            "lr": chosen[rule],
            "val_bpc": m,
            "val_bpc_std": sd,
            "val_bpc_runs": vb,
            "val_perplexity": 2.0**m if math.isfinite(m) else math.nan,
            "test_bpc": mean_std(tb)[0],
            "test_bpc_runs": tb,
            "diverged": sum(bool(s["diverged"]) for s in sums),
            "runs": len(sums),
            "phi": {n: _mean_of(kept, "phi", i) for i, n in enumerate(layers)},
            "align": {n: _mean_of(kept, "align", i) for i, n in enumerate(layers)},
            "tune_val_bpc": {f"{lr:g}": grid[rule][lr] for lr in scale.lrs},
            "tune_diverged": sum(bool(tuned[(rule, lr)]["summary"]["diverged"]) for lr in scale.lrs),
        }
    holds, checks = judge({r: table[r]["val_bpc_runs"] for r in RULES})
    bp = table["bp"]["val_bpc"]
    ppl_ratio = {r: 2.0 ** (table[r]["val_bpc"] - bp) for r in RULES if r != "bp"}
    sample = ""
    first = runs / f"final-kp-lr{chosen['kp']:g}-s{final_seeds[0]}" / "samples.txt"
    if first.is_file():
        sample = first.read_text(encoding="utf-8")

    # ---------------------------------------------------------------- report
    def cell(v: dict[str, Any]) -> str:
        if not math.isfinite(v["val_bpc"]):
            return f"diverged ({v['diverged']}/{v['runs']})"
        return f"{v['val_bpc']:.3f} ± {v['val_bpc_std']:.3f}"

    src = "generated text (quick)" if scale.data is None else f"`--data {scale.data}`"
    lines = [
        "# Character-level language model: kp and hsp against backprop, DFA and FA",
        "",
        f"GPT of {scale.layers} block(s), {scale.heads} head(s), width {scale.dim}, windows of {scale.block} "
        f"characters, on {src}; Adam with a cosine schedule, batch {scale.batch_size}, weight decay 1e-4 inside "
        f"each rule; hsp with c = {HSP_GAIN}. Step size per rule: the best validation bits per character of the "
        f"grid {', '.join(f'{lr:g}' for lr in scale.lrs)} ({scale.tune_steps} steps each, seed {ctx.seed}); final "
        f"runs {scale.final_steps} steps on seeds {final_seeds}. Validation and test read "
        f"{'all' if scale.eval_windows is None else scale.eval_windows} windows of their part.",
        "",
        "| rule | step size | validation bits/char (mean ± std) | × bp | char perplexity × bp | test bits/char | "
        "diverged (final) | diverged (grid) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rule in RULES:
        v = table[rule]
        ratio = v["val_bpc"] / bp if math.isfinite(v["val_bpc"]) and math.isfinite(bp) else math.nan
        pr = ppl_ratio.get(rule, 1.0)
        lines.append(
            f"| {LABELS[rule]} | {v['lr']:g} | {cell(v)} | {ratio:.3f} | {pr:.3f} | {v['test_bpc']:.3f} | "
            f"{v['diverged']}/{v['runs']} | {v['tune_diverged']}/{len(scale.lrs)} |"
        )
    lines += [
        "",
        f"**Verdict: {'holds' if holds else 'does not hold'}.** Claim fixed before running: kp and hsp within 5 % "
        "of bp's validation bits per character and below dfa and fa; a diverged run of any rule fails the claim.",
        "",
        "Published context: Launay et al. 2020, 6-layer transformer on WikiText-103, word-level perplexity DFA "
        f"{LAUNAY['dfa']} vs BP {LAUNAY['bp']} ({LAUNAY['dfa'] / LAUNAY['bp']:.2f}×). Ours are per-character "
        "perplexities (2^bits), so only the direction of the ratio compares: DFA "
        f"{ppl_ratio.get('dfa', math.nan):.3f}× bp here.",
        "",
        "Attention's parameter-free operations (the softmax, q·kᵀ and attention·v) pass the feedback through "
        "autograd's exact derivative, as in every published FA/DFA transformer; every weight learns by its rule's "
        'local signals. "Local" applies to every weight, not to these operations.',
        "",
        "Under Adam the per-synapse normalisation divides out a constant feedback gain: hsp's feedback step "
        "c·C(u, h)' is normalised to nearly kp's step, so hsp (c = 0.5) is expected to follow kp closely here; "
        "the gain shapes learning under SGD and momentum (the convnets experiment).",
        "",
        "Step-size grid (validation bits per character after the grid runs; blank = diverged):",
        "",
        "| rule | " + " | ".join(f"lr {lr:g}" for lr in scale.lrs) + " |",
        "|---|" + "---|" * len(scale.lrs),
    ]
    for rule in RULES:
        lines.append(
            f"| {LABELS[rule]} | "
            + " | ".join(f"{grid[rule][lr]:.3f}" if math.isfinite(grid[rule][lr]) else "" for lr in scale.lrs)
            + " |"
        )
    if sample:
        lines += ["", f"A sample of the kp model (seed {final_seeds[0]}; `samples.txt` of its run):", "", "```",
                  sample.strip("\n"), "```"]  # fmt: skip
    atomic_write_text(ctx.out / "language.md", "\n".join(lines) + "\n")

    # ---------------------------------------------------------------- figures
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, rule in enumerate(RULES):
        curves = [_curve(final[(rule, s)]["rows"], "val_bpc") for s in final_seeds]
        xs = max((c[0] for c in curves), key=len)
        if xs:
            plot_band(axes[0], xs, [c[1] + [math.nan] * (len(xs) - len(c[1])) for c in curves], LABELS[rule], f"C{i}")
        ys = [grid[rule][lr] for lr in scale.lrs]
        axes[1].plot(scale.lrs, ys, "o-", color=f"C{i}", label=LABELS[rule])
        for lr in scale.lrs:
            if not math.isfinite(grid[rule][lr]):
                axes[1].plot([lr], [0], "x", color=f"C{i}", ms=9)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("validation bits per character")
    axes[0].set_title(f"final runs (mean, band = min..max over {len(final_seeds)} seed(s))")
    axes[0].legend(fontsize=8)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("Adam step size")
    axes[1].set_ylabel("validation bits per character")
    axes[1].set_title(f"step-size grid, {scale.tune_steps} steps (x at 0 = diverged)")
    figures = [save_figure(fig, ctx.out, "language_curves.png")]

    layer_names = list(table["bp"]["phi"])
    fig, axes = plt.subplots(2, 1, figsize=(12, 6.4), sharex=True)
    width = 0.8 / len(RULES)
    for i, rule in enumerate(RULES):
        for ax, key in zip(axes, ("phi", "align"), strict=True):
            vals = [table[rule][key].get(n, math.nan) for n in layer_names]
            ax.bar([k + i * width for k in range(len(layer_names))], vals, width, label=LABELS[rule], color=f"C{i}")
    axes[0].set_ylabel("φ = <u, g>/<g, g>")
    axes[1].set_ylabel("align = cos(u, g)")
    axes[0].set_title("per layer at the end of the final runs (mean over seeds)")
    for ax in axes:
        ax.axhline(0, color="k", lw=0.6)
    axes[1].set_xticks([k + 0.4 - width / 2 for k in range(len(layer_names))], layer_names, rotation=60, ha="right",
                       fontsize=7)  # fmt: skip
    axes[0].legend(fontsize=8, ncol=len(RULES))
    figures.append(save_figure(fig, ctx.out, "language_phi.png"))

    measured: dict[str, Any] = {
        "rules": table,
        "checks": checks,
        "char_perplexity_ratio_to_bp": ppl_ratio,
        "launay2020_word_perplexity": {**LAUNAY, "ratio_dfa_to_bp": LAUNAY["dfa"] / LAUNAY["bp"]},
        "scale": asdict(scale),
        "data": data if scale.data is not None else "generated (quick_corpus)",
        "tune_seed": ctx.seed,
        "final_seeds": final_seeds,
    }
    write_json(ctx.out / "language.json", measured)
    return Verdict(
        claim=(
            "kp and hsp train a character-level GPT to within 5 % of backprop's validation bits per character, "
            "below DFA and FA."
        ),
        measured=measured,
        threshold=(
            f"for each of kp and hsp: mean validation bits per character over seeds {final_seeds} at most "
            f"{TOLERANCE} × bp's and below the dfa and fa means, each rule at its best step size of the same grid "
            "(a diverged run of any of the five rules fails the claim: a NaN is never beaten)"
        ),
        holds=holds,
        figures=figures,
        notes=(
            "Attention's softmax and q·kᵀ, attention·v products have no weights; their feedback is autograd's exact "
            "derivative, as in every published FA/DFA transformer. Perplexities here are per character; Launay et "
            "al. 2020's are per word (DFA 52.0 vs BP 29.8 on WikiText-103), so only the direction compares. Under "
            "Adam a constant feedback gain is normalised away, so hsp (c = 0.5) is expected to follow kp closely."
            + (" Quick mode: a tiny model on generated text, not a measurement." if ctx.quick else "")
        ),
    )
