"""Reproduction experiments (``heterograd repro``), the ``Freeze`` combinator and the biological motif builders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from heterograd import HeterogradError, TrainConfig, get_loss, make_rule
from heterograd.circuits import Circuit
from heterograd.experiments import EXPERIMENT_MODULES, load_all, run_experiment
from heterograd.experiments.base import local_training, trainer_with
from heterograd.motifs import cerebellar_circuit, pyramidal_circuit
from heterograd.rules import FA, HSP, Freeze

MINE = ("hs", "dc", "metaplasticity", "hebbian", "flexibility", "benchmark")
KEYS = {"name", "claim", "measured", "threshold", "holds", "figures", "notes", "quick", "seed", "seconds"}


def _check_summary(folder: Path, name: str) -> dict:
    s = json.loads((folder / name / "summary.json").read_text())
    assert set(s) >= KEYS, f"{name}: missing {KEYS - set(s)}"
    assert "error" not in s, f"{name} crashed: {s.get('traceback')}"
    assert isinstance(s["holds"], bool)
    assert s["claim"] and s["threshold"] and s["measured"]
    assert s["figures"], f"{name} made no figure"
    for fig in s["figures"]:
        path = folder / name / fig
        assert path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    return s


# --------------------------------------------------------------------------- registration
def test_my_experiments_are_registered_first_in_order():
    assert EXPERIMENT_MODULES[: len(MINE)] == MINE
    assert set(MINE) <= set(load_all())


# --------------------------------------------------------------------------- quick experiments: verdicts
def _quick(tmp_path: Path, name: str) -> dict:
    run_experiment(name, tmp_path, quick=True)
    s = _check_summary(tmp_path, name)
    assert s["quick"] is True
    return s


def test_quick_hs_holds_every_counted_circuit_learns_and_the_control_is_flagged(tmp_path):
    s = _quick(tmp_path, "hs")
    m = s["measured"]
    assert m["max_rel_error_vs_closed_form"] < 1e-9  # the closed form is exact: float64 round-off only
    for c in ("1", "0.5", "0.25"):  # counted: DC holds, every circuit keeps learning (issue 12: c=0.25 collapsed)
        assert m[f"keeps_learning_c{c}"] == "1/1", m
    assert m["keeps_learning_c-0.5"] == "0/1"  # the built-in failing case: DC violated, stops learning
    assert m["control_c-0.5_flagged_not_learning"] and m["max_rel_phi_error"] < 0.05
    assert s["holds"] is True


def test_quick_metaplasticity_verdict_rests_on_what_could_fail(tmp_path):
    s = _quick(tmp_path, "metaplasticity")
    m, seed = s["measured"], s["measured"]["per_seed"][0]
    # true by construction at step 0 (B = -Wᵀ): described, not counted
    assert m["by_construction_phi_start_mean"] == pytest.approx(-1.0)
    assert m["by_construction_descent_fraction_start_mean"] == 0.0
    assert "by construction" in s["threshold"]
    # the evidence: φ_1 turns positive; synapses chosen at step 0 reverse their sign of plasticity
    assert seed["phi_turns_positive_at_step"] is not None and seed["reversed_fraction"] > 0.5
    assert seed["probe_synapses"] == 64  # all hidden neurons, chosen before any learning
    assert s["holds"] is True


@pytest.mark.slow
def test_quick_dc_holds_and_c_minus_one_does_not_learn(tmp_path):
    s = _quick(tmp_path, "dc")
    m = s["measured"]
    for depth in (1, 2):  # the built-in failing case: c = -1 violates DC and must be reported as not learning
        cell = m["by_config"][f"L{depth}_c-1"]
        assert cell["dc_satisfied"] == "0/1" and cell["learns"] == "0/1" and cell["diverged"] == "0/1"
        assert m["by_config"][f"L{depth}_c+1"]["learns"] == "1/1"
    assert m["diverged_runs"] == 0 and s["holds"] is True


def test_quick_hebbian_holds_and_label_noise_turns_the_output_anti_hebbian(tmp_path):
    s = _quick(tmp_path, "hebbian")
    m = s["measured"]
    assert m["output_layer_alignment_label_noise"]["0.01"] < 0 < m["output_layer_alignment_true_targets"]["0.01"]
    assert m["diverged_runs"] == 0 and m["monotone_in_lambda"] and s["holds"] is True
    out0 = m["alignment_by_lambda_and_layer"]["0"][-1]
    assert f"{out0:+.3f}" in s["notes"]  # the note quotes the measured λ = 0 value, it does not assert a sign


@pytest.mark.slow
def test_quick_flexibility_holds(tmp_path):
    s = _quick(tmp_path, "flexibility")
    m = s["measured"]
    assert all(v == "0/1" for v in m["diverged"].values()) and all(m["checks"].values())
    assert s["holds"] is True


def test_quick_benchmark_holds_and_reports_no_empty_column(tmp_path):
    s = _quick(tmp_path, "benchmark")
    table = (tmp_path / "benchmark" / "benchmark.md").read_text()
    assert "| bp |" in table and "| hsp (c=1) |" in table and "diverged" in table
    for cell in s["measured"]["cells"]["digits"].values():
        assert "min_hidden_phi" not in cell and None not in cell.values() and cell["diverged"] == "0/1"
    assert s["holds"] is True


@pytest.mark.slow
def test_quick_evolution_judges_the_last_generations_against_the_reference_dc_score(tmp_path):
    s = _quick(tmp_path, "evolution")
    m = s["measured"]
    assert "last 5" in s["threshold"] and m["last_5_mean_median_over_reference"] <= 1.5
    assert m["last_5_mean_median_dc_score"] >= m["last_5_mean_reference_median_dc_score"]
    import csv

    rows = list(csv.DictReader((tmp_path / "evolution" / "run" / "generations.csv").open()))
    assert float(rows[0]["median_over_reference"]) > 1.5  # generation 0 (random rules) fails the loss bar
    assert s["holds"] is True


# --------------------------------------------------------------------------- diverged seeds, exit codes
def test_mean_std_never_averages_a_diverged_seed_away():
    import math

    from heterograd.experiments.base import diverged_count, mean_std

    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1))
    for bad in (math.nan, None, math.inf):
        m, sd = mean_std([0.5, bad, 0.7])
        assert math.isnan(m) and math.isnan(sd)  # 0.1.0 returned 0.6: the mean of the survivors
    assert diverged_count([0.5, math.nan, None, 0.7]) == 2


def _fake_experiment(monkeypatch, name: str, outcome: str) -> None:
    from heterograd.experiments.base import EXPERIMENTS, Verdict

    load_all()

    def fake(ctx):
        """A fake claim."""
        if outcome == "crash":
            raise RuntimeError("boom")
        return Verdict(claim="fake", measured={"x": 1}, threshold="x", holds=outcome == "holds")

    monkeypatch.setitem(EXPERIMENTS, name, fake)


@pytest.mark.parametrize(("outcome", "code"), [("holds", 0), ("fails", 1), ("crash", 3)])
def test_repro_exit_code_tells_holds_fails_and_crash_apart(monkeypatch, tmp_path, capsys, outcome, code):
    from heterograd.cli import main

    _fake_experiment(monkeypatch, "fake-claim", outcome)
    with pytest.raises(SystemExit) as exc:
        main(["repro", "fake-claim", "--out", str(tmp_path), "--no-progress"])
        raise SystemExit(0)  # main returns normally only on success
    assert exc.value.code == code
    assert "fake-claim" in capsys.readouterr().out


def test_repro_help_documents_the_exit_codes():
    from typer.testing import CliRunner

    from heterograd.cli import app

    out = " ".join(CliRunner().invoke(app, ["repro", "--help"]).output.replace("│", " ").split())
    assert "Exit code" in out and "1 a claim does not hold" in out and "3 an experiment crashed" in out


@pytest.mark.slow
@pytest.mark.needs_data("fashion-mnist")
def test_repro_all_quick_via_cli(tmp_path):
    out = tmp_path / "repro"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from heterograd.cli import main; main()",
            "repro",
            "all",
            "--quick",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    names = list(load_all())
    summaries = [json.loads((out / n / "summary.json").read_text()) for n in names]
    assert proc.returncode == (0 if all(s["holds"] for s in summaries) else 1), proc.stderr[-2000:]
    report = (out / "report.md").read_text()
    for name in names:
        s = _check_summary(out, name)
        assert f"`{name}`" in report
        for fig in s["figures"]:
            assert f"({name}/{fig})" in report


def test_unknown_experiment_is_a_clear_error(tmp_path):
    with pytest.raises(HeterogradError, match="unknown experiment"):
        run_experiment("no-such-claim", tmp_path)


# --------------------------------------------------------------------------- Freeze combinator
def _train(circuit: Circuit, rule, data, steps: int = 30) -> None:
    ok = local_training(
        circuit, rule, get_loss("ce"), data.x_train, data.y_train, steps=steps, lr=0.05, batch_size=32, seed=0
    )
    assert ok


@pytest.mark.parametrize("inner", [HSP(weight_decay=1e-3), FA(weight_decay=1e-3)])
def test_freeze_keeps_frozen_layer_unchanged(digits, inner):
    circuit = Circuit([64, 32, 32, 10], seed=0)
    before = [t.clone() for t in circuit.plastic_tensors()]
    _train(circuit, Freeze(inner, layers=(1,)), digits)
    W, b, B = circuit.W, circuit.b, circuit.B
    assert torch.equal(W[0], before[0]) and torch.equal(b[0], before[3])
    assert not torch.equal(W[1], before[1]) and not torch.equal(W[2], before[2])
    k_into_1 = [k for k, e in enumerate(circuit.edges) if e.dst == 1]
    assert torch.equal(B[k_into_1[0]], before[6 + k_into_1[0]])  # feedback teaching a frozen layer is frozen
    if isinstance(inner, HSP):
        k_into_2 = [k for k, e in enumerate(circuit.edges) if e.dst == 2]
        assert not torch.equal(B[k_into_2[0]], before[6 + k_into_2[0]])


def test_freeze_is_a_registered_rule_and_trains_through_the_trainer(digits):
    rule = make_rule("freeze", weight_decay=1e-3)
    assert isinstance(rule, Freeze) and isinstance(rule.inner, HSP) and rule.inner.weight_decay == 1e-3
    tr = trainer_with(TrainConfig(rule="freeze", epochs=1, hidden=(16,), probes=False), digits)
    w0 = tr.circuit.W[0].clone()
    w1 = tr.circuit.W[1].clone()
    tr.fit(progress=False)
    assert torch.equal(tr.circuit.W[0], w0) and not torch.equal(tr.circuit.W[1], w1)


def test_freeze_rejects_bad_layers(digits):
    with pytest.raises(HeterogradError, match="1-based"):
        Freeze(HSP(), layers=(0,))
    with pytest.raises(HeterogradError, match="do not exist"):
        Freeze(HSP(), layers=(5,)).init(Circuit([64, 8, 10]))
    with pytest.raises(HeterogradError, match="wraps a Rule"):
        Freeze("hsp")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- motif builders
def test_cerebellar_circuit_structure_and_learning(digits):
    m = cerebellar_circuit(64, 10, n_granule=200, mossy_per_granule=4, seed=1)
    c = m.circuit
    assert c.sizes == (64, 200, 10) and c.activation.name == "relu"
    assert torch.equal((c.W[0] != 0).sum(1), torch.full((200,), 4))
    assert isinstance(m.rule, Freeze) and m.rule.layers == (1,)
    granule = c.W[0].clone()
    loss = get_loss("ce")
    before = float(loss(c(digits.x_test), digits.y_test))
    _train(c, m.rule, digits, steps=150)
    assert torch.equal(c.W[0], granule)
    assert float(loss(c(digits.x_test), digits.y_test)) < 0.7 * before
    dense = cerebellar_circuit(64, 10, n_granule=50, mossy_per_granule=None).circuit
    assert bool((dense.W[0] != 0).all())
    with pytest.raises(HeterogradError, match="mossy_per_granule"):
        cerebellar_circuit(64, 10, mossy_per_granule=65)


def test_pyramidal_circuit_is_the_layered_hsp_circuit_and_learns(digits):
    m = pyramidal_circuit([64, 32, 10], weight_decay=1e-4, feedback_gain=1.0, seed=0)
    c = m.circuit
    assert c.topology == "layered" and [e.name for e in c.edges] == ["B2to1"]
    assert isinstance(m.rule, HSP) and m.rule.weight_decay == 1e-4
    assert "apical" in m.description and "basal" in m.description
    loss = get_loss("ce")
    before = float(loss(c(digits.x_test), digits.y_test))
    B0 = c.B[0].clone()
    _train(c, m.rule, digits, steps=150)
    assert not torch.equal(c.B[0], B0)  # apical synapses are plastic
    assert float(loss(c(digits.x_test), digits.y_test)) < 0.7 * before


def test_repro_report_assembles_separate_runs_and_exits_on_their_verdicts(monkeypatch, tmp_path, capsys):
    from heterograd.cli import main

    with pytest.raises(SystemExit) as exc:  # nothing there yet: a clear usage error, no empty report
        main(["repro", "report", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "no experiment summaries" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()
    _fake_experiment(monkeypatch, "fake-holds", "holds")
    main(["repro", "fake-holds", "--out", str(tmp_path), "--no-progress"])
    main(["repro", "report", "--out", str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    assert "`fake-holds`" in report and "Assembled by `heterograd repro report" in report
    _fake_experiment(monkeypatch, "fake-fails", "fails")
    with pytest.raises(SystemExit) as exc:
        main(["repro", "fake-fails", "--out", str(tmp_path), "--no-progress"])
    with pytest.raises(SystemExit) as exc:
        main(["repro", "report", "--out", str(tmp_path)])
    assert exc.value.code == 1
    report = (tmp_path / "report.md").read_text()
    assert "`fake-holds`" in report and "`fake-fails`" in report and "**does not hold**" in report
