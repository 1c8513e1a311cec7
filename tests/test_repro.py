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


# --------------------------------------------------------------------------- quick experiments
@pytest.mark.parametrize("name", ["hs", "flexibility"])
def test_quick_experiment_writes_valid_summary(tmp_path, name):
    run_experiment(name, tmp_path, quick=True)
    s = _check_summary(tmp_path, name)
    assert s["quick"] is True
    if name == "hs":  # the closed form is exact: float64 round-off only
        assert s["measured"]["max_rel_error_vs_closed_form"] < 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dc", "metaplasticity", "hebbian", "benchmark"])
def test_quick_experiment_writes_valid_summary_slow(tmp_path, name):
    run_experiment(name, tmp_path, quick=True)
    _check_summary(tmp_path, name)
    if name == "benchmark":
        table = (tmp_path / name / "benchmark.md").read_text()
        assert "| bp |" in table and "| hsp (c=1) |" in table


@pytest.mark.slow
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
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (out / "report.md").read_text()
    names = list(load_all())
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
