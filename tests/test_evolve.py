"""Evolution of plasticity rules (docs/theory.md section 7): genomes, the batched population, back ends, resume, CLI."""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import pytest
import torch

import heterograd
from heterograd import Circuit, apply_steps, get_loss, local_step
from heterograd.autodiff import potential_gradients
from heterograd.cli import main
from heterograd.errors import HeterogradError
from heterograd.evolve import (
    BatchedBackend,
    EvalResult,
    EvolveConfig,
    GenomeSpec,
    Job,
    Problem,
    circuit_seed,
    evaluate_population,
    evolve,
    init_population,
    load_checkpoint,
    next_generation,
    random_genomes,
    train_population,
)
from heterograd.evolve.genome import parse_terms
from heterograd.evolve.population import batch_indices, measure_population
from heterograd.probes import dc_score, neuron_phi, phi
from heterograd.rules import B_FEATURES, W_FEATURES, Poly

heterograd_threads = torch.get_num_threads()
HAS_RAY = importlib.util.find_spec("ray") is not None
TINY = {"task": "teacher", "population": 12, "generations": 3, "steps": 40, "n_train": 200, "ref_circuits": 2,
        "hidden": (8,), "probe_size": 64, "threads": 1}  # fmt: skip


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# ----------------------------------------------------------------------------------------- genome
def test_genome_formatting_and_layout():
    spec = GenomeSpec()
    assert spec.size == 5 and spec.names() == ["θW[u·h]", "θW[p·h]", "θW[W]", "θB[h·u]", "θB[B]"]
    text = spec.describe([0.93, -0.02, 0.001, 1.1, 0.003])
    assert text == "ΔW = -η(0.93 u·h - 0.02 p·h + 0.001 W);  ΔB = -η(1.1 h·u + 0.003 B)"
    tw, tb = spec.expand(spec.bilinear(1e-3).unsqueeze(0))
    ref_w, ref_b = Poly(weight_decay=1e-3)._tw, Poly(weight_decay=1e-3)._tb
    assert torch.equal(tw[0, 0], ref_w) and torch.equal(tw[0, 1], ref_w) and torch.equal(tb[0, 0], ref_b)
    per = GenomeSpec(("u·h",), ("h·u", "B"), n_layers=3, n_edges=2, per_layer=True)
    assert per.size == 3 + 4
    g = torch.arange(7, dtype=torch.float64).unsqueeze(0) + 1
    tw, tb = per.expand(g)
    assert tw.shape == (1, 3, 8) and tb.shape == (1, 2, 8)
    assert tw[0, :, 0].tolist() == [1, 2, 3] and tb[0, :, 0].tolist() == [4, 6] and tb[0, :, 6].tolist() == [5, 7]
    assert per.top_learning_coefficient(g).tolist() == [3.0]
    assert "ΔW3 = -η(3 u·h)" in per.describe(g[0])
    assert parse_terms("u*h, p*h ,W", W_FEATURES, "w") == ("u·h", "p·h", "W")
    with pytest.raises(HeterogradError, match="unknown --w-terms term 'q'"):
        parse_terms("u*h,q", W_FEATURES, "--w-terms")
    with pytest.raises(HeterogradError, match="twice"):
        parse_terms("h·u,hu", B_FEATURES, "--b-terms")
    gen = torch.Generator().manual_seed(0)
    pop = random_genomes(spec, 1000, 1.0, gen)
    assert 0.4 < float((pop[:, 0] > 0).double().mean()) < 0.6  # about half start with ascent


# ----------------------------------------------------------------------------------------- batched population
def _problem(teacher, **kw) -> Problem:
    base = {"sizes": (20, 7, 6, 5), "steps": 6, "batch_size": 16, "lr": 0.1, "seed": 3, "dtype": torch.float64}
    base.update(kw)
    return Problem(teacher.x_train.double(), teacher.y_train.double(), **base)


def test_batched_training_equals_per_circuit_reference(teacher, float64):
    """Each circuit of the batched population follows the library's Circuit + poly rule exactly (float64)."""
    pr = _problem(teacher)
    spec = GenomeSpec(W_FEATURES, B_FEATURES, n_layers=3, n_edges=2, per_layer=True)  # every term, per layer
    genomes = random_genomes(spec, 3, 0.2, torch.Generator().manual_seed(1))
    genomes[:, 0] += 1.0
    tw, tb = spec.expand(genomes)
    gen, indices = 4, [0, 5, 9]
    seeds = [circuit_seed(pr.seed, gen, i) for i in indices]
    idx = batch_indices(pr, gen)
    wts, losses, dead = train_population(pr, init_population(pr, seeds), tw, tb, idx)
    assert not dead.any()
    loss = get_loss("mse")
    for i, s in enumerate(seeds):
        c = Circuit(pr.sizes, seed=s, dtype=torch.float64)
        rule = Poly(theta_w=tw[i], theta_b=tb[i])
        for t in range(pr.steps):
            x, y = pr.x[idx[t]], pr.y[idx[t]]
            out = local_step(c, rule, None, loss, x, y)
            assert torch.allclose(losses[t, i], out.loss, rtol=1e-12, atol=1e-14)
            apply_steps(c, [None if d is None else pr.lr * d for d in out.deltas.flat()])
        for a, b in zip([*wts.W, *wts.b, *wts.B], c.plastic_tensors(), strict=True):
            torch.testing.assert_close(a[i], b.data, rtol=1e-10, atol=1e-12)


def test_measurement_matches_probes(teacher, float64):
    """DC score and φ of the batched measurement equal heterograd.probes on one circuit (true gradient by autograd)."""
    pr = _problem(teacher, probe_size=64)
    spec = GenomeSpec(n_layers=3, n_edges=2)
    genomes = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0], [-0.5, 0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    tw, _ = spec.expand(genomes)
    seeds = [circuit_seed(0, 0, 0), circuit_seed(0, 0, 1)]
    wts = init_population(pr, seeds)
    m = measure_population(pr, wts, tw, torch.zeros(2, dtype=torch.bool))
    loss = get_loss("mse")
    x, y = pr.x[:64], pr.y[:64]
    for i, s in enumerate(seeds):
        c = Circuit(pr.sizes, seed=s, dtype=torch.float64)
        tr = c.run_forward(x)
        u = c.run_feedback(tr, c.output_error(tr, loss.error(tr.output, y)))
        g = potential_gradients(c, x, y, loss)
        sign = 1.0 if genomes[i, 0] > 0 else -1.0
        per_neuron = torch.cat([sign * neuron_phi(u[l], g[l]) for l in range(1, c.depth + 1)])
        assert m["dc_score"][i].item() == pytest.approx(dc_score(per_neuron), abs=1e-12)
        mean_phi = sum(phi(u[l], g[l]) for l in c.hidden_layers) / len(c.hidden_layers)
        assert m["phi"][i].item() == pytest.approx(mean_phi, rel=1e-9)
    # feedback equal to Wᵀ: u is the exact gradient, every neuron agrees
    wts.B = [wts.W[2].transpose(1, 2).clone(), wts.W[1].transpose(1, 2).clone()]
    m = measure_population(pr, wts, tw, torch.zeros(2, dtype=torch.bool))
    assert m["dc_score"].tolist() == [1.0, 1.0]
    assert torch.allclose(m["phi"], torch.ones(2, dtype=torch.float64))


def test_shards_of_whole_blocks_give_the_same_numbers_as_the_whole_population(teacher):
    """What the Ray back end relies on: evaluating whole blocks separately changes no bit."""
    pr = _problem(teacher, dtype=torch.float32, steps=30, probe_size=64, block=4)
    spec = GenomeSpec(n_layers=3, n_edges=2)
    tw, tb = spec.expand(random_genomes(spec, 10, 1.0, torch.Generator().manual_seed(2)))
    (whole,) = BatchedBackend().run(pr, [Job(tw, tb, tuple(range(10)), 1)])
    assert whole.diverged.any() and not whole.diverged.all()  # the test covers dead and live circuits
    shards = [evaluate_population(pr, tw[a:b], tb[a:b], range(a, b), 1) for a, b in ((0, 8), (8, 10))]
    torch.set_num_threads(1)  # Ray workers run one thread each
    try:
        shards[1] = evaluate_population(pr, tw[8:], tb[8:], range(8, 10), 1)
    finally:
        torch.set_num_threads(heterograd_threads)
    merged = EvalResult.cat(shards)
    for f in ("fitness", "dc_score", "phi", "align", "final_loss", "diverged"):
        assert torch.equal(getattr(whole, f).nan_to_num(7.0), getattr(merged, f).nan_to_num(7.0)), f


def test_selection_keeps_elites_and_parents_from_the_top():
    cfg = EvolveConfig(population=8, elites=2, select_frac=0.25, mutation_sigma=0.0).validate()
    pop = torch.arange(8, dtype=torch.float64).unsqueeze(1).repeat(1, 5)
    fit = torch.tensor([5.0, float("nan"), 0.5, 3.0, float("inf"), 0.1, 2.0, 9.0])
    nxt = next_generation(pop, fit, cfg, torch.Generator().manual_seed(0))
    assert nxt[:2, 0].tolist() == [5.0, 2.0]
    assert set(nxt[2:, 0].tolist()) <= {5.0, 2.0}
    cfg = EvolveConfig(population=8, elites=0, selection="tournament", tournament_size=8, mutation_sigma=0.0)
    nxt = next_generation(pop, fit, cfg.validate(), torch.Generator().manual_seed(0))
    assert (nxt[:, 0] != 1.0).all() and (nxt[:, 0] != 4.0).all()  # diverged genomes never win


# ----------------------------------------------------------------------------------------- the loop
def test_evolution_uses_no_autograd(autograd_forbidden):
    res = evolve(EvolveConfig(**{**TINY, "generations": 2}))
    assert len(res.rows) == 2 and res.rows[-1]["reference_loss"] > 0
    src = Path(heterograd.__file__).parent / "evolve"
    pattern = re.compile(r"torch\.autograd|\.backward\(|autograd\.grad|requires_grad_\(True\)|autodiff")
    assert [p.name for p in src.glob("*.py") if pattern.search(p.read_text(encoding="utf-8"))] == []


def test_determinism_per_seed():
    a, b = evolve(EvolveConfig(**TINY)), evolve(EvolveConfig(**TINY))
    assert _strip(a.rows) == _strip(b.rows) and torch.equal(a.population, b.population)
    c = evolve(EvolveConfig(**{**TINY, "seed": 1}))
    assert not torch.equal(a.population, c.population)


def test_outputs_and_resume_equal_an_uninterrupted_run(tmp_path):
    full = evolve(EvolveConfig(**TINY), tmp_path / "full")
    for name in ("config.json", "generations.csv", "summary.json", "evolution.png", "best_rule.txt"):
        assert (tmp_path / "full" / name).exists(), name
    rows = _rows(tmp_path / "full" / "generations.csv")
    assert [int(r["generation"]) for r in rows] == [0, 1, 2]
    assert {"top_descent_fraction", "dc_fraction", "reference_loss", "best_rule"} <= set(rows[0])
    assert full.summary["best_rule"].startswith("ΔW = -η(")
    ck = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    assert ck["generation"] == 3 and ck["rng_state"].dtype == torch.uint8

    # stopped after 2 generations by a shorter run, then resumed to 3
    evolve(EvolveConfig(**{**TINY, "generations": 2}), tmp_path / "part")
    resumed = evolve(EvolveConfig(**TINY), tmp_path / "part", resume=True)
    assert _rows(tmp_path / "part" / "generations.csv") == rows
    assert torch.equal(resumed.population, full.population)

    # Ctrl-C in the middle of the run leaves a resumable state
    def stop(row):
        if row["generation"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evolve(EvolveConfig(**TINY), tmp_path / "ctrlc", on_generation=stop)
    assert load_checkpoint(tmp_path / "ctrlc" / "checkpoint.pt")["generation"] == 2
    resumed = evolve(EvolveConfig(**TINY), tmp_path / "ctrlc", resume=True)
    assert _rows(tmp_path / "ctrlc" / "generations.csv") == rows
    assert torch.equal(resumed.population, full.population)


# ----------------------------------------------------------------------------------------- CLI
def _cli(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["evolve", *args])
    return int(exc.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "cifar"], "unknown task 'cifar'; valid choices: digits, mnist1d, teacher"),
        (["--population", "1"], "--population must be >= 2"),
        (["--backend", "spark"], "unknown backend 'spark'"),
        (["--w-terms", "p·h,W"], "needs the u·h (W) and h·u (B) terms"),
        (["--elites", "200"], "--elites must be in [0, population)"),
        (["--resume"], "no checkpoint"),
    ],
)
def test_cli_errors(tmp_path, capsys, args, message):
    code, err = _cli(capsys, "--out", str(tmp_path / "r"), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_run_refuses_overwrite_and_checks_resume_options(tmp_path, capsys):
    out = str(tmp_path / "r")
    small = ["--population", "6", "--generations", "1", "--steps", "10", "--n-train", "100", "--no-progress"]
    main(["evolve", "--out", out, *small])
    assert "best rule: ΔW = -η(" in capsys.readouterr().out
    code, err = _cli(capsys, "--out", out, *small)
    assert code == 2 and "already holds an evolution run; pass --resume" in err
    code, err = _cli(capsys, "--out", out, *small, "--resume", "--lr", "0.1")
    assert code == 2 and "--resume with lr=0.1 but the run in this folder used lr=0.05" in err


def test_ray_backend_missing_gives_one_line_fix(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code, err = _cli(capsys, "--out", str(tmp_path / "r"), "--backend", "ray", "--population", "4")
    assert code == 2 and 'pip install "heterograd[ray]"' in err


# ----------------------------------------------------------------------------------------- Ray
@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install 'heterograd[ray]')")
def test_ray_backend_equals_batched(tmp_path):
    cfg = {**TINY, "generations": 2, "population": 10, "block": 4}  # 3 blocks -> 2 shards
    batched = evolve(EvolveConfig(**cfg))
    ray_run = evolve(EvolveConfig(**cfg, backend="ray", workers=2), tmp_path / "ray")
    assert _strip(ray_run.rows) == _strip(batched.rows)
    assert torch.equal(ray_run.population, batched.population)
